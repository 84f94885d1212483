"""`cytotune robustness RUN`: metrics of a run under fixed perturbations (issue 33, item 3)."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytotune.analysis import BootstrapSpec, Outcome, paired_intervals
from cytotune.data.perturb import perturb
from cytotune.inference import load
from cytotune.inference.robustness import (CLEAN, COLUMNS, evaluate_robustness, robustness_rows,
                                           robustness_table, run_test_images)
from cytotune.inference.robustness_cli import register
from cytotune.inference.robustness_output import OUTPUT_FILES
from cytotune.inference.run import read_run

SPEC = BootstrapSpec(resamples=200)  # the smallest allowed: fast, and enough to test the wiring


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cytotune")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = register(sub)
    args = parser.parse_args(list(argv))
    return commands[args.command](args)


@pytest.fixture(scope="module")
def run(trained_run) -> Path:
    return trained_run("clip-vit-b16", method="linear")


def _hand_ece(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE written out: equal-width confidence bins (lo, hi], weighted |accuracy -
    confidence| gaps."""
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = (predicted == labels).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def _hand_balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean([(predicted[labels == c] == c).mean() for c in np.unique(labels)]))


# ---- the numbers --------------------------------------------------------------------------
def test_severity_zero_and_the_clean_row_reproduce_the_runs_test_metrics(run):
    result = evaluate_robustness(run, kinds="blur,hed", severities="0,2", spec=SPEC)
    test = json.loads((run / "metrics.json").read_text())["test"]
    table = result.table
    assert list(table.columns) == list(COLUMNS)
    assert [(k, s) for k, s in zip(table["kind"], table["severity"])] == [
        (CLEAN, 0), ("blur", 0), ("blur", 2), ("hed", 0), ("hed", 2)]
    assert result.images == test["n"]
    for kind in (CLEAN, "blur", "hed"):
        row = table[(table["kind"] == kind) & (table["severity"] == 0)].iloc[0]
        assert row["accuracy"] == test["accuracy"]
        assert row["balanced_accuracy"] == test["balanced_accuracy"]
        assert row["ece"] == pytest.approx(test["ece"], abs=1e-6)
        assert row["balanced_accuracy_drop"] == 0 and row["balanced_accuracy_drop_low"] == 0
        assert row["balanced_accuracy_drop_high"] == 0 and row["ece_increase"] == 0
    assert result.run_test["accuracy"] == test["accuracy"]


def test_ece_matches_a_hand_computation():
    # by hand: two images at confidence 0.9 (one right) -> bin (0.867, 0.933], gap 0.4; two at
    # 0.62, both right -> bin (0.6, 0.667], gap 0.38; ECE = 0.5 * 0.4 + 0.5 * 0.38 = 0.39
    labels = np.array([0, 1, 0, 1])
    clean = np.array([[0.9, 0.1], [0.9, 0.1], [0.62, 0.38], [0.38, 0.62]])
    table = robustness_table(labels, {(CLEAN, 0): clean}, ["a", "b"], list("wxyz"), SPEC)
    assert table.loc[0, "ece"] == pytest.approx(0.39, abs=1e-6)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 300)
    table = robustness_table(labels, {(CLEAN, 0): probs.astype(np.float32)}, list("abcd"),
                             [str(i) for i in range(300)], SPEC)
    assert table.loc[0, "ece"] == pytest.approx(_hand_ece(labels, probs), abs=1e-5)


