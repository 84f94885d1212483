"""weights=PATH: files and Hub-style directories in the published key layouts, strict loading."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cytotune.models import (CheckpointError, CheckpointMismatchError, build_backbone, get_card,
                             tiny_card)


def _save(sd: dict, path) -> None:
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path))


def _same_features(backbone, reference, pixels) -> None:
    with torch.no_grad():
        torch.testing.assert_close(backbone(pixels), reference(pixels), atol=1e-5, rtol=1e-5)


# --- open_clip ---------------------------------------------------------------------------------

def _full_clip(card):
    """A whole (tiny) open_clip CLIP with the card's image tower: its keys are 'visual.*'."""
    from open_clip.model import CLIP

    kw = card.model_kwargs
    text_cfg = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return CLIP(embed_dim=kw["embed_dim"], vision_cfg=kw["vision_cfg"], text_cfg=text_cfg,
                quick_gelu=kw["quick_gelu"]).eval(), text_cfg


def test_open_clip_full_clip_checkpoint_file_and_directory(tmp_path, pixels):
    card = tiny_card("clip-vit-b16")
    clip, text_cfg = _full_clip(card)
    sd = clip.state_dict()
    assert any(k.startswith("visual.") for k in sd) and "logit_scale" in sd
    file = tmp_path / "clip.safetensors"
    _save(sd, file)
    backbone = build_backbone(card, weights=file)
    assert backbone.weights_origin == f"local:{file}"
    _same_features(backbone, clip.encode_image, pixels)

    snapshot = tmp_path / "snapshot"  # as `hf download` lays out an open_clip repo
    snapshot.mkdir()
    cfg = {"model_cfg": {**card.model_kwargs, "text_cfg": text_cfg},
           "preprocess_cfg": {"mean": list(card.preprocessing.mean)}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.save(sd, snapshot / "open_clip_pytorch_model.bin")
    _same_features(build_backbone(card, weights=snapshot), clip.encode_image, pixels)


def test_open_clip_visual_only_and_converted_state_dicts(tmp_path, pixels):
    card = tiny_card("quilt")
    clip, _ = _full_clip(card)
    visual = clip.visual.state_dict()
    _save(visual, tmp_path / "visual.safetensors")
    _same_features(build_backbone(card, weights=tmp_path / "visual.safetensors"), clip.encode_image, pixels)
    # a state dict saved from a built (MHA-converted) backbone loads back too
    built = build_backbone(card, weights=tmp_path / "visual.safetensors")
    torch.save(built.model.state_dict(), tmp_path / "converted.pth")
    _same_features(build_backbone(card, weights=tmp_path / "converted.pth"), clip.encode_image, pixels)


def test_biomedclip_checkpoint_with_timm_trunk(tmp_path, pixels):
    from open_clip.model import _build_vision_tower

    card = tiny_card("biomedclip")
    tower = _build_vision_tower(card.model_kwargs["embed_dim"], card.model_kwargs["vision_cfg"]).eval()
    sd = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    assert "visual.trunk.blocks.0.attn.qkv.weight" in sd and "visual.head.proj.weight" in sd
    # the text tower of the published checkpoint (PubMedBERT) is ignored
    sd.update({"text.transformer.embeddings.word_embeddings.weight": torch.zeros(10, 4),
               "text.proj.0.weight": torch.zeros(4, 4), "logit_scale": torch.tensor(4.6)})
    _save(sd, tmp_path / "open_clip_model.safetensors")
    _same_features(build_backbone(card, weights=tmp_path), tower, pixels)  # directory, no config


def test_open_clip_wrong_architecture(tmp_path):
    clip, _ = _full_clip(tiny_card("quilt"))  # patch 16 instead of 8
    _save(clip.state_dict(), tmp_path / "quilt.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone(tiny_card("clip-vit-b16"), weights=tmp_path / "quilt.safetensors")
    text = str(info.value)
    assert "clip-vit-b16-tiny" in text and "conv1.weight" in text and "shape" in text
    torch.save(build_backbone(tiny_card("uni"), pretrained=False).model.state_dict(), tmp_path / "uni.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone(tiny_card("clip-vit-b16"), weights=tmp_path / "uni.pth")
    assert "missing keys" in str(info.value) and "unexpected keys" in str(info.value)
    assert "class_embedding" in str(info.value) and "blocks.0.attn.qkv.weight" in str(info.value)


# --- timm ------------------------------------------------------------------------------------

def _timm_source(card, **overrides):
    import timm

    return timm.create_model(card.architecture, pretrained=False,
                             **{**card.model_kwargs, **overrides}).eval()


def test_timm_checkpoint_file_and_directory(tmp_path, pixels):
    card = tiny_card("uni")
    source = _timm_source(card)
    _save(source.state_dict(), tmp_path / "uni.safetensors")
    _same_features(build_backbone(card, weights=tmp_path / "uni.safetensors"), source, pixels)

    snapshot = tmp_path / "snapshot"  # config.json + pytorch_model.bin, as MahmoodLab/uni ships
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": card.architecture, "num_classes": 0, "num_features": card.feature_dim,
        "global_pool": "token", "model_args": card.model_kwargs}))
    torch.save(source.state_dict(), snapshot / "pytorch_model.bin")
    _same_features(build_backbone(card, weights=snapshot), source, pixels)


