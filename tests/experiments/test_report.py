"""Report: lr chosen on validation (never on test), mean±std over seeds, tables, figures, HTML."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cytotune.experiments import ResultStore, make_report, select_best, summarize
from experiments_helpers import hand_record


def _store(tmp_path, records):
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(records)
    return store


def test_lr_is_chosen_on_validation_not_test(tmp_path):
    # per seed: lr 1e-2 is best on validation but worst on test; a test-based choice would
    # report 0.90 and 0.95, the study's choice reports 0.60 and 0.70
    records = [
        hand_record("s1-lo", seed=1, lr=1e-3, val=0.70, test=0.90),
        hand_record("s1-hi", seed=1, lr=1e-2, val=0.80, test=0.60),
        hand_record("s2-lo", seed=2, lr=1e-3, val=0.50, test=0.95),
        hand_record("s2-hi", seed=2, lr=1e-2, val=0.55, test=0.70),
    ]
    store = _store(tmp_path, records)
    selected = select_best(store.records(full=True))
    assert sorted(selected["run_id"]) == ["s1-hi", "s2-hi"]
    summary = summarize(selected, ["accuracy"])
    row = summary.iloc[0]
    assert row["mean"] == pytest.approx(65.0) and row["std"] == pytest.approx(5.0)  # ddof=0
    assert row["seeds"] == 2 and row["lrs"] == "0.01,0.01"
    assert summarize(selected, ["accuracy"], ddof=1).iloc[0]["std"] == pytest.approx(
        np.std([60.0, 70.0], ddof=1))
    # the subject is the selection, not the statistics: cells as mean ± std (no intervals)
    report = make_report(store, tmp_path / "out", metrics=("accuracy",), intervals=None)
    (table,) = report.tables.values()
    assert table.loc["d", "b"] == "65.00±5.00"
    assert "Average" not in table.index  # one data set: nothing to average (issue 30)


def test_ties_go_to_lower_validation_loss_then_smaller_lr(tmp_path):
    records = [
        # seed 1: equal val accuracy, the larger lr has the lower validation loss
        hand_record("1a", seed=1, lr=1e-3, val=0.8, val_loss=0.9, test=0.1),
        hand_record("1b", seed=1, lr=1e-2, val=0.8, val_loss=0.4, test=0.2),
        # seed 2: equal val accuracy, no loss recorded: the smaller lr
        hand_record("2a", seed=2, lr=1e-2, val=0.8, test=0.3),
        hand_record("2b", seed=2, lr=1e-4, val=0.8, test=0.4),
        hand_record("2c", seed=2, lr=1e-1, val=0.7, test=0.9),
    ]
    selected = select_best(_store(tmp_path, records).records(full=True))
    assert set(selected["run_id"]) == {"1b", "2b"}


def test_selection_is_per_setting_and_seed(tmp_path):
    records = []
    for dataset in ("d1", "d2"):
        for backbone in ("b1", "b2"):
            for shots in (1, 4):
                for seed in (1, 2, 3):
                    for lr, val in ((1e-3, 0.4), (1e-2, 0.6)):
                        records.append(hand_record(
                            f"{dataset}{backbone}{shots}{seed}{lr}", dataset=dataset,
                            backbone=backbone, method="lora", shots=shots, seed=seed, lr=lr,
                            val=val, test=0.1 * seed + (0.5 if lr == 1e-2 else 0.0)))
    selected = select_best(_store(tmp_path, records).records(full=True))
    assert len(selected) == 2 * 2 * 2 * 3
    assert set(selected["lr"]) == {1e-2}


def test_table1_layout_average_row_and_markdown(tmp_path):
    records = []
    for d_i, dataset in enumerate(("bcfc", "mlcc")):
        for b_i, backbone in enumerate(("clip", "uni", "vit")):
            for seed in (1, 2, 3):
                acc = 0.5 + 0.1 * d_i + 0.05 * b_i + 0.01 * seed
                records.append(hand_record(f"{dataset}{backbone}{seed}", sweep="exp1",
                                           dataset=dataset, backbone=backbone, seed=seed,
                                           val=acc, test=acc))
    store = _store(tmp_path, records)
    # the subject is the layout: cells as mean ± std (intervals: test_report_layout.py)
    report = make_report(store, tmp_path / "out", metrics=("accuracy", "macro_f1"),
                         intervals=None)
    table = report.tables["exp1__linear__all__accuracy"]
    assert list(table.index) == ["bcfc", "mlcc", "Average"]
    assert list(table.columns) == ["clip", "uni", "vit"]
    expected = np.array([0.51, 0.52, 0.53]) * 100 + 10 + 5  # mlcc, uni
    assert table.loc["mlcc", "uni"] == f"{expected.mean():.2f}±{expected.std():.2f}"
    assert table.loc["Average", "clip"] == f"{(52.0 + 62.0) / 2:.2f}"
    assert "exp1__linear__all__macro_f1" in report.tables
    md = (tmp_path / "out" / "tables" / "exp1__linear__all__accuracy.md").read_text()
    assert "| dataset | clip | uni | vit |" in md and "| mlcc |" in md
    csv = pd.read_csv(tmp_path / "out" / "tables" / "exp1__linear__all__accuracy.csv", index_col=0)
    assert csv.loc["mlcc", "uni"] == table.loc["mlcc", "uni"]
    page = report.html.read_text()
    assert table.loc["mlcc", "uni"] in page and "Time spent" in page
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == len(records) and runs["selected"].sum() == 2 * 3 * 3


def test_figures_with_linear_baseline_and_sota_line(tmp_path):
    records = []
    for dataset in ("mlcc", "hicervix"):
        for backbone in ("clip", "uni"):
            for seed in (1, 2):
                records.append(hand_record(f"lin{dataset}{backbone}{seed}", sweep="exp1",
                                           dataset=dataset, backbone=backbone, seed=seed,
                                           val=0.7, test=0.7))
                for shots in (1, 2, 4):
                    records.append(hand_record(
                        f"lora{dataset}{backbone}{seed}{shots}", sweep="exp2", method="lora",
                        dataset=dataset, backbone=backbone, shots=shots, seed=seed,
                        val=0.5 + 0.05 * shots, test=0.5 + 0.05 * shots))
    for fraction in (5.0, 50.0, 100.0):
        for seed in (1, 2):
            records.append(hand_record(f"f{fraction}{seed}", sweep="exp3", method="lora",
                                       dataset="hicervix", backbone="clip-l14", fraction=fraction,
                                       seed=seed, val=0.6 + fraction / 1000, test=0.6 + fraction / 1000))
    store = _store(tmp_path, records)
    report = make_report(store, tmp_path / "out", metrics=("accuracy",),
                         sota={"hicervix": 75.0})
    names = {p.name for p in report.figures}
    assert {"shots__exp2__lora__accuracy.png", "fractions__exp3__lora__accuracy.png",
            "results__exp1__accuracy.png"} <= names
    page = report.html.read_text()
    assert page.count("data:image/png;base64,") == len(report.figures)
    assert "<img" in page and "src='figures/" not in page  # self-contained
    fraction_rows = report.summary[report.summary["fraction"].notna()
                                   & (report.summary["metric"] == "accuracy")]
    assert list(fraction_rows.sort_values("fraction")["mean"].round(2)) == [60.5, 65.0, 70.0]
    # what the figures draw (issue 31, item 13): the shots figure's axes, lines and points
    from matplotlib.colors import to_rgba

    from cytotune.experiments.report_figures import draw_fractions, draw_shots_figure

    fig = draw_shots_figure(report.summary, "exp2", "lora", "accuracy")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["mlcc", "hicervix"]
    for ax in axes:
        assert ax.get_ylabel() == "test accuracy (%)"
        assert ax.get_xlabel() == "training images per class (shots)"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
        curves = {line.get_label(): line for line in ax.get_lines()
                  if line.get_marker() not in ("None", "", None) and line.get_label()[0] != "_"}
        assert set(curves) == {"clip", "uni"}
        for line in curves.values():
            assert list(np.round(line.get_ydata(), 2)) == [55.0, 60.0, 70.0]
        # each backbone's linear probe on all data (sweep exp1): dotted, in its colour, at 70
        refs = [line for line in ax.get_lines() if line.get_label().startswith("linear probe")]
        assert len(refs) == 2 and all(r.get_linestyle() == ":" for r in refs)
        assert {to_rgba(r.get_color()) for r in refs} == {to_rgba(c.get_color())
                                                          for c in curves.values()}
        assert all(float(r.get_ydata()[0]) == pytest.approx(70.0) for r in refs)
    assert len(fig.drawn.points) == 2 * 2 * 3
    import matplotlib.pyplot as plt

    plt.close(fig)
    # the fractions figure: one line through 5, 50 and 100 %, and the state of the art at 75
    fig = draw_fractions(report.summary, "exp3", "lora", "accuracy", sota={"hicervix": 75.0})
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert ax.get_title() == "hicervix" and ax.get_xlabel() == "training data used (%)"
    assert [(p["fraction"], round(p["mean"], 2)) for p in fig.drawn.points] == [
        (5.0, 60.5), (50.0, 65.0), (100.0, 70.0)]
    (sota,) = [line for line in ax.get_lines() if line.get_label().startswith("HierSwin")]
    assert sota.get_label() == "HierSwin (state of the art): 75.0"
    assert float(sota.get_ydata()[0]) == 75.0
    plt.close(fig)
    # the linear probe on all data, run alone (exp1), is a figure of its own: every cell drawn
    drawn = pd.read_csv(tmp_path / "out" / "figures" / "results__exp1__accuracy.csv")
    assert sorted(zip(drawn["dataset"], drawn["backbone"], drawn["mean"].round(2))) == [
        ("hicervix", "clip", 70.0), ("hicervix", "uni", 70.0), ("mlcc", "clip", 70.0),
        ("mlcc", "uni", 70.0)]
    # without a state-of-the-art value the line is left out and the page says so
    plain = make_report(store, tmp_path / "plain", metrics=("accuracy",))
    assert "No state-of-the-art reference given" in plain.html.read_text()


def test_linear_baselines_in_the_shots_figure(tmp_path):
    from cytotune.experiments.report import _linear_baselines

    records = [hand_record("l1", sweep="exp1", dataset="d", backbone="b", seed=1, test=0.8,
                           val=0.8),
               hand_record("l2", sweep="exp1", dataset="d", backbone="b", seed=2, test=0.6,
                           val=0.8)]
    summary = summarize(select_best(_store(tmp_path, records).records(full=True)), ["accuracy"])
    assert _linear_baselines(summary, "accuracy", "exp2") == {("d", "b", ""): pytest.approx(70.0)}


def test_bad_metrics_and_missing_store(tmp_path):
    store = _store(tmp_path, [hand_record("a")])
    with pytest.raises(ValueError, match="unknown metric"):
        make_report(store, tmp_path / "out", metrics=("accuracy", "speed"))
    with pytest.raises(FileNotFoundError):
        make_report(tmp_path / "missing.sqlite", tmp_path / "out")
    empty = make_report(ResultStore(tmp_path / "empty.sqlite"), tmp_path / "empty")
    assert empty.tables == {} and "no finished runs" in empty.html.read_text()


def test_other_metrics_by_option(tmp_path):
    records = [hand_record("a", seed=1, val=0.9, test=0.8), hand_record("b", seed=2, val=0.9, test=0.6)]
    report = make_report(_store(tmp_path, records), tmp_path / "out",
                         metrics=("balanced_accuracy", "auroc", "ece"))
    assert set(report.summary["metric"]) == {"balanced_accuracy", "auroc", "ece"}
    ece = report.summary[report.summary["metric"] == "ece"].iloc[0]
    assert ece["mean"] == pytest.approx(5.0) and ece["std"] == pytest.approx(0.0)
    assert not math.isnan(report.summary[report.summary["metric"] == "auroc"].iloc[0]["mean"])


def test_zero_shot_is_the_0_shot_point_of_the_shots_figure(tmp_path):
    from cytotune.experiments.report import shots_points

    records = []
    for seed in (1, 2):
        for shots in (1, 4):
            records.append(hand_record(f"lora{seed}{shots}", sweep="vl", method="lora",
                                       dataset="mlcc", backbone="clip", shots=shots, seed=seed,
                                       val=0.6, test=0.5 + 0.1 * shots / 4))
    records.append(hand_record("zs-clip", sweep="vl", method="zero-shot", dataset="mlcc",
                               backbone="clip", seed=1, val=0.3, test=0.35))
    # a zero-shot run of a backbone without a curve is not drawn
    records.append(hand_record("zs-uni", sweep="vl", method="zero-shot", dataset="mlcc",
                               backbone="uni", seed=1, val=0.3, test=0.2))
    report = make_report(_store(tmp_path, records), tmp_path / "out")
    points = shots_points(report.summary, "vl", "lora", "accuracy")
    assert list(points["shots"]) == [0, 1, 4] and set(points["backbone"]) == {"clip"}
    assert points.iloc[0]["mean"] == pytest.approx(35.0)
    names = {p.name for p in report.figures}
    assert "shots__vl__lora__balanced_accuracy.png" in names  # the headline metric's figure
    drawn = pd.read_csv(tmp_path / "out" / "figures" / "shots__vl__lora__balanced_accuracy.csv")
    star = drawn[drawn["method"] == "zero-shot"]
    assert list(star["backbone"]) == ["clip"] and list(star["x"]) == [0.0]
    assert list(star["mean"]) == [pytest.approx(35.0)]
    assert not any("zero-shot" in n for n in names)  # no curve of its own
    # zero-shot still gets its cell (one run, no learning rate to choose): a row of the
    # sweep's methods table, under "zero-shot"
    assert report.tables["vl__mlcc__clip__accuracy"].loc["zero-shot", "zero-shot"] == \
        "35.00±0.00"