def test_metrics_under_a_perturbation_match_a_hand_computation(run):
    result = evaluate_robustness(run, kinds="noise", severities="4", spec=SPEC, batch_size=5)
    model = load(run, device="cpu")
    images = run_test_images(read_run(run), model.preprocessing)
    clean = model.predict_pixels(images.pixels).numpy()
    noisy = model.predict_pixels(perturb(images.pixels, "noise", 4, images.image_ids)).numpy()
    labels = images.labels
    row = result.table.iloc[1]
    assert (row["kind"], row["severity"], row["n"]) == ("noise", 4, len(labels))
    assert row["description"] == "Gaussian noise std 16/255"
    assert row["accuracy"] == pytest.approx((noisy.argmax(1) == labels).mean(), abs=1e-12)
    balanced = _hand_balanced_accuracy(labels, noisy.argmax(1))
    assert row["balanced_accuracy"] == pytest.approx(balanced, abs=1e-12)
    assert row["ece"] == pytest.approx(_hand_ece(labels, noisy), abs=1e-5)
    drop = _hand_balanced_accuracy(labels, clean.argmax(1)) - balanced
    assert row["balanced_accuracy_drop"] == pytest.approx(drop, abs=1e-12)
    assert row["ece_increase"] == pytest.approx(_hand_ece(labels, noisy) - _hand_ece(labels, clean),
                                                abs=1e-5)
    # the interval is the analysis package's paired one: clean vs perturbed, paired by image
    ids = tuple(images.image_ids)
    expected = paired_intervals([Outcome(labels, clean.argmax(1), 4, ids)],
                                [Outcome(labels, noisy.argmax(1), 4, ids)],
                                ["balanced_accuracy", "accuracy"], SPEC, key="robustness/noise/4")
    assert row["balanced_accuracy_drop_low"] == expected["balanced_accuracy"].low
    assert row["accuracy_drop_high"] == expected["accuracy"].high
    assert expected["accuracy"].basis.endswith("paired by image")


def test_two_evaluations_are_identical_whatever_the_batch_size(run):
    a = evaluate_robustness(run, kinds="hed,noise,brightness", severities="3", spec=SPEC,
                            batch_size=64)
    b = evaluate_robustness(run, kinds="hed,noise,brightness", severities="3", spec=SPEC,
                            batch_size=3)
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=False, atol=1e-6, rtol=0)
    assert a.table["balanced_accuracy"].tolist() == b.table["balanced_accuracy"].tolist()


def test_rows_for_a_sweep_are_plain_dicts(run):
    rows = robustness_rows(run, kinds=["jpeg"], severities=[1, 5], spec=SPEC)
    assert [(r["kind"], r["severity"]) for r in rows] == [(CLEAN, 0), ("jpeg", 1), ("jpeg", 5)]
    assert all(r["run_dir"] == str(run.resolve()) or r["run_dir"] == str(run) for r in rows)
    json.dumps(rows)  # plain values only
    assert all(type(r["accuracy"]) is float and type(r["severity"]) is int for r in rows)


