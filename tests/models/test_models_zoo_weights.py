"""Local weights for the newer pathology models: random-init tensors of the real (tiny)
architecture saved under the key names of the published checkpoints load through ``weights=``
and give the same features; a checkpoint of another architecture names its missing and
unexpected keys."""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from cytotune.models import (CheckpointMismatchError, ModelError, build_backbone, get_card,
                             list_cards, tiny_card)
from cytotune.models.card import PyRef, resolve_kwargs
from cytotune.models.errors import MissingDependencyError

TIMM_ZOO = ["uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "prov-gigapath"]


def _save(sd: dict, path) -> None:
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path))


def _timm_model(card):
    """The card's architecture straight from timm, as the authors' create_model call builds it."""
    import timm

    return timm.create_model(card.architecture, pretrained=False,
                             **resolve_kwargs(card.model_kwargs)).eval()


def _published_features(card, model, x):
    """Each model card's documented embedding, written out by hand."""
    with torch.no_grad():
        if card.pooling == "cls+mean_patch":  # Virchow2: class token ++ mean of the patch tokens
            tokens = model.forward_features(x)
            return torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens:].mean(1)], dim=-1)
        return model(x)  # class token after the final norm


@pytest.mark.parametrize("name", TIMM_ZOO)
def test_timm_checkpoints_in_the_published_layout(name, tmp_path, pixels):
    card = tiny_card(name)
    source = _timm_model(card)
    sd = source.state_dict()
    # timm's own names are the published ones: cls_token, reg_token, blocks.N.ls1.gamma, ...
    assert "cls_token" in sd and "blocks.0.attn.qkv.weight" in sd and "blocks.0.ls1.gamma" in sd
    assert ("reg_token" in sd) == (name != "prov-gigapath")
    _save(sd, tmp_path / "model.safetensors")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    reference = _published_features(card, source, pixels)
    from_file = build_backbone(card, weights=tmp_path / "pytorch_model.bin")
    from_dir = build_backbone(card, weights=tmp_path)  # a snapshot directory: model.safetensors
    with torch.no_grad():
        torch.testing.assert_close(from_file(pixels), reference)
        torch.testing.assert_close(from_dir(pixels), reference)
    assert from_dir.weights_origin == f"local:{tmp_path}"


def test_phikon_v2_checkpoint_in_the_published_layout(tmp_path, pixels):
    from transformers import Dinov2Config, Dinov2Model

    card = tiny_card("phikon-v2")
    source = Dinov2Model(Dinov2Config(**card.model_kwargs)).eval()
    source.save_pretrained(tmp_path / "phikon-v2")  # config.json + model.safetensors
    keys = set(load_file(str(tmp_path / "phikon-v2" / "model.safetensors")))
    # the published (transformers 4) names, with separate query/key/value layers
    assert "encoder.layer.0.attention.attention.query.weight" in keys
    assert "encoder.layer.1.attention.output.dense.weight" in keys
    assert "encoder.layer.0.layer_scale1.lambda1" in keys and "embeddings.mask_token" in keys
    with torch.no_grad():
        reference = source(pixel_values=pixels).last_hidden_state[:, 0]
        for path in (tmp_path / "phikon-v2", tmp_path / "phikon-v2" / "model.safetensors"):
            torch.testing.assert_close(build_backbone(card, weights=path)(pixels), reference)


def _tiny_coca(card):
    from conch.open_clip_custom.coca_model import CoCa

    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1, embed_cls=True,
                output_tokens=True)
    kw = card.model_kwargs
    return CoCa(embed_dim=kw["embed_dim"], embed_dim_caption=kw["embed_dim_caption"],
                vision_cfg=kw["vision_cfg"], text_cfg=text, multimodal_cfg=text).eval()


def test_conch_whole_coca_checkpoint(tmp_path, pixels):
    card = tiny_card("conch")
    coca = _tiny_coca(card)
    sd = coca.state_dict()
    # the published pytorch_model.bin holds the whole CoCa model
    assert "visual.trunk.blocks.0.attn.qkv.weight" in sd and "visual.attn_pool_contrast.query" in sd
    assert any(k.startswith("text.") for k in sd) and "logit_scale" in sd
    torch.save(sd, tmp_path / "pytorch_model.bin")
    backbone = build_backbone(card, weights=tmp_path)
    with torch.no_grad():
        reference = coca.encode_image(pixels, proj_contrast=False, normalize=False)
        torch.testing.assert_close(backbone(pixels), reference)


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    gigapath = _timm_model(tiny_card("prov-gigapath"))  # no register tokens
    _save(gigapath.state_dict(), tmp_path / "gigapath.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone(tiny_card("h-optimus-0"), weights=tmp_path / "gigapath.safetensors")
    assert "reg_token" in info.value.missing and "h-optimus-0-tiny" in str(info.value)
    assert "missing keys" in str(info.value) and "pos_embed" in str(info.value)

    phikon = build_backbone(tiny_card("phikon-v2"), pretrained=False).model
    _save(phikon.state_dict(), tmp_path / "phikon.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone(tiny_card("uni2-h"), weights=tmp_path / "phikon.safetensors")
    assert "cls_token" in info.value.missing and "embeddings.cls_token" in info.value.unexpected
    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone(tiny_card("phikon-v2"), weights=tmp_path / "gigapath.safetensors")
    assert "blocks.0.attn.qkv.weight" in str(info.value)

    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone(tiny_card("conch"), weights=tmp_path / "gigapath.safetensors")
    assert "trunk.cls_token" in info.value.missing and "cls_token" in info.value.unexpected


def test_cards_with_classes_in_their_kwargs_stay_printable_and_comparable():
    card = get_card("uni2-h")
    assert card.model_kwargs["mlp_layer"] == PyRef("timm.layers.SwiGLUPacked")
    assert "mlp_layer: timm.layers.SwiGLUPacked" in str(card.model_kwargs).replace("'", "")
    assert card == get_card("uni2-h").with_overrides()
    import timm.layers

    assert PyRef("timm.layers.SwiGLUPacked").resolve() is timm.layers.SwiGLUPacked
    assert resolve_kwargs({"a": PyRef("torch.nn.SiLU"), "b": [PyRef("torch.nn.GELU")]}) == {
        "a": torch.nn.SiLU, "b": [torch.nn.GELU]}
    with pytest.raises(AttributeError, match="torch.nn.NoSuchLayer"):
        PyRef("torch.nn.NoSuchLayer").resolve()
    with pytest.raises(ValueError, match="dotted path"):
        PyRef("SiLU")


def test_conch_without_its_package_is_listed_and_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "conch", None)  # as if conch-fork were not installed
    monkeypatch.setitem(sys.modules, "conch.open_clip_custom", None)
    assert "conch" in {c.name for c in list_cards()}
    with pytest.raises(MissingDependencyError, match=r'pip install "cytotune\[conch\]"') as info:
        build_backbone("conch", pretrained=False)
    assert isinstance(info.value, ModelError)
    with pytest.raises(MissingDependencyError):
        build_backbone("conch")  # pretrained: reported before any download is attempted
