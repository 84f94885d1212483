"""Backbone: feature-width check, pooling choices, fingerprint."""
from __future__ import annotations

import pytest
import torch

from cytotune.models import Backbone, FeatureDimError, build_backbone, get_card, tiny_card


def test_wrong_feature_dim_in_card_is_reported():
    card = tiny_card("uni").with_overrides(feature_dim=999)
    with pytest.raises(FeatureDimError, match=r"feature_dim=999 .* 64-d features"):
        build_backbone(card, pretrained=False)


def test_forward_failure_at_card_image_size_is_reported():
    card = tiny_card("clip-vit-b16")  # fixed positional embedding for 32x32
    card = card.with_overrides(preprocessing=card.preprocessing.__class__(image_size=48))
    with pytest.raises(FeatureDimError, match=r"\(1, 3, 48, 48\)"):
        build_backbone(card, pretrained=False)


def test_hf_vit_runs_at_an_overridden_image_size():
    card = tiny_card("vit-b16")
    card = card.with_overrides(preprocessing=card.preprocessing.__class__(image_size=48))
    backbone = build_backbone(card, pretrained=False)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 48, 48)).shape == (1, 64)


def test_token_poolings_on_timm_and_hf(pixels):
    base = tiny_card("uni")
    torch.manual_seed(0)
    model_pool = build_backbone(base, pretrained=False)
    both = Backbone(base.with_overrides(pooling="cls+mean_patch", feature_dim=128), model_pool.model)
    cls = Backbone(base.with_overrides(pooling="cls"), model_pool.model)
    with torch.no_grad():
        out_model, out_cls, out_both = model_pool(pixels), cls(pixels), both(pixels)
        tokens = model_pool.model.forward_features(pixels)
    torch.testing.assert_close(out_model, out_cls)  # timm "token" pool == class token
    assert out_both.shape == (2, 128)
    torch.testing.assert_close(out_both[:, 64:], tokens[:, 1:].mean(1))
    built = build_backbone(base.with_overrides(pooling="mean_patch"), pretrained=False)
    assert built(pixels).shape == (2, 64)

    vit = build_backbone(tiny_card("vit-b16"), pretrained=False)
    with torch.no_grad():
        hidden = vit.model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(vit(pixels), hidden[:, 0])


def test_fingerprint_is_content_based():
    card = tiny_card("vit-b16")
    torch.manual_seed(5)
    a = build_backbone(card, pretrained=False)
    torch.manual_seed(5)
    b = build_backbone(card, pretrained=False)
    fp = a.weights_fingerprint()
    assert fp == b.weights_fingerprint() and len(fp) == 32
    with torch.no_grad():  # one element that a strided sample may skip
        b.model.layers[1].mlp.fc1.weight[7, 3] += 1e-3
    assert b.weights_fingerprint() != fp
    other = build_backbone(tiny_card("uni"), pretrained=False)
    assert other.weights_fingerprint() != fp


def test_backbone_attributes_and_meta_device():
    card = get_card("clip-vit-l14")
    backbone = build_backbone(card, device="meta")
    assert backbone.card is card and backbone.feature_dim == 768
    assert backbone.preprocessing is card.preprocessing and backbone.weights_origin == "meta"
    assert next(backbone.parameters()).device.type == "meta"
    assert "clip-vit-l14" in repr(backbone)
    assert isinstance(backbone.weights_fingerprint(), str)
