"""Full fine-tuning (method "full"), --train-blocks, layer-wise lr decay, gradient checkpointing,
the CNN baseline, and reloading a fine-tuned backbone for inference."""
import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import cytotune
from cytotune.api import build_config
from cytotune.inference.run import RunDirError, read_run
from cytotune.models import build_backbone, get_card
from cytotune.models.blocks import block_names, parameter_depths
from cytotune.training.config import ConfigError, FinetuneSettings
from cytotune.training.methods.full import backbone_param_groups, mark_trainable_blocks
from cytotune.training.runner import build_run_backbone

FAST = dict(steps=3, val_every=3, batch_size=8, pretrained=False, num_workers=0, augment=False)


def _train(data, tmp_path, name="run", **options):
    out = tmp_path / name
    options = {**FAST, "shots": 2, "seed": 1, "lr": 1e-2, **options}
    result = cytotune.train(data=str(data), method="full", out=str(out),
                            cache_dir=str(tmp_path / "cache"), **options)
    return result, out


def _initial_and_trained(out):
    """The backbone's initial state (rebuilt as the run built it) and the saved fine-tuned one."""
    config = read_run(out).config
    initial = build_run_backbone(config).model.state_dict()
    trained = load_file(str(out / "backbone.safetensors"))
    assert set(initial) == set(trained)
    return initial, trained


@pytest.mark.parametrize("card", ["uni", "clip-vit-b16", "vit-b16"])
def test_full_finetuning_changes_every_backbone_parameter(card, synthetic_data, tmp_path):
    result, out = _train(synthetic_data, tmp_path, model=f"{card}-tiny")
    initial, trained = _initial_and_trained(out)
    backbone = build_run_backbone(read_run(out).config)
    params = dict(backbone.model.named_parameters())
    unchanged = [n for n in params if torch.equal(initial[n], trained[n])]
    assert unchanged == []
    total = sum(p.numel() for p in params.values())
    assert result.trainable_parameters["backbone"] == total
    assert result.trainable_parameters["total"] == total + result.trainable_parameters["head"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["memory"]["kind"] == "process_peak_rss"  # CPU: the process's peak RSS
    assert metrics["memory"]["peak_bytes"] > 0


def test_train_blocks_changes_only_the_last_blocks(synthetic_data, tmp_path):
    # EfficientNet-Lite0: 7 block stages with batch norm, a head conv and norm after them
    result, out = _train(synthetic_data, tmp_path, model="efficientnet-lite0-tiny", train_blocks=2)
    initial, trained = _initial_and_trained(out)
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    outside = sorted(k for k in changed if not k.startswith(("blocks.5.", "blocks.6.")))
    assert outside == []  # frozen blocks, stem and head conv untouched (batch-norm stats too)
    backbone = build_run_backbone(read_run(out).config)
    last_two = [n for n, _ in backbone.model.named_parameters() if n.startswith(("blocks.5.", "blocks.6."))]
    assert {n for n in last_two} <= changed
    assert result.trainable_parameters["backbone"] == sum(
        p.numel() for n, p in backbone.model.named_parameters() if n in last_two)


def test_train_blocks_larger_than_the_model_is_an_error(synthetic_data, tmp_path):
    with pytest.raises(ValueError, match="train_blocks=3 but model 'uni-tiny' has only 2 blocks"):
        _train(synthetic_data, tmp_path, model="uni-tiny", train_blocks=3)
    with pytest.raises(ConfigError, match="finetune.layer_decay"):
        build_config(data="x", layer_decay=1.5).validate()


@pytest.mark.parametrize("card, expected", [
    ("uni-tiny", ["blocks.0", "blocks.1"]),
    ("clip-vit-b16-tiny", ["transformer.resblocks.0", "transformer.resblocks.1"]),
    ("biomedclip-tiny", ["trunk.blocks.0", "trunk.blocks.1"]),
    ("efficientnet-lite0-tiny", [f"blocks.{i}" for i in range(7)]),
    ("timm:resnet18", ["layer1", "layer2", "layer3", "layer4"]),
])
def test_blocks_are_found_generically(card, expected):
    backbone = build_backbone(get_card(card), pretrained=False)
    assert block_names(backbone.card, backbone.model) == expected


def test_hf_vit_blocks_and_a_card_pattern_override():
    backbone = build_backbone(get_card("vit-b16-tiny"), pretrained=False)
    names = block_names(backbone.card, backbone.model)
    assert len(names) == 2 and names[0].endswith(".0") and names[1].endswith(".1")
    card = backbone.card.with_overrides(block_pattern=r"nothing\.\d+")
    with pytest.raises(ValueError, match="no module name matches the block pattern"):
        block_names(card, backbone.model)


def test_layer_decay_gives_deeper_parameters_larger_rates():
    backbone = build_backbone(get_card("uni-tiny"), pretrained=False)
    settings = FinetuneSettings(layer_decay=0.5)
    mark_trainable_blocks(backbone, settings)
    groups = backbone_param_groups(backbone, settings, base_lr=1.0)
    depths, n = parameter_depths(backbone.card, backbone.model)
    assert n == 2
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(backbone.model.named_parameters())
    assert lr_of[id(params["patch_embed.proj.weight"])] == 0.5 ** 3  # depth 0
    assert lr_of[id(params["blocks.0.attn.qkv.weight"])] == 0.5 ** 2
    assert lr_of[id(params["blocks.1.attn.qkv.weight"])] == 0.5
    assert lr_of[id(params["norm.weight"])] == 1.0  # after the last block
    assert len(lr_of) == len(params)  # every parameter in exactly one group
    flat = backbone_param_groups(backbone, FinetuneSettings(), base_lr=0.1)
    assert len(flat) == 1 and flat[0]["lr"] == 0.1


def test_gradient_checkpointing_gives_the_same_model(synthetic_data, tmp_path):
    plain, _ = _train(synthetic_data, tmp_path, "plain", model="uni-tiny", backbone_lr=1e-3)
    ckpt, _ = _train(synthetic_data, tmp_path, "ckpt", model="uni-tiny", backbone_lr=1e-3,
                     grad_checkpointing=True)
    cols = [c for c in plain.predictions.columns if c.startswith("prob_")]
    assert torch.allclose(torch.tensor(plain.predictions[cols].to_numpy()),
                          torch.tensor(ckpt.predictions[cols].to_numpy()), atol=1e-5)


def test_cnn_baseline_from_scratch_reloads_for_inference(synthetic_data, tmp_path):
    # the conventionally trained baseline: a timm ResNet, every weight trained, random init
    result, out = _train(synthetic_data, tmp_path, model="timm:resnet18", image_size=32)
    assert result.trainable_parameters["backbone"] == result.trainable_parameters["backbone_total"]
    model = cytotune.load(out)
    saved = pd.read_csv(out / "predictions.csv")
    cols = [c for c in saved.columns if c.startswith("prob_")]
    again = model.predict(list(saved["path"])).probs.numpy()
    assert abs(again - saved[cols].to_numpy()).max() < 1e-4
    (out / "backbone.safetensors").unlink()
    with pytest.raises(RunDirError, match="method full.*no backbone.safetensors"):
        cytotune.load(out)