# ---- the command --------------------------------------------------------------------------
def test_cli_writes_the_csv_figure_and_table(run, tmp_path, capsys):
    out = tmp_path / "rob"
    assert cli("robustness", str(run), "--kinds", "blur,scale", "--severities", "1-2", "--out",
               str(out), "--device", "cpu", "--resamples", "200", "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "blur sigma 1 px" in printed and "written to" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # no temporary file
    table = pd.read_csv(out / "robustness.csv")
    assert list(table.columns) == list(COLUMNS) and len(table) == 1 + 2 * 2
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert "| blur | 2 | blur sigma 1 px |" in (out / "robustness.md").read_text()
    marker = json.loads((out / "robustness.json").read_text())
    assert marker["tool"] == "cytotune robustness" and marker["images"] == table["n"][0]
    # an earlier robustness folder is updated in place
    assert cli("robustness", str(run), "--kinds", "jpeg", "--severities", "5", "--out", str(out),
               "--device", "cpu", "--resamples", "200", "--no-progress") == 0
    assert pd.read_csv(out / "robustness.csv")["kind"].tolist() == [CLEAN, "jpeg"]


def _one_error_line(capsys) -> str:
    out = capsys.readouterr().out.strip()
    assert out.startswith("error:") and "\n" not in out and "Traceback" not in out, out
    return out


def test_cli_refuses_bad_kinds_and_severities_in_one_line(run, tmp_path, capsys):
    out = tmp_path / "rob"
    assert cli("robustness", str(run), "--kinds", "blur,fog", "--out", str(out)) == 2
    assert "'fog'" in _one_error_line(capsys) and not out.exists()
    assert cli("robustness", str(run), "--severities", "2-7", "--out", str(out)) == 2
    assert "--severities" in _one_error_line(capsys) and not out.exists()
    assert cli("robustness", str(run), "--layout", "mlcc", "--out", str(out)) == 2
    assert "--layout goes with --data" in _one_error_line(capsys) and not out.exists()


def test_cli_refuses_a_bad_run_directory_in_one_line(tmp_path, synthetic_data, capsys):
    assert cli("robustness", str(tmp_path / "missing"), "--out", str(tmp_path / "o")) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert cli("robustness", str(synthetic_data), "--out", str(tmp_path / "o")) == 2
    assert "metrics.json" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_out_it_did_not_write_and_keeps_it(run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "robustness.csv").write_text("my own table\n")
    assert cli("robustness", str(run), "--kinds", "blur", "--out", str(mine)) == 2
    assert "did not write" in _one_error_line(capsys)
    assert (mine / "robustness.csv").read_text() == "my own table\n"
    assert cli("robustness", str(run), "--kinds", "blur", "--out", str(run / "rob")) == 2
    assert "inside the run directory" in _one_error_line(capsys)
    assert not (run / "rob").exists()


def test_a_failed_write_leaves_the_earlier_results_as_they_were(run, tmp_path, monkeypatch,
                                                                capsys):
    from cytotune.inference import robustness_output

    out = tmp_path / "rob"
    args = ("robustness", str(run), "--kinds", "blur", "--severities", "1", "--out", str(out),
            "--device", "cpu", "--resamples", "200", "--no-progress")
    assert cli(*args) == 0
    before = {name: (out / name).read_bytes() for name in OUTPUT_FILES}

    def full_disk(result, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(robustness_output, "draw_figure", full_disk)
    capsys.readouterr()
    assert cli(*args[:3], "jpeg", *args[4:]) == 2
    assert "No space left" in _one_error_line(capsys)
    assert {name: (out / name).read_bytes() for name in OUTPUT_FILES} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


def test_data_with_a_class_the_run_does_not_know_is_refused(run, synthetic_data, tmp_path,
                                                           capsys):
    other = tmp_path / "other"
    classes = sorted(p.name for p in synthetic_data.iterdir() if p.is_dir())
    for name in classes[:2]:
        shutil.copytree(synthetic_data / name, other / name)
    result = evaluate_robustness(run, data=other, kinds="blur", severities="1", spec=SPEC)
    assert result.images == sum(1 for _ in other.rglob("*.png"))  # a subset of the classes
    assert result.source == f"--data {other}"
    shutil.copytree(synthetic_data / classes[0], other / "unknown_class")
    assert cli("robustness", str(run), "--data", str(other), "--kinds", "blur", "--out",
               str(tmp_path / "o"), "--device", "cpu", "--no-progress") == 2
    assert "'unknown_class'" in _one_error_line(capsys)


def test_the_command_is_registered_with_its_defaults_shown():
    from cytotune.cli import build_parser

    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert "robustness" in commands
    assert "(default: all)" in commands["robustness"].format_help()


def test_feature_cache_gives_the_same_table_and_is_reused(run, tmp_path, monkeypatch):
    """With a cache dir, features of perturbed images are kept per (weights, image, kind,
    severity, stain): the table is the one computed without it, and a second evaluation on the
    same frozen backbone extracts nothing."""
    import cytotune.training.features as features

    plain = evaluate_robustness(run, kinds="noise,jpeg", severities="0,3", spec=SPEC)
    cached = evaluate_robustness(run, kinds="noise,jpeg", severities="0,3", spec=SPEC,
                                 cache_dir=tmp_path / "cache")
    pd.testing.assert_frame_equal(plain.table, cached.table, check_exact=False, rtol=0, atol=1e-6)
    import cytotune.data.perturb as perturb_module

    calls, perturbed = [], []
    original, original_perturb = features.extract_features, perturb_module.perturb
    monkeypatch.setattr(features, "extract_features",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(perturb_module, "perturb",
                        lambda *a, **k: perturbed.append(1) or original_perturb(*a, **k))
    again = evaluate_robustness(run, kinds="noise,jpeg", severities="0,3", spec=SPEC,
                                cache_dir=tmp_path / "cache")
    assert calls == [] and perturbed == []  # held features: nothing perturbed or extracted
    pd.testing.assert_frame_equal(cached.table, again.table)
