"""Full-size architectures of the built-in cards, built on the meta device (shapes only)."""
from __future__ import annotations

import pytest
from torch import nn

from cytotune.models import build_backbone, get_card, resolve_targets


def _linear_width(model, name):
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer.in_features


@pytest.mark.parametrize("name,depth,width,patch", [
    ("clip-vit-b16", 12, 768, 16), ("clip-vit-l14", 24, 1024, 14),
    ("quilt", 12, 768, 32), ("quilt-b16", 12, 768, 16),
])
def test_open_clip_native_vits(name, depth, width, patch):
    card = get_card(name)
    model = build_backbone(card, device="meta").model
    assert len(model.transformer.resblocks) == depth and model.transformer.width == width
    assert model.conv1.kernel_size == (patch, patch) and model.output_dim == card.feature_dim
    assert model.proj.shape == (width, card.feature_dim)
    hits = resolve_targets(model, card.lora_targets)
    assert all(len(hits[k]) == depth for k in ("q", "k", "v", "o", "fc1", "fc2"))
    assert _linear_width(model, hits["q"][0]) == width


def test_biomedclip_timm_trunk():
    card = get_card("biomedclip")
    model = build_backbone(card, device="meta").model
    assert type(model).__name__ == "TimmModel"
    assert len(model.trunk.blocks) == 12 and model.trunk.embed_dim == 768
    assert model.trunk.global_pool == "token" and model.trunk.num_classes == 0
    assert model.head.proj.out_features == 512 and model.head.proj.bias is None
    hits = resolve_targets(model, card.lora_targets)
    assert hits["q"][0] == "trunk.blocks.0.attn.qkv" and len(hits["o"]) == 12


def test_uni_vit_large():
    card = get_card("uni")
    model = build_backbone(card, device="meta").model
    assert len(model.blocks) == 24 and model.embed_dim == 1024
    assert model.blocks[0].attn.num_heads == 16
    assert model.patch_embed.patch_size == (16, 16) and model.num_classes == 0
    assert type(model.blocks[0].ls1).__name__ == "LayerScale"  # init_values=1e-5
    assert model.dynamic_img_size
    hits = resolve_targets(model, card.lora_targets)
    assert all(len(hits[k]) == 24 for k in ("q", "v", "o", "fc1", "fc2"))


def test_hf_vit_base():
    card = get_card("vit-b16")
    model = build_backbone(card, device="meta").model
    assert type(model).__name__ == "ViTModel" and model.pooler is None
    assert len(model.layers) == 12 and model.config.hidden_size == 768
    assert model.config.patch_size == 16 and model.config.image_size == 224
    hits = resolve_targets(model, card.lora_targets)
    assert hits["q"][0] == "layers.0.attention.q_proj" and hits["o"][0] == "layers.0.attention.o_proj"
    assert all(len(hits[k]) == 12 for k in ("q", "k", "v", "o", "fc1", "fc2"))


def test_hf_vit_targets_cover_transformers_4_names():
    """transformers < 5 named the layers differently; the card's patterns match both."""
    from fnmatch import fnmatchcase

    targets = get_card("vit-b16").lora_targets
    old = {
        "q": "encoder.layer.3.attention.attention.query",
        "k": "encoder.layer.3.attention.attention.key",
        "v": "encoder.layer.3.attention.attention.value",
        "o": "encoder.layer.11.attention.output.dense",
        "fc1": "encoder.layer.11.intermediate.dense",
        "fc2": "encoder.layer.11.output.dense",
    }
    for key, module_name in old.items():
        matched = [k for k, t in targets.items() if any(fnmatchcase(module_name, p) for p in t.patterns)]
        assert matched == [key], (module_name, matched)


def test_efficientnet_lite0():
    model = build_backbone("efficientnet-lite0", device="meta").model
    assert [len(s) for s in model.blocks] == [1, 2, 2, 3, 3, 4, 1]
    assert model.conv_head.out_channels == 1280 and model.num_classes == 0
