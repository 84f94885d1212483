"""Building a card's backbone by card or name (the model layer's entry point)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch

from cytotune.models.backbone import Backbone, check_feature_dim
from cytotune.models.card import ModelCard
from cytotune.models.catalog import get_card
from cytotune.models.families import get_family
from cytotune.models.registry import validate_card

log = logging.getLogger(__name__)


def build_backbone(card_or_name: Union[ModelCard, str], weights: Optional[Union[str, Path]] = None,
                   pretrained: bool = True, device: Union[str, torch.device] = "cpu") -> Backbone:
    """Build a card's backbone in eval mode.

    ``weights``: a weights file (.safetensors/.bin/.pt/.pth) or a directory as a Hub snapshot
    has it; wins over ``pretrained``. ``pretrained=True`` fetches the published weights
    (Hub cache first), ``False`` gives random init. ``device="meta"`` builds shapes only
    (random init). The feature width is checked against the card.
    """
    card = card_or_name if isinstance(card_or_name, ModelCard) else get_card(card_or_name)
    validate_card(card)
    device = torch.device(device)
    family = get_family(card.family)
    if device.type == "meta":
        if weights is not None or pretrained:
            log.info("device='meta' builds shapes only: ignoring weights/pretrained for %s", card.name)
        with torch.device("meta"):
            model, origin = family.build(card, pretrained=False)
        origin = "meta"
    else:
        model, origin = family.build(card, pretrained=pretrained, weights=weights)
        model = model.to(device)
    backbone = Backbone(card, model, origin).eval()
    check_feature_dim(backbone)
    log.info("built %s (%s weights, %d-d features)", card.name, origin, card.feature_dim)
    return backbone
