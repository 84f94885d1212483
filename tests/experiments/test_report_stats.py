"""The report's statistics on stores built by hand: intervals per cell, paired comparisons, and
a "best" that names a winner only when the paired interval excludes 0."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytotune.analysis import BootstrapSpec
from cytotune.experiments import ResultStore
from cytotune.experiments.report_stats import (NOT_RESOLVED, RESOLVED, add_intervals,
                                               best_summary, pairwise_table, run_outcomes,
                                               fingerprints_by_run)
from cytotune.experiments.report_tables import select_best, summarize
from experiments_helpers import hand_record

SPEC = BootstrapSpec(resamples=1000, seed=0)


def _matrix(right: int, n: int) -> list[list[int]]:
    """A 2-class confusion matrix with ``right`` of ``n`` images right, balanced classes."""
    half = n // 2
    right_0, right_1 = right // 2, right - right // 2
    return [[right_0, half - right_0], [n - half - right_1, right_1]]


def _records(method: str, shots: int, rights: list[int], n: int):
    out = []
    for seed, right in enumerate(rights, start=1):
        cm = _matrix(right, n)
        acc = (cm[0][0] + cm[1][1]) / n
        out.append(hand_record(f"{method}-{shots}-{seed}", method=method, shots=shots,
                               seed=seed, test=acc, confusion_matrix=cm, n=n))
    return out


def _analysed_store(tmp_path):
    records = (
        # 1 shot: an exact tie, seed for seed
        _records("lora", 1, [120, 130, 125, 118, 127], 200)
        + _records("linear", 1, [120, 130, 125, 118, 127], 200)
        # 2 shots: a clear lead (90 % vs 60 % on 200 images, every seed)
        + _records("lora", 2, [180, 178, 182, 179, 181], 200)
        + _records("linear", 2, [120, 122, 118, 121, 119], 200)
        # 4 shots: a small lead on few images that the data cannot resolve
        + _records("lora", 4, [31, 29, 33, 30, 32], 50)
        + _records("linear", 4, [30, 30, 31, 29, 30], 50))
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(records)
    return store


@pytest.fixture
def analysed(tmp_path):
    store = _analysed_store(tmp_path)
    full = store.records(full=True)
    selected = select_best(full)
    summary = summarize(selected, ["accuracy"])
    outcomes = run_outcomes(full, store.predictions())
    summary = add_intervals(summary, selected, outcomes, SPEC)
    pairwise = pairwise_table(summary, selected, outcomes, fingerprints_by_run(full), SPEC,
                              "accuracy")
    return summary, pairwise


def test_every_cell_has_an_interval_around_its_mean(analysed):
    summary, _ = analysed
    assert summary["ci_low"].notna().all() and summary["ci_high"].notna().all()
    assert (summary["ci_low"] <= summary["mean"]).all()
    assert (summary["mean"] <= summary["ci_high"]).all()
    assert set(summary["ci_basis"]) == {"seeds x test images"}
    # few test images: a wider interval than with many
    width = (summary["ci_high"] - summary["ci_low"]).to_numpy()
    four = (summary["shots"] == 4).to_numpy()
    assert width[four].min() > width[~four].max()


def test_paired_table_spells_out_what_is_resolved(analysed):
    _, pairwise = analysed
    by_sample = pairwise.set_index("training data")
    tie = by_sample.loc["1 shot per class"]
    # known by their confusion matrices only: images resampled independently per run
    assert tie["basis"].startswith("seeds (paired) x test images (unpaired")
    assert tie["difference"] == 0.0 and tie["low"] < 0 < tie["high"]
    assert tie["verdict"] == NOT_RESOLVED and tie["wilcoxon p"] == 1.0
    lead = by_sample.loc["2 shots per class"]
    assert lead["better"].startswith("lora") and lead["verdict"] == RESOLVED
    assert lead["difference"] == pytest.approx(100 * (np.mean([180, 178, 182, 179, 181])
                                                      - np.mean([120, 122, 118, 121, 119])) / 200)
    assert lead["low"] > 0 and lead["wilcoxon p"] == pytest.approx(0.0625)
    assert lead["per seed"] == "1:+30.00 2:+28.00 3:+32.00 4:+29.00 5:+31.00"
    small = by_sample.loc["4 shots per class"]
    assert small["better"].startswith("lora") and small["difference"] > 0
    assert small["verdict"] == NOT_RESOLVED and small["low"] < 0 < small["high"]


def test_best_names_a_winner_only_when_resolved(analysed):
    summary, pairwise = analysed
    best = best_summary(summary, pairwise, "accuracy").reset_index().set_index("training data")
    tie = best.loc["1 shot per class"]
    assert tie["verdict"].startswith("no winner") and "linear" in tie["tied within the interval"]
    assert tie["best"].endswith("(equal highest mean)")  # an exact tie names no leader
    assert "lora" not in tie["tied within the interval"]
    resolved = best.loc["2 shots per class"]
    assert resolved["verdict"] == "best (resolved)" and resolved["best"].startswith("lora")
    assert resolved["tied within the interval"] == ""
    unresolved = best.loc["4 shots per class"]
    assert unresolved["verdict"].startswith("no winner")
    assert unresolved["best"].startswith("lora") and "highest mean" in unresolved["best"]
    assert unresolved["tied within the interval"].startswith("linear")


def test_runs_on_other_test_images_are_not_paired(tmp_path):
    records = _records("lora", 2, [180, 178, 182, 179, 181], 200) + \
        _records("linear", 2, [120, 122, 118, 121, 119], 200)
    for r in records:
        r["metrics"]["fingerprints"] = {"test_data": "A" if r["method"] == "lora" else "B"}
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(records)
    full = store.records(full=True)
    selected = select_best(full)
    summary = summarize(selected, ["accuracy"])
    outcomes = run_outcomes(full, store.predictions())
    pairwise = pairwise_table(summary, selected, outcomes, fingerprints_by_run(full), SPEC,
                              "accuracy")
    assert pairwise.empty


def test_runs_with_per_image_predictions_are_paired_by_image(tmp_path):
    rng = np.random.default_rng(0)
    images = [f"/d/{i}.png" for i in range(80)]
    records = []
    for seed in range(1, 6):
        labels = rng.integers(0, 2, 80)
        predicted = np.where(rng.random(80) < 0.8, labels, 1 - labels)
        for method in ("lora", "linear"):  # the same predictions: an exact tie, image by image
            record = hand_record(f"{method}-{seed}", method=method, shots=2, seed=seed,
                                 test=float((labels == predicted).mean()), n=80)
            record["predictions"] = {"images": images, "classes": ["a", "b"],
                                     "labels": labels.tolist(), "predicted": predicted.tolist()}
            records.append(record)
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(records)
    kept = store.predictions()
    assert set(kept) == {r["run_id"] for r in records}
    assert kept["lora-3"]["images"] == images and kept["lora-3"]["classes"] == ["a", "b"]
    assert kept["lora-3"]["labels"].tolist() == records[4]["predictions"]["labels"]
    full = store.records(full=True)
    selected = select_best(full)
    summary = summarize(selected, ["accuracy", "balanced_accuracy"])
    outcomes = run_outcomes(full, kept)
    assert outcomes["lora-1"].image_ids == tuple(images)
    summary = add_intervals(summary, selected, outcomes, SPEC)
    pairwise = pairwise_table(summary, selected, outcomes, fingerprints_by_run(full), SPEC,
                              "balanced_accuracy")
    (row,) = pairwise.itertuples(index=False)
    assert row.basis == "seeds x test images, paired by image"
    assert (row.difference, row.low, row.high) == (0.0, 0.0, 0.0)
    best = best_summary(summary, pairwise, "balanced_accuracy")
    assert best.iloc[0]["verdict"].startswith("no winner")



def test_the_report_states_intervals_pairs_and_only_resolved_winners(tmp_path):
    from cytotune.experiments import make_report

    store = _analysed_store(tmp_path)
    report = make_report(store.path, tmp_path / "out", metrics=("accuracy",),
                         intervals=BootstrapSpec(resamples=500, level=0.9, seed=3))
    best = report.best["accuracy"].reset_index().set_index("training data")
    assert best.loc["2 shots per class", "verdict"] == "best (resolved)"
    assert best.loc["1 shot per class", "verdict"].startswith("no winner")
    assert best.loc["4 shots per class", "verdict"].startswith("no winner")
    stems = [s for s in report.tables if s.startswith("paired__")]
    assert stems == ["paired__d__1_shot_per_class__accuracy", "paired__d__2_shots_per_class__accuracy",
                     "paired__d__4_shots_per_class__accuracy"]
    assert "90% interval" in report.titles[stems[0]]
    paired = pd.read_csv(tmp_path / "out" / "paired.csv")
    assert list(paired["verdict"]) == [NOT_RESOLVED, RESOLVED, NOT_RESOLVED]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert {"ci_low", "ci_high", "ci_basis", "ci_level"} <= set(summary.columns)
    assert (summary["ci_level"] == 0.9).all()
    page = report.html.read_text()
    assert "90% percentile bootstrap, 500 resamples, random seed 3" in page
    assert "tied within the interval" in page
    text = (tmp_path / "out" / "tables.md").read_text()
    assert "90% percentile bootstrap, 500 resamples" in text
    # the same store, the same options: the same intervals (seeded), whatever else is reported
    again = make_report(store.path, tmp_path / "again", metrics=("accuracy", "macro_f1"),
                        intervals=BootstrapSpec(resamples=500, level=0.9, seed=3))
    first = report.summary.set_index(["shots", "method"])[["ci_low", "ci_high"]]
    second = again.summary[again.summary["metric"] == "accuracy"] \
        .set_index(["shots", "method"])[["ci_low", "ci_high"]]
    pd.testing.assert_frame_equal(first, second)


def test_without_intervals_the_report_keeps_mean_and_std(tmp_path):
    from cytotune.experiments import make_report

    report = make_report(_analysed_store(tmp_path).path, tmp_path / "out", metrics=("accuracy",),
                         intervals=None)
    assert "ci_low" not in report.summary
    assert not [s for s in report.tables if s.startswith("paired__")]
    assert report.best["accuracy"].columns[0] == "best"  # the spread-only summary


def test_report_command_options_for_intervals(tmp_path, capsys):
    from cytotune.cli import main

    store = _analysed_store(tmp_path)
    assert main(["report", str(store.path), "--out", str(tmp_path / "o"), "--metrics", "accuracy",
                 "--resamples", "200", "--level", "0.8", "--boot-seed", "4"]) == 0
    assert "80% percentile bootstrap, 200 resamples, random seed 4" in \
        (tmp_path / "o" / "report.html").read_text()
    for bad in (["--level", "1.5"], ["--resamples", "20"], ["--boot-seed", "-1"]):
        with pytest.raises(SystemExit):
            main(["report", str(store.path), "--out", str(tmp_path / "x"), *bad])
        assert bad[0] in capsys.readouterr().err


def test_a_sweep_over_three_training_sizes_gets_a_ranking_and_its_diagram(tmp_path):
    from cytotune.experiments import make_report

    store = _analysed_store(tmp_path)
    assert not [s for s in make_report(store.path, tmp_path / "two", metrics=("accuracy",),
                                       intervals=BootstrapSpec(resamples=200)).tables
                if s.startswith("ranking__")]  # two settings: compared paired, not ranked
    store.insert_many(_records("knn", 1, [100] * 5, 200) + _records("knn", 2, [150] * 5, 200)
                      + _records("knn", 4, [20] * 5, 50))
    report = make_report(store.path, tmp_path / "out", metrics=("accuracy",),
                         intervals=BootstrapSpec(resamples=200))
    (stem,) = [s for s in report.tables if s.startswith("ranking__")]
    table = report.tables[stem]
    # ranks per size: 1 shot lora = linear (1.5 each), knn 3; 2 and 4 shots lora, knn, linear
    # at 2 shots (150 > 120) and lora, linear, knn at 4 (20 < 30)
    assert list(table.index) == ["lora · b", "linear · b", "knn · b"]
    assert table["average rank"].tolist() == ["1.17", "2.17", "2.67"]
    assert "Friedman" in report.titles[stem]
    (figure,) = [p for p in report.figures if p.name.startswith("ranking__")]
    assert figure.with_suffix(".svg").is_file()


def test_an_outcome_that_disagrees_with_the_recorded_metrics_is_not_used(tmp_path):
    # e.g. a run tested on held-out domains: its metrics are in-domain, its predictions are not
    record = hand_record("a", test=0.9, n=4, confusion_matrix=[[2, 0], [0, 2]])
    record["predictions"] = {"images": ["w", "x", "y", "z"], "classes": ["p", "q"],
                             "labels": [0, 0, 1, 1], "predicted": [0, 1, 1, 1]}  # 0.75 right
    other = hand_record("b", test=0.75, n=4, confusion_matrix=[[1, 1], [0, 2]])
    other["predictions"] = dict(record["predictions"])
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many([record, other])
    full = store.records(full=True)
    outcomes = run_outcomes(full, store.predictions())
    assert "a" not in outcomes  # neither its predictions (0.75) nor its matrix (1.0) give 0.9
    assert outcomes["b"].image_ids == ("w", "x", "y", "z")
