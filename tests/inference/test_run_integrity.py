"""A run's files are checked against the digests recorded when it was written (manifest.json):
a damaged weight file is refused with one line naming it, never answered with a broken model;
a non-finite probability is never status ``ok``."""
from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import cytotune
from cytotune.inference import RunDirError, load, predict
NON_FINITE = "error: non-finite probabilities"



def cli(*argv: str) -> int:
    """``cytotune predict ...`` as the CLI runs it."""
    from cytotune.cli import main

    return main(list(argv))


def _copy(run: Path, tmp_path: Path, name: str = "run") -> Path:
    dest = tmp_path / name
    shutil.copytree(run, dest)
    return dest


def _damage(path: Path, n: int = 32, byte: int = 0x7E) -> None:
    """Overwrite ``n`` bytes at the start of a safetensors file's data, its header intact (0x7E:
    finite float32 values, so the head's NaN/inf check passes)."""
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    data[start:start + n] = bytes([byte]) * n
    path.write_bytes(bytes(data))


def _images(synthetic_data: Path, k: int = 4) -> list[Path]:
    return sorted(synthetic_data.rglob("*.png"))[:k]


def test_cli_predict_refuses_a_head_damaged_after_training(trained_run, synthetic_data,
                                                           tmp_path, capsys):
    """The issue's case: 32 bytes of head.safetensors overwritten, header intact."""
    run = _copy(trained_run("uni", method="linear"), tmp_path)
    _damage(run / "head.safetensors")
    out = tmp_path / "preds.csv"
    assert cli("predict", str(run), str(synthetic_data / "normal"), "--out", str(out),
               "--device", "cpu") == 2
    printed = capsys.readouterr().out
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in printed, printed
    assert "head.safetensors" in errors[0] and "sha256" in errors[0]
    assert not out.exists()
    with pytest.raises(RunDirError, match=r"head\.safetensors was changed or damaged"):
        cytotune.load(run)


@pytest.mark.parametrize("name", ["adapter.safetensors", "head.safetensors"])
def test_load_refuses_a_damaged_weight_file_of_a_lora_run(trained_run, tmp_path, name):
    run = _copy(trained_run("clip-vit-b16"), tmp_path)
    _damage(run / name, n=4)
    with pytest.raises(RunDirError, match=rf"{name.replace('.', '[.]')} was changed or damaged"):
        load(run)


def test_edited_metrics_or_config_are_refused(trained_run, tmp_path):
    # swapping two class names would silently swap two predicted classes
    run = _copy(trained_run("uni", method="linear"), tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["class_names"][:2] = metrics["class_names"][1::-1]
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(RunDirError, match=r"metrics\.json was changed or damaged"):
        load(run)
    run = _copy(trained_run("uni", method="linear"), tmp_path, "config")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("seed: 1", "seed: 7"))
    with pytest.raises(RunDirError, match=r"config\.yaml was changed or damaged"):
        load(run)


def test_weights_not_written_with_the_run_are_refused(trained_run, tmp_path):
    run = _copy(trained_run("uni", method="linear"), tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["files"]["head.safetensors"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirError, match=r"head\.safetensors is not listed in .*manifest\.json"):
        load(run)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match=r"manifest\.json is not readable JSON"):
        load(run)


def test_a_run_written_before_manifests_loads_with_a_warning(trained_run, tmp_path, caplog):
    run = _copy(trained_run("uni", method="linear"), tmp_path)
    with caplog.at_level(logging.WARNING, logger="cytotune"):
        load(run)  # an intact run with its manifest: checked, no warning
    assert not [r for r in caplog.records if "manifest" in r.getMessage()]
    (run / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="cytotune"):
        model = load(run)
    assert model.num_classes == 4
    assert any("manifest.json" in r.getMessage() and "without checking" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_non_finite_probabilities_are_never_ok(trained_run, synthetic_data, tmp_path):
    run = trained_run("uni", method="linear")
    model = load(run)
    with torch.no_grad():  # an overflowing head: two classes at +inf make the softmax NaN
        model.head.bias[:2] = float("inf")
    images = _images(synthetic_data)
    frame = predict(run, images[0].parent, model=model, out=tmp_path / "p.csv")
    assert (frame["status"] == NON_FINITE).all()
    assert (frame["predicted"] == "").all()
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
    assert np.isnan(probs).all()
