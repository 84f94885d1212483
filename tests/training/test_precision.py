"""The ``precision`` option: bf16 autocast asked for on a CPU, fp32 by default there."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import cytotune
from cytotune.api import build_config
from cytotune.inference import predict
from cytotune.training.config import ConfigError
from cytotune.training.features import FeatureCache, autocast_for, resolve_precision

FAST = dict(steps=4, val_every=2, batch_size=8, linear_epochs=3, pretrained=False, num_workers=0,
            shots=2, seed=1, lr=1e-2)


def test_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision(torch.device("cpu")) == "fp32"
    assert resolve_precision(torch.device("cuda")) == "bf16"
    assert resolve_precision(torch.device("cpu"), "bf16") == "bf16"
    assert resolve_precision(torch.device("cuda"), "fp32") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision(torch.device("cpu"), "fp16")


def test_autocast_for_cpu_bf16_computes_in_bf16():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast_for(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu")):
        assert layer(x).dtype == torch.float32


def test_unknown_precision_is_a_config_error_naming_the_option(synthetic_data):
    with pytest.raises(ConfigError, match="precision"):
        build_config(data=str(synthetic_data), precision="fp16")
    config = build_config(data=str(synthetic_data))
    config.precision = "fp16"  # set from Python, past the loader's type check
    with pytest.raises(ConfigError, match="precision"):
        config.validate()


def _prob_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("prob_")]


def test_bf16_linear_probe_caches_its_own_features_and_predicts_as_it_trained(
        synthetic_data, tiny_model_names, tmp_path):
    # one random-init backbone for both runs: a weights file shared by the two
    cache = tmp_path / "cache"
    common = dict(data=str(synthetic_data), model=tiny_model_names["vit-b16"], method="linear",
                  cache_dir=str(cache), **FAST)
    fp32 = cytotune.train(out=str(tmp_path / "fp32"), **common)
    bf16 = cytotune.train(out=str(tmp_path / "bf16"), precision="bf16", **common)
    assert fp32.timings["feature_extraction_s"] > 0
    # on a CPU "auto" means fp32, and metrics.json says so
    assert json.loads((tmp_path / "fp32" / "metrics.json").read_text())["environment"][
        "precision"] == "fp32"
    assert bf16.timings["feature_extraction_s"] > 0  # not served the fp32 features
    banks = sorted(d for d in (cache / "features").iterdir() if d.is_dir())
    assert len(banks) == 2  # one per precision
    assert all(len(list(b.glob("*.safetensors"))) == 3 for b in banks)  # train, val, test
    assert cytotune.train(precision="fp32", **common).timings["feature_extraction_s"] == 0.0
    # image by image, bf16 features are the fp32 ones up to rounding, and not bit-identical
    by_image = []
    for bank in banks:
        features = {}
        for chunk in bank.glob("*.safetensors"):
            tensors = load_file(str(chunk))
            features.update({bytes(k): f for k, f in zip(tensors["keys"].numpy(),
                                                         tensors["features"])})
        by_image.append(features)
    assert by_image[0].keys() == by_image[1].keys()
    for key, a in by_image[0].items():
        b = by_image[1][key]
        assert not torch.equal(a, b)
        assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())
    # predict runs at the precision the run trained with, so it reproduces predictions.csv
    run = tmp_path / "bf16"
    reference = pd.read_csv(run / "predictions.csv")
    frame = predict(run, run / "predictions.csv", out=tmp_path / "again.csv", device="cpu")
    cols = _prob_columns(reference)
    assert abs(frame[cols].to_numpy() - reference[cols].to_numpy()).max() < 1e-5
    # asked for fp32, it computes in fp32: close to, but not exactly, what the bf16 run wrote
    as_fp32 = predict(run, run / "predictions.csv", device="cpu", precision="fp32")
    gap = abs(as_fp32[cols].to_numpy() - reference[cols].to_numpy()).max()
    assert 1e-6 < gap < 5e-2
    with pytest.raises(ValueError, match="precision must be one of"):
        cytotune.load(run, precision="fp16")


def test_bf16_lora_run_keeps_fp32_weights(synthetic_data, tiny_model_names, tmp_path):
    run = tmp_path / "lora"
    result = cytotune.train(data=str(synthetic_data), model=tiny_model_names["vit-b16"],
                            method="lora", precision="bf16", out=str(run), cache_dir=None, **FAST)
    assert 0.0 <= result.metrics["test"]["accuracy"] <= 1.0
    for name, tensor in {**load_file(str(run / "adapter.safetensors")),
                         **load_file(str(run / "head.safetensors"))}.items():
        assert tensor.dtype == torch.float32, name
    assert cytotune.load(run).config.precision == "bf16"
    assert json.loads((run / "metrics.json").read_text())["environment"]["precision"] == "bf16"
    # predict merges LoRA into the weights, then runs in bf16 as training evaluated: the same
    # probabilities up to bf16 rounding of the merged weights
    reference = pd.read_csv(run / "predictions.csv")
    frame = predict(run, run / "predictions.csv", out=tmp_path / "again.csv", device="cpu")
    cols = _prob_columns(reference)
    assert abs(frame[cols].to_numpy() - reference[cols].to_numpy()).max() < 5e-3  # 1.4e-3 seen
    # an export computes in float32, and its README says how that relates to the run
    from cytotune.inference.export import export

    exported = export(run, tmp_path / "export", format="safetensors")
    readme = (exported.out_dir / "README.md").read_text()
    assert "bf16 autocast" in readme and "float32" in readme
    as_fp32 = predict(run, run / "predictions.csv", device="cpu", precision="fp32")
    assert abs(as_fp32[cols].to_numpy() - reference[cols].to_numpy()).max() < 5e-3  # 1.4e-3 seen


def test_feature_cache_key_depends_on_precision():
    parts = ("card", "weights", "pre", "images")
    assert FeatureCache.key(*parts, "fp32") != FeatureCache.key(*parts, "bf16")
