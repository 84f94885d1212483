"""Whole runs through the public API on generated images and tiny random-init backbones."""
import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import cytotune
from cytotune.adapters import LoRAConfig, apply_lora, load_adapter, read_adapter_metadata
from cytotune.data import DataError
from cytotune.models import build_backbone, get_card
from cytotune.training.rundir import RunExistsError

FAST = dict(steps=6, val_every=3, batch_size=8, linear_epochs=5, pretrained=False, num_workers=0)


@pytest.mark.parametrize("card", ["clip-vit-b16", "biomedclip", "uni", "vit-b16"])
def test_lora_run_writes_a_complete_run_directory(card, synthetic_data, tiny_model_names, tmp_path):
    out = tmp_path / "run"
    result = cytotune.train(data=str(synthetic_data), model=tiny_model_names[card], method="lora",
                            rank=2, targets="q,v", shots=2, seed=1, lr=1e-3, out=str(out),
                            cache_dir=str(tmp_path / "cache"), **FAST)
    assert result.out_dir == out.resolve()
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.json", "predictions.csv",
                                               "head.safetensors", "adapter.safetensors", "train.log",
                                               "manifest.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["test"]["n"] == len(result.predictions)
    preds = pd.read_csv(out / "predictions.csv")
    prob_cols = [c for c in preds.columns if c.startswith("prob_")]
    assert len(prob_cols) == 4
    assert preds[prob_cols].sum(axis=1).round(4).eq(1.0).all()
    # trainable parameters: 2 layers x (q, v) x r * (in + out/3 ... ) computed from the layers
    model_card = get_card(tiny_model_names[card])
    backbone = build_backbone(model_card, pretrained=False)
    apply_lora(backbone.model, LoRAConfig(rank=2, targets=("q", "v")), model_card.lora_targets)
    expected = sum(p.numel() for n, p in backbone.named_parameters() if "lora_" in n)
    assert result.trainable_parameters["backbone"] == expected
    assert metrics["trainable_parameters"]["head"] == backbone.feature_dim * 4 + 4
    # the saved adapter loads into a freshly adapted backbone and names its card
    assert read_adapter_metadata(out / "adapter.safetensors")["model"] == model_card.name
    load_adapter(out / "adapter.safetensors", backbone.model, expect={"model": model_card.name})
    assert set(load_file(str(out / "head.safetensors"))) == {"weight", "bias"}


def test_linear_probe_uses_the_feature_cache(synthetic_data, tiny_model_names, tmp_path):
    kwargs = dict(data=str(synthetic_data), model=tiny_model_names["uni"], method="linear",
                  shots=3, lr=1e-2, cache_dir=str(tmp_path / "cache"), **FAST)
    first = cytotune.train(seed=1, **kwargs)
    again = cytotune.train(seed=1, **{**kwargs, "lr": 1e-3})
    assert first.timings["feature_extraction_s"] > 0
    assert again.timings["feature_extraction_s"] == 0.0  # every split served from the cache
    assert list(first.predictions["path"]) == list(again.predictions["path"])
    assert first.trainable_parameters["backbone"] == 0
    # another seed draws other random-init weights: their fingerprint differs, nothing is reused
    other = cytotune.train(seed=2, **kwargs)
    assert other.timings["feature_extraction_s"] > 0


def test_runs_are_reproducible(synthetic_data, tiny_model_names, tmp_path):
    kwargs = dict(data=str(synthetic_data), model=tiny_model_names["clip-vit-b16"], method="lora",
                  shots=2, seed=3, lr=1e-3, cache_dir=None, **FAST)
    a, b = cytotune.train(**kwargs), cytotune.train(**kwargs)
    pa = a.predictions.filter(like="prob_").to_numpy()
    pb = b.predictions.filter(like="prob_").to_numpy()
    assert torch.allclose(torch.tensor(pa), torch.tensor(pb), atol=1e-6)


def test_existing_run_is_kept_and_failed_run_leaves_nothing(synthetic_data, tiny_model_names, tmp_path):
    out = tmp_path / "run"
    kwargs = dict(data=str(synthetic_data), model=tiny_model_names["uni"], method="linear", shots=2,
                  lr=1e-2, out=str(out), cache_dir=None, **FAST)
    cytotune.train(**kwargs)
    before = (out / "metrics.json").read_text()
    with pytest.raises(RunExistsError):
        cytotune.train(**kwargs)
    with pytest.raises(DataError, match="shots|class"):
        cytotune.train(**{**kwargs, "shots": 500, "overwrite": True})
    assert (out / "metrics.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_corrupt_image_is_named_or_skipped(synthetic_data, tiny_model_names, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    victim = sorted((data / "normal").glob("*.png"))[0]
    victim.write_bytes(b"not an image")
    kwargs = dict(data=str(data), model=tiny_model_names["uni"], method="linear", lr=1e-2,
                  cache_dir=None, **FAST)
    with pytest.raises(DataError, match=victim.name):
        cytotune.train(**kwargs)
    result = cytotune.train(skip_bad_images=True, **kwargs)
    assert str(victim) not in set(result.predictions["path"])


def test_unknown_model_is_a_clear_error(synthetic_data):
    with pytest.raises(Exception, match="clip-vit-b16"):
        cytotune.train(data=str(synthetic_data), model="clip-vit-b61", method="linear")
