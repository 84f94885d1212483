"""Tiny variants of every built-in card: same architecture classes and target map, small size."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cytotune.models import FusedSelfAttention, build_backbone, get_card, resolve_targets, tiny_card

VIT_CARDS = ["clip-vit-b16", "clip-vit-l14", "biomedclip", "quilt", "quilt-b16", "uni", "vit-b16",
             "uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "prov-gigapath", "phikon-v2",
             "conch"]
ALL_CARDS = VIT_CARDS + ["efficientnet-lite0"]


@pytest.mark.parametrize("name", ALL_CARDS)
def test_tiny_variant_builds_and_forwards(name, pixels):
    card = tiny_card(name)
    real = get_card(name)
    assert card.name == f"{name}-tiny" and card.family == real.family
    assert card.lora_targets == real.lora_targets
    assert card.default_lora_targets == real.default_lora_targets
    assert card.preprocessing.image_size == 32
    assert card.preprocessing.mean == real.preprocessing.mean
    backbone = build_backbone(card, pretrained=False)
    assert backbone.weights_origin == "random-init" and not backbone.training
    with torch.no_grad():
        out = backbone(pixels)
    assert out.shape == (2, card.feature_dim) and torch.isfinite(out).all()
    assert backbone.feature_dim == card.feature_dim
    if name != "efficientnet-lite0":
        assert card.feature_dim <= 2 * 64  # small width (Virchow2 concatenates two tokens)
    assert sum(p.numel() for p in backbone.parameters()) < 5_000_000


@pytest.mark.parametrize("name", VIT_CARDS)
def test_tiny_vit_target_map_resolves_q_k_v_o(name):
    card = tiny_card(name)
    backbone = build_backbone(card, pretrained=False)
    hits = resolve_targets(backbone.model, card.lora_targets)
    for key in ("q", "k", "v", "o", "fc1", "fc2"):
        assert len(hits[key]) == 2, (key, hits[key])  # depth 2: one layer per block
        for module_name in hits[key]:
            assert isinstance(backbone.model.get_submodule(module_name), nn.Linear)
    # q, k, v are the thirds of one fused layer (or three separate layers); o/fc1/fc2 are distinct
    qkv = card.lora_targets["q"]
    if qkv.part is not None:
        assert hits["q"] == hits["k"] == hits["v"]
        assert [card.lora_targets[k].part for k in "qkv"] == [(0, 3), (1, 3), (2, 3)]
        for module_name in hits["q"]:
            layer = backbone.model.get_submodule(module_name)
            assert layer.out_features == 3 * layer.in_features
    else:
        assert len({*hits["q"], *hits["k"], *hits["v"]}) == 6
    distinct = [set(hits[k]) for k in ("q", "o", "fc1", "fc2")]
    assert sum(len(s) for s in distinct) == len(set().union(*distinct))


@pytest.mark.parametrize("name", ["clip-vit-b16", "quilt"])
def test_open_clip_towers_use_fused_self_attention(name):
    backbone = build_backbone(tiny_card(name), pretrained=False)
    attn = [m for m in backbone.model.modules() if isinstance(m, (nn.MultiheadAttention,
                                                                   FusedSelfAttention))]
    assert attn and all(isinstance(m, FusedSelfAttention) for m in attn)


def test_efficientnet_target_map():
    card = tiny_card("efficientnet-lite0")
    assert card.feature_dim == 1280 and card.model_kwargs == get_card("efficientnet-lite0").model_kwargs
    backbone = build_backbone(card, pretrained=False)
    hits = resolve_targets(backbone.model, card.lora_targets)
    assert hits["head"] == ["conv_head"]
    assert len(hits["pwl"]) == 15 and len(hits["pw"]) == 16  # 15 inverted residuals + 1 DS block
    for names in hits.values():
        for module_name in names:
            conv = backbone.model.get_submodule(module_name)
            assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
