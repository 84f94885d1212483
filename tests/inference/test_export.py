"""`cytotune export`: safetensors that plain timm / open_clip / transformers load, ONNX that
onnxruntime runs, and a model card, all without cytotune on the receiving side."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from cytotune.inference import ONNX_ATOL, ExportError, export, load
from cytotune.inference.cli import register

from inference_helpers import prob_columns, readme_code

LIBRARY = {"clip-vit-b16": "open_clip", "uni": "timm", "vit-b16": "transformers",
           "virchow2": "timm", "phikon-v2": "transformers"}


def _inputs(model, n=3, seed=0):
    pixels = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    pre = model.preprocessing
    x = (pixels.float() / 255.0 - torch.tensor(pre.mean).view(1, 3, 1, 1)) / \
        torch.tensor(pre.std).view(1, 3, 1, 1)
    return pixels, x


# virchow2: classes in the timm kwargs and class-token ++ patch-mean pooling; phikon-v2: a
# transformers class other than ViTModel
@pytest.mark.parametrize("card", ["clip-vit-b16", "uni", "vit-b16", "virchow2", "phikon-v2"])
def test_safetensors_export_loads_with_the_plain_library(card, trained_run, tmp_path, run_readme):
    run = trained_run(card)
    out = tmp_path / "export"
    result = export(run, out, format="safetensors")
    assert sorted(result.files) == sorted(
        ["MODEL_CARD.md", "README.md", "export.json", "model.safetensors"]
        + (["backbone_config.json"] if LIBRARY[card] == "transformers" else []))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()["class_names"]) == load(run).class_names
    assert {"head.weight", "head.bias"} <= keys
    assert not any("lora_" in k for k in keys)  # merged, no adapter tensors
    if card == "clip-vit-b16":  # open_clip's own layout: visual.*, MultiheadAttention names
        assert all(k.startswith(("visual.", "head.")) for k in keys)
        assert "visual.transformer.resblocks.0.attn.in_proj_weight" in keys
    if card == "uni":
        assert "blocks.0.attn.qkv.weight" in keys

    # the README's code, run with cytotune unimportable, rebuilds the model with the plain library
    ns = run_readme(out)
    plain = ns["model"]
    assert type(plain.backbone).__module__.split(".")[0] == LIBRARY[card]
    model = load(run)
    _, x = _inputs(model)
    with torch.no_grad():
        np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), rtol=0, atol=1e-5)
    # ... and its preprocessing + predict give the run's own test predictions
    reference = pd.read_csv(run / "predictions.csv")
    got = pd.DataFrame(ns["predict"](list(reference["path"])))
    np.testing.assert_allclose(got.to_numpy(), reference[prob_columns(reference)].to_numpy(),
                               rtol=0, atol=1e-5)
    assert list(got.columns) == model.class_names


def test_readme_code_runs_in_a_fresh_interpreter_without_cytotune(trained_run, tmp_path):
    run = trained_run("uni")
    out = tmp_path / "export"
    export(run, out, format="safetensors")
    reference = pd.read_csv(run / "predictions.csv")
    script = tmp_path / "use.py"
    script.write_text("import sys\nsys.modules['cytotune'] = None  # not installed, as it were\n"
                      + readme_code(out / "README.md")
                      + f"\nimport json\nprint(json.dumps(predict({list(reference['path'])!r})))\n")
    done = subprocess.run([sys.executable, str(script)], cwd=out, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = pd.DataFrame(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got.to_numpy(), reference[prob_columns(reference)].to_numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("card", ["clip-vit-b16", "uni", "vit-b16"])
def test_onnx_export_matches_pytorch_in_onnxruntime(card, trained_run, tmp_path, run_readme):
    run = trained_run(card)
    out = tmp_path / "onnx"
    result = export(run, out, format="onnx")
    assert sorted(result.files) == ["MODEL_CARD.md", "README.md", "export.json", "model.onnx"]
    check = json.loads((out / "export.json").read_text())["onnx"]
    assert check["opset"] >= 17 and check["max_abs_diff_probabilities"] <= ONNX_ATOL
    model = load(run)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 4):  # dynamic batch axis
        pixels, x = _inputs(model, n, seed=n)
        logits, probs = session.run(["logits", "probabilities"],
                                    {"pixels": pixels.float().numpy()})  # 0..255, not normalised
        with torch.no_grad():
            ref = model(x)
        assert probs.shape == (n, 4)
        np.testing.assert_allclose(probs, ref.softmax(-1).numpy(), rtol=0, atol=ONNX_ATOL)
        np.testing.assert_allclose(logits, ref.numpy(), rtol=0, atol=1e-4)
    # the README's onnxruntime code reproduces the run's test predictions
    reference = pd.read_csv(run / "predictions.csv")
    got = pd.DataFrame(run_readme(out)["predict"](list(reference["path"])))
    np.testing.assert_allclose(got.to_numpy(), reference[prob_columns(reference)].to_numpy(),
                               rtol=0, atol=ONNX_ATOL)


def test_model_card_spread_over_seeds_and_licence(trained_run, tmp_path, capsys):
    runs = [trained_run("uni", seed=1), trained_run("uni", seed=2)]
    parser = argparse.ArgumentParser()
    commands = register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", *map(str, runs), "--out", str(tmp_path / "e")])
    assert commands["export"](args) == 0
    printed = capsys.readouterr().out
    assert "CC-BY-NC-ND-4.0" in printed and "gated" in printed
    card = (tmp_path / "e" / "MODEL_CARD.md").read_text()
    head = card[:1500]
    assert "Licence warning" in head and "CC-BY-NC-ND-4.0" in head and "non-commercial" in head
    assert "no distribution of adapted material" in head and "gated" in head
    assert "mean ± sd over 2 seeds" in card and "seeds 1, 2" in card
    accuracies = [json.loads((r / "metrics.json").read_text())["test"]["accuracy"] for r in runs]
    assert f"{np.mean(accuracies):.3f} ± {np.std(accuracies, ddof=1):.3f}" in card
    for text in ("2 image(s) per class", "LoRA (rank 2", "random initialisation",
                 "research", "Domain shift", "carcinoma", "Trainable parameters", "Test images"):
        assert text in card, text
    readme = (tmp_path / "e" / "README.md").read_text()
    assert "Licence warning" in readme[:800]

    # runs of different settings cannot share one card; an existing folder is kept
    with pytest.raises(ExportError, match="not seeds of one setting.*model"):
        export([runs[0], trained_run("clip-vit-b16")], tmp_path / "x")
    with pytest.raises(ExportError, match="not empty"):
        export(runs[0], tmp_path / "e", format="onnx")
    assert (tmp_path / "e" / "model.safetensors").exists()
    export(runs[0], tmp_path / "e", format="onnx", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "MODEL_CARD.md", "README.md", "export.json", "model.onnx"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
    assert commands["export"](parser.parse_args(
        ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "y")])) == 2
    assert "does not exist" in capsys.readouterr().out
