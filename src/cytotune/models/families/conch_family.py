"""CONCH v1 image tower (MahmoodLab/conch) through the ``conch-fork`` package.

CONCH is a CoCa model whose image tower is a timm ViT-B/16 trunk at 448 pixels followed by two
attentional poolers (contrastive and captioning). cytotune builds only that tower with the
package's own constructor, so the layers and key names are the authors'. Install it with
``pip install "cytotune[conch]"``; the card is listed without it.

Card fields used: ``source`` (the hub repo id), ``model_kwargs = {"embed_dim",
"embed_dim_caption", "vision_cfg"}`` (the image part of the package's ``conch_ViT-B-16.json``).
The feature is ``encode_image(x, proj_contrast=False, normalize=False)``: the contrastive
pooler's output before the projection, as CONCH's authors extract features (CLAM). Weights: the
published ``pytorch_model.bin`` holds the whole CoCa model; its ``visual.*`` tensors are loaded
strictly, the text towers are ignored.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from cytotune.models import hub
from cytotune.models.card import ModelCard
from cytotune.models.checkpoint import load_strict, read_state_dict_file, read_weights
from cytotune.models.errors import MissingDependencyError
from cytotune.models.families.base import Family

if TYPE_CHECKING:
    import torch
    from torch import nn

VISUAL_PREFIX = "visual."
INSTALL_HINT = 'pip install "cytotune[conch]"'


def _coca_module():
    """``conch.open_clip_custom.coca_model``, or a clear error saying how to install it."""
    try:
        with warnings.catch_warnings():  # conch imports timm.models.layers (deprecated alias)
            warnings.simplefilter("ignore", FutureWarning)
            from conch.open_clip_custom import coca_model
    except ImportError as exc:
        raise MissingDependencyError(
            f"the CONCH model needs the 'conch-fork' package, which is not installed: "
            f"`{INSTALL_HINT}` (or `pip install conch-fork`) ({exc})") from exc
    return coca_model


class ConchFamily(Family):
    name = "conch"
    supports_tokens = True
    weight_files = ("pytorch_model.bin", "model.safetensors", "open_clip_pytorch_model.bin")
    hub_weight_files = ("pytorch_model.bin",)

    def create(self, card: ModelCard) -> nn.Module:
        kw = card.model_kwargs
        return _coca_module()._build_vision_tower(
            embed_dim=kw["embed_dim"], vision_cfg=dict(kw["vision_cfg"]),
            embed_dim_caption=kw["embed_dim_caption"])

    def _load(self, card: ModelCard, state_dict: dict, source: str) -> nn.Module:
        model = self.create(card)
        if any(k.startswith(VISUAL_PREFIX) for k in state_dict):  # the whole CoCa checkpoint
            state_dict = {k[len(VISUAL_PREFIX):]: v for k, v in state_dict.items()
                          if k.startswith(VISUAL_PREFIX)}
        load_strict(model, state_dict, card.name, source)
        return model

    def load_local(self, card: ModelCard, path: Path) -> nn.Module:
        state_dict, file = read_weights(path, self.weight_files)
        return self._load(card, state_dict, str(file))

    def weights_location(self, card: ModelCard) -> Optional[str]:
        return card.source

    def weights_source(self, card: ModelCard) -> Optional[hub.WeightsSource]:
        return hub.WeightsSource("hf-hub", card.source, self.hub_weight_files)

    def missing_requirement(self, card: ModelCard) -> Optional[str]:
        try:
            found = importlib.util.find_spec("conch") is not None
        except (ImportError, ValueError):  # a broken or blocked installation
            found = False
        return None if found else f"the 'conch-fork' package is not installed: `{INSTALL_HINT}`"

    def load_pretrained(self, card: ModelCard) -> tuple[nn.Module, str]:
        _coca_module()  # a missing package is reported before a download is attempted
        file = hub.fetch_file(card, card.source, self.hub_weight_files)
        return self._load(card, read_state_dict_file(file), str(file)), f"hf-hub:{card.source}"

    def pooled_features(self, card: ModelCard, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.forward_no_head(pixels, normalize=False)

    def token_features(self, card: ModelCard, model: nn.Module,
                       pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        return model.trunk.forward_features(pixels), int(model.trunk.num_prefix_tokens)

    def tiny_card(self, card: ModelCard) -> ModelCard:
        vision = {**card.model_kwargs["vision_cfg"], "image_size": 32, "patch_size": 8,
                  "width": 64, "layers": 2, "num_heads": 2, "n_queries_caption": 4}
        # the poolers have 8 heads (the package's fixed default): widths stay multiples of 8
        return card.with_overrides(model_kwargs={**card.model_kwargs, "embed_dim": 32,
                                                 "embed_dim_caption": 32, "vision_cfg": vision})
