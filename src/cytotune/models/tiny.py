"""Small random-init variants of the built-in cards, for tests and CPU benchmarks.

``tiny_card("clip-vit-b16")`` (:mod:`cytotune.models.catalog`) is the same family, classes, block
types and LoRA target map as the real card, at width 32-64, depth 2 and 32x32 inputs (CNNs keep their real, already small,
architecture). Build them with ``build_backbone(tiny_card(name), pretrained=False)``.
"""
from __future__ import annotations

import dataclasses

import torch

from cytotune.models.backbone import Backbone, output_dim
from cytotune.models.card import ModelCard
from cytotune.models.families import get_family
from cytotune.models.registry import TINY_SUFFIX

TINY_IMAGE_SIZE = 32


def small_variant(card: ModelCard) -> ModelCard:
    """The small random-init variant of ``card`` (named ``<card>-tiny``)."""
    family = get_family(card.family)
    small = family.tiny_card(card)
    pre = card.preprocessing
    ratio = pre.effective_resize / pre.image_size
    small = small.with_overrides(
        name=f"{card.name}{TINY_SUFFIX}",
        preprocessing=dataclasses.replace(pre, image_size=TINY_IMAGE_SIZE,
                                          resize_size=round(TINY_IMAGE_SIZE * ratio)),
        description=f"small random-init variant of '{card.name}' for tests and benchmarks",
    )
    # the feature width of the small architecture, from a shapes-only build
    with torch.device("meta"):
        model, _ = family.build(small, pretrained=False)
    width = output_dim(Backbone(small, model), TINY_IMAGE_SIZE)
    return small.with_overrides(feature_dim=width)
