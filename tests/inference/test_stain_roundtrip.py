"""A run trained with --stain-norm predicts with the same normalisation, from its stain.json
alone (no target image on the predicting machine); configs and the CLI refuse bad settings in
one line; export says the normalisation is not inside the exported model."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

import cytotune
from cytotune.data import decode_resized
from cytotune.inference import load, predict
from cytotune.training.config import ConfigError, TrainConfig

from inference_helpers import prob_columns

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from test_stain import he_image, save  # noqa: E402  (the fixed H&E-like generator)

FAST = dict(steps=4, val_every=2, batch_size=8, linear_epochs=3, pretrained=False,
            num_workers=0, model="vit-b16-tiny", method="linear")


@pytest.fixture(scope="module")
def stain_data(tmp_path_factory) -> tuple[Path, Path]:
    """Two classes of H&E-like images stained lighter or heavier, one almost blank image among
    them (Macenko cannot normalise it), and a separate target image."""
    root = tmp_path_factory.mktemp("stain")
    for i in range(8):
        save(root / "data" / "light" / f"{i}.png", he_image(i, h_scale=0.7, e_scale=0.9))
        save(root / "data" / "heavy" / f"{i}.png", he_image(50 + i, h_scale=1.3, e_scale=1.1))
    save(root / "data" / "light" / "blank.png", np.full((64, 64, 3), 250, np.uint8))
    target = save(root / "target" / "target.png", he_image(99, size=96, h_scale=1.4))
    return root / "data", target


@pytest.fixture(scope="module")
def stain_run(stain_data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A trained run, its target moved away afterwards; returns the run and the target's pixels."""
    data, target = stain_data
    out = tmp_path_factory.mktemp("runs") / "macenko"
    cytotune.train(data=str(data), stain_norm="macenko", stain_target=str(target), out=str(out),
                   cache_dir=str(tmp_path_factory.mktemp("cache")), seed=1, **FAST)
    pixels = np.asarray(Image.open(target).convert("RGB"))
    shutil.move(str(target), str(target.with_name("gone.png")))  # prediction must not need it
    return out, pixels


