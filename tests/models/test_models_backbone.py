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


# -- channels-last input for convolutional networks -------------------------------------------------
@pytest.mark.parametrize("name", ["efficientnet-lite0", "uni", "vit-b16", "clip-vit-b16"])
def test_only_convolutional_networks_take_channels_last_input(name):
    backbone = build_backbone(tiny_card(name), pretrained=False)
    assert backbone.channels_last is (name == "efficientnet-lite0")  # a ViT's one conv: no


def test_channels_last_gives_the_same_features_and_leaves_the_weights_alone():
    from safetensors.torch import save

    torch.manual_seed(0)
    backbone = build_backbone(tiny_card("efficientnet-lite0"), pretrained=False)
    pixels = torch.randn(3, 3, 32, 32)
    seen = []
    hook = backbone.model.conv_stem.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        backbone.channels_last = False
        nchw = backbone(pixels)
        backbone.channels_last = True
        nhwc = backbone(pixels)
    hook.remove()
    assert seen == [False, True]  # the switch really changes what the network is fed
    torch.testing.assert_close(nhwc, nchw, rtol=1e-5, atol=1e-5)
    state = backbone.model.state_dict()
    assert all(t.is_contiguous() for t in state.values())  # weights keep their own layout
    save(state)  # safetensors refuses non-contiguous tensors


def test_channels_last_gives_the_same_lora_gradients():
    from cytotune.adapters import LoRAConfig, apply_lora, lora_parameters

    torch.manual_seed(0)
    backbone = build_backbone(tiny_card("efficientnet-lite0"), pretrained=False)
    card = backbone.card
    apply_lora(backbone.model, LoRAConfig(rank=2, alpha=1.0, targets=card.default_lora_targets),
               card.lora_targets)
    with torch.no_grad():  # non-zero B, so every adapter's A receives a gradient too
        for p in lora_parameters(backbone.model):
            p.normal_(0, 0.1)
    pixels = torch.randn(4, 3, 32, 32)
    grads = {}
    for fmt in (False, True):
        backbone.channels_last = fmt
        backbone.zero_grad()
        backbone(pixels).square().sum().backward()
        grads[fmt] = [p.grad.clone() for p in lora_parameters(backbone.model)]
    assert grads[True] and len(grads[True]) == len(grads[False])
    for nhwc, nchw in zip(grads[True], grads[False]):
        torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-5)