def test_timm_checkpoint_with_classifier_head_is_accepted(tmp_path, pixels):
    card = tiny_card("uni")
    with_head = _timm_source(card, num_classes=10)
    torch.save({"state_dict": with_head.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    backbone = build_backbone(card, weights=tmp_path / "ckpt.pt")
    with_head.reset_classifier(0)
    _same_features(backbone, with_head, pixels)


def test_timm_wrong_architecture(tmp_path):
    card = tiny_card("uni")
    deeper = _timm_source(card, depth=3)
    _save(deeper.state_dict(), tmp_path / "deeper.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(\d+\): blocks\.2\."):
        build_backbone(card, weights=tmp_path / "deeper.safetensors")
    eff = build_backbone(tiny_card("efficientnet-lite0"), pretrained=False)
    _save(eff.model.state_dict(), tmp_path / "eff.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone(card, weights=tmp_path / "eff.safetensors")
    assert "uni-tiny" in str(info.value) and "cls_token" in str(info.value)
    assert "conv_stem.weight" in info.value.unexpected and "pos_embed" in info.value.missing


# --- Hugging Face ViT --------------------------------------------------------------------------

def _hf_config(card):
    from transformers import ViTConfig

    return ViTConfig(**card.model_kwargs)


def test_hf_vit_for_image_classification_directory_and_file(tmp_path, pixels):
    from safetensors.torch import load_file
    from transformers import ViTForImageClassification

    card = tiny_card("vit-b16")
    config = _hf_config(card)
    config.num_labels = 5
    classifier = ViTForImageClassification(config).eval()
    classifier.save_pretrained(tmp_path / "google-vit")
    keys = set(load_file(str(tmp_path / "google-vit" / "model.safetensors")))
    # the published google/vit-base-patch16-224 layout: vit.-prefixed transformers-4 names
    assert "vit.encoder.layer.0.attention.attention.query.weight" in keys
    assert "vit.encoder.layer.1.output.dense.weight" in keys and "classifier.weight" in keys

    def reference(x):
        return classifier.vit(pixel_values=x).last_hidden_state[:, 0]

    _same_features(build_backbone(card, weights=tmp_path / "google-vit"), reference, pixels)
    _same_features(build_backbone(card, weights=tmp_path / "google-vit" / "model.safetensors"),
                   reference, pixels)


def test_hf_vit_bare_model_checkpoint(tmp_path, pixels):
    from transformers import ViTModel

    card = tiny_card("vit-b16")
    model = ViTModel(_hf_config(card), add_pooling_layer=True).eval()
    sd = model.state_dict()
    assert "layers.0.attention.q_proj.weight" in sd and "pooler.dense.weight" in sd
    _save(sd, tmp_path / "bare.safetensors")
    _same_features(build_backbone(card, weights=tmp_path / "bare.safetensors"),
                   lambda x: model(pixel_values=x).last_hidden_state[:, 0], pixels)


def test_hf_vit_wrong_architecture(tmp_path):
    card = tiny_card("vit-b16")
    _save(build_backbone(tiny_card("uni"), pretrained=False).model.state_dict(), tmp_path / "timm.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone(card, weights=tmp_path / "timm.safetensors")
    text = str(info.value)
    assert "vit-b16-tiny" in text and "layers.0.attention.q_proj.weight" in text
    assert "blocks.0.attn.qkv.weight" in text


# --- files -------------------------------------------------------------------------------------

class NotATensor:
    pass


def test_unsafe_or_missing_files_are_refused(tmp_path):
    card = tiny_card("uni")
    torch.save({"model": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        build_backbone(card, weights=tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_backbone(card, weights=tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights file"):
        build_backbone(card, weights=tmp_path / "empty")


def test_weights_win_over_pretrained_and_fingerprint_follows_them(tmp_path, pixels):
    card = tiny_card("uni")
    a, b = _timm_source(card), _timm_source(card)
    _save(a.state_dict(), tmp_path / "a.safetensors")
    _save(b.state_dict(), tmp_path / "b.safetensors")
    bb_a = build_backbone(card, weights=tmp_path / "a.safetensors", pretrained=True)  # no download
    bb_a2 = build_backbone(card, weights=tmp_path / "a.safetensors")
    bb_b = build_backbone(card, weights=tmp_path / "b.safetensors")
    assert bb_a.weights_fingerprint() == bb_a2.weights_fingerprint()
    assert bb_a.weights_fingerprint() != bb_b.weights_fingerprint()
    assert get_card("uni").name == "uni"


def test_an_index_naming_itself_or_a_cycle_of_indexes_is_one_clear_error(tmp_path):
    """Issue 31: an index pointing at itself ended in a 2,987-line RecursionError."""
    card = tiny_card("uni")
    own = tmp_path / "own"
    own.mkdir()
    (own / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors.index.json"}}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json .*this very file"):
        build_backbone(card, weights=own / "model.safetensors.index.json")
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "a.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "b.safetensors.index.json"}}))
    (ring / "b.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "a.safetensors.index.json"}}))
    with pytest.raises(CheckpointError, match=r"a\.safetensors\.index\.json names "
                                              r"b\.safetensors\.index\.json as a shard"):
        build_backbone(card, weights=ring / "a.safetensors.index.json")
    (ring / "a.safetensors.index.json").write_text(json.dumps({"weight_map": ["x"]}))
    with pytest.raises(CheckpointError, match="weight_map must map tensor names"):
        build_backbone(card, weights=ring / "a.safetensors.index.json")