def _by_hand(paths: list[Path], target_pixels: np.ndarray, size: int, resize: int,
             interpolation: str) -> torch.Tensor:
    """Decode and resize as training does, then torchstain's Macenko fitted on the target."""
    normaliser = NumpyMacenkoNormalizer()
    normaliser.fit(target_pixels)
    out = []
    for path in paths:
        pixels = decode_resized(path, resize, size, interpolation)
        if path.name != "blank.png":
            pixels = normaliser.normalize(pixels, stains=False)[0]
        out.append(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
    return torch.stack(out)


def test_predictions_apply_the_runs_normalisation_from_its_stain_json(stain_run, stain_data):
    run, target_pixels = stain_run
    stored = json.loads((run / "stain.json").read_text())
    assert stored["method"] == "macenko" and set(stored["params"]) == {"HERef", "maxCRef"}
    assert "stain.json" in json.loads((run / "manifest.json").read_text())["files"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stain_norm"]["unnormalised_images"] == 1  # the blank image, counted once
    model = load(run)
    assert model.stain is not None and model.stain.fingerprint == stored["fingerprint"]
    paths = sorted(stain_data[0].rglob("*.png"))
    pre = model.preprocessing
    hand = _by_hand(paths, target_pixels, pre.image_size, pre.effective_resize, pre.interpolation)
    np.testing.assert_array_equal(model.preprocess(paths).numpy(), hand.numpy())
    expected = model.predict_pixels(hand)
    torch.testing.assert_close(model.predict(paths).probs, expected, rtol=0, atol=0)
    frame = predict(run, stain_data[0], device="cpu", batch_size=5)
    by_path = frame.set_index("path").loc[[str(p) for p in paths]]
    np.testing.assert_allclose(by_path[prob_columns(frame)].to_numpy(), expected.numpy(),
                               rtol=0, atol=1e-6)
    # and the run's own test predictions were made on the same pixels
    reference = pd.read_csv(run / "predictions.csv")
    again = predict(run, run / "predictions.csv", device="cpu")
    np.testing.assert_allclose(again[prob_columns(again)].to_numpy(),
                               reference[prob_columns(reference)].to_numpy(), rtol=0, atol=1e-5)


def test_a_run_missing_or_mixing_its_stain_json_is_refused(stain_run, tmp_path):
    run, _ = stain_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "stain.json").unlink()
    with pytest.raises(ValueError, match="stain.json is missing"):
        load(copy)


def test_export_carries_the_parameters_and_says_they_are_not_in_the_model(stain_run, tmp_path):
    from cytotune.inference.export import export

    run, _ = stain_run
    result = export(run, tmp_path / "export", format="safetensors")
    folder = result.out_dir
    assert (folder / "stain.json").read_text() == (run / "stain.json").read_text()
    assert result.info["stain_normalisation"]["included_in_model"] is False
    for name in ("README.md", "MODEL_CARD.md"):
        assert "Stain normalisation is not included in this export" in (folder / name).read_text()


def test_config_refuses_unknown_methods_and_a_method_without_target():
    base = dict(data={"source": "somewhere"})
    with pytest.raises(ConfigError, match="data.stain_norm must be one of none, macenko, "
                                          "reinhard, got 'vahadane'"):
        TrainConfig.from_dict({**base, "data": {"source": "x", "stain_norm": "vahadane"}}).validate()
    with pytest.raises(ConfigError, match="data.stain_norm 'macenko' needs data.stain_target"):
        TrainConfig.from_dict({"data": {"source": "x", "stain_norm": "macenko"}}).validate()
    TrainConfig.from_dict({"data": {"source": "x", "stain_norm": "reinhard",
                                    "stain_target": "t.png"}}).validate()
    assert TrainConfig().data.stain_norm == "none" and TrainConfig().data.stain_target is None


def test_cli_refuses_a_target_without_stain_in_one_error_line(stain_data, tmp_path, capsys):
    from cytotune.cli import main

    blank = save(tmp_path / "blank.png", np.full((40, 40, 3), 250, np.uint8))
    code = main(["train", "--data", str(stain_data[0]), "--stain-norm", "macenko",
                 "--stain-target", str(blank), "--no-pretrained", "--model", "vit-b16-tiny",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                 "--no-progress"])
    out = capsys.readouterr().out.strip()
    assert code == 2
    assert out.startswith("error:") and len(out.splitlines()) == 1
    assert str(blank) in " ".join(out.split()) and "no stain found" in out
    assert not (tmp_path / "run").exists()


def test_train_help_shows_the_stain_options_and_their_defaults(capsys):
    from cytotune.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--stain-norm" in text and "--stain-target" in text
    entry = text.rsplit("--stain-norm STAIN_NORM", 1)[1]  # the option's help, after the usage
    assert "(default: none)" in entry.split("--stain-target STAIN_TARGET", 1)[0]
    assert "maps images to (default: none)" in text  # --stain-target's help


def test_runs_trained_together_in_a_group_normalise_like_a_run_alone(stain_data, tmp_path):
    """A sweep trains linear runs as one group over one shared decode: same stain.json, same
    count of unnormalised images and same test predictions as the run trained alone."""
    from cytotune.api import build_config
    from cytotune.training.group import plan_groups, run_training_group

    data, _ = stain_data
    target = save(tmp_path / "target.png", he_image(99, size=96, h_scale=1.4))
    configs = [build_config(data=str(data), stain_norm="macenko", stain_target=str(target),
                            out=str(tmp_path / f"group{i}"), seed=1, lr=lr,
                            cache_dir=str(tmp_path / "cache"), **FAST)
               for i, lr in ((1, 1e-3), (2, 3e-3))]
    assert plan_groups(configs, pack_size=8) == [[0, 1]]
    together = run_training_group(configs)
    alone = cytotune.train(data=str(data), stain_norm="macenko", stain_target=str(target),
                           out=str(tmp_path / "alone"), seed=1, cache_dir=None, **FAST)
    assert not isinstance(together[0], Exception)
    group_run, alone_run = tmp_path / "group1", tmp_path / "alone"
    assert (group_run / "stain.json").read_text() == (alone_run / "stain.json").read_text()
    assert together[0].metrics["stain_norm"] == alone.metrics["stain_norm"]
    np.testing.assert_allclose(together[0].predictions[prob_columns(alone.predictions)],
                               alone.predictions[prob_columns(alone.predictions)], atol=1e-5)


def test_robustness_of_a_stain_run_perturbs_before_normalising(stain_run, tmp_path):
    """Severity 0 of a stain-normalised run reproduces its test metrics: the robustness
    evaluation normalises (after perturbing) as training's decode did."""
    from cytotune.inference.robustness import evaluate_robustness

    out, _ = stain_run
    result = evaluate_robustness(out, kinds="hed", severities="0,2", cache_dir=tmp_path / "c")
    test = json.loads((out / "metrics.json").read_text())["test"]
    for _, row in result.table[result.table["severity"] == 0].iterrows():
        assert row["accuracy"] == test["accuracy"]
        assert row["balanced_accuracy"] == test["balanced_accuracy"]
