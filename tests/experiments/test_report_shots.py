"""Issue 17, items 5, 6, 8 and the page's opening summary (7): the methods-compared figure of a
shots sweep, one y range per data set across shots figures, the chance line, "1 shot", the best
method per data set and shots, and `cytotune report` listing every file it wrote."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cytotune.experiments import ResultStore, make_report
from cytotune.experiments.report import (best_table, chance_level, class_counts,
                                         draw_shots_comparison, draw_shots_figure, shots_ylims)
from cytotune.experiments.report_figure_parts import class_sizes
from experiments_helpers import hand_record

CLASSES = {"mlcc": 4, "bcfc": 2}
SHOTS = (1, 2, 4, 8)


def confusion(classes: int) -> list[list[int]]:
    return [[1 if i == j else 0 for j in range(classes)] for i in range(classes)]


def shots_sweep_records() -> list[dict]:
    """A shots sweep ``fs`` with two methods (linear, lora) on two backbones and two data sets,
    seeds 1-3, a zero-shot run per backbone, and the linear probe on all data in sweep ``all``.
    On mlcc lora is ahead of linear; on bcfc linear is, and its accuracy runs much higher."""
    records = []
    for dataset, classes in CLASSES.items():
        high = dataset == "bcfc"
        for b_i, backbone in enumerate(("clip", "uni")):
            for seed in (1, 2, 3):
                for method in ("linear", "lora"):
                    ahead = (method == "lora") != high
                    for shots in SHOTS:
                        acc = (0.30 + (0.40 if high else 0.0) + 0.02 * shots + 0.05 * ahead
                               + 0.01 * b_i + 0.01 * seed)
                        records.append(hand_record(
                            f"{dataset}-{backbone}-{method}-{shots}-{seed}", sweep="fs",
                            dataset=dataset, backbone=backbone, method=method, shots=shots,
                            seed=seed, val=acc, test=acc, confusion_matrix=confusion(classes)))
                records.append(hand_record(
                    f"{dataset}-{backbone}-zs-{seed}", sweep="fs", dataset=dataset,
                    backbone=backbone, method="zero-shot", seed=seed, val=0.3,
                    test=0.28 + 0.02 * b_i, confusion_matrix=confusion(classes)))
                records.append(hand_record(
                    f"{dataset}-{backbone}-all-{seed}", sweep="all", dataset=dataset,
                    backbone=backbone, seed=seed, val=0.9, test=0.85 + 0.01 * seed,
                    confusion_matrix=confusion(classes)))
    return records


@pytest.fixture(scope="module")
def shots_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("shots")
    store = ResultStore(root / "r.sqlite")
    store.insert_many(shots_sweep_records())
    # balanced accuracy heads the tables (the default); the figures this file inspects are of
    # accuracy, so both are drawn (by default only the headline metric is)
    return store, make_report(store, root / "out",
                              figure_metrics=["balanced_accuracy", "accuracy"])


def test_a_shots_sweep_with_two_methods_gets_a_comparison_figure(shots_report):
    _, report = shots_report
    names = [p.name for p in report.figures]
    assert "comparison__fs__accuracy.png" in names
    assert (names.index("comparison__fs__accuracy.png")
            < names.index("shots__fs__lora__accuracy.png"))
    # a sweep of one method has none
    assert "comparison__all__accuracy.png" not in names
    page = report.html.read_text()
    assert "data-figure='comparison__fs__accuracy.png'" in page


def test_comparison_figure_draws_the_methods_on_one_axis(shots_report):
    store, report = shots_report
    classes = class_sizes(store.records(full=True))  # test images per class
    ylims = shots_ylims(report.summary, "accuracy", classes)
    # the report's summary carries intervals (bars: ci); without them the bars are mean ± std
    plain = report.summary.drop(columns=["ci_low", "ci_high", "ci_basis", "ci_level"])
    for summary, kind in ((report.summary, "ci"), (plain, "std")):
        _check_comparison_figure(summary, kind, ylims, classes)


def _check_comparison_figure(summary, kind, ylims, classes) -> None:
    """The comparison figure of ``summary``: both methods per axis, zero-shot stars, a bar of
    ``kind`` ("ci": the summary's interval, "std": mean ± std) at every point, the chance line."""
    fig = draw_shots_comparison(summary, "fs", "accuracy", ylims, classes)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["mlcc", "bcfc"]
    for ax, dataset in zip(axes, ("mlcc", "bcfc")):
        labels = [line.get_label() for line in ax.get_lines()]
        for method in ("linear", "lora"):  # both methods on the same axis
            for backbone in ("clip", "uni"):
                assert f"{method} · {backbone}" in labels
        # log-scale shots; linear between 0 and 1 for the zero-shot stars
        assert ax.get_xscale() == "symlog"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "4", "8"]
        stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
        assert {tuple(line.get_xdata()) for line in stars} == {(0,)}
        assert sorted(round(float(line.get_ydata()[0]), 2) for line in stars) == [28.0, 30.0]
        # an error bar (the interval, else mean ± std) at every point: 4 lines x 4 shots, and
        # 2 stars
        points = [p for p in fig.drawn.points if p["dataset"] == dataset]
        assert len(points) == 4 * len(SHOTS) + 2
        segments = [seg for c in ax.collections for seg in c.get_segments()]
        assert len(segments) == len(points)
        for p in points:  # the seeds differ on the curves; zero-shot scores the same each seed
            assert p["interval"] == kind and p["low"] <= p["mean"] <= p["high"]
            assert pd.isna(p["shots"]) or p["low"] < p["mean"] < p["high"]
            cell = summary[(summary["metric"] == "accuracy") & (summary["sweep"] == "fs")
                           & (summary["dataset"] == dataset)
                           & (summary["backbone"] == p["backbone"])
                           & (summary["method"] == p["method"])
                           & (summary["shots"].isna() if pd.isna(p["shots"])
                              else summary["shots"] == p["shots"])]
            (mean,) = cell["mean"]
            low, high = ((cell["ci_low"].item(), cell["ci_high"].item()) if kind == "ci"
                         else (mean - cell["std"].item(), mean + cell["std"].item()))
            assert (p["mean"], p["low"], p["high"]) == pytest.approx((mean, low, high))
        # the dashed chance line at 1/C (identity confusion matrices: the majority class too)
        chance = [line for line in ax.get_lines() if line.get_linestyle() == "--"
                  and len(set(line.get_ydata())) == 1]
        assert [float(line.get_ydata()[0]) for line in chance] == [pytest.approx(
            100.0 / CLASSES[dataset])]
        assert ax.get_ylim() == pytest.approx(ylims[dataset])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_shots_figures_share_one_y_range_per_data_set(shots_report):
    store, report = shots_report
    classes = class_sizes(store.records(full=True))  # test images per class
    ylims = shots_ylims(report.summary, "accuracy", classes)
    assert set(ylims) == {"mlcc", "bcfc"}
    # each range holds every method's mean ± std, the zero-shot points, the all-data probe and
    # chance, and no more than a margin beyond
    for dataset, (low, high) in ylims.items():
        rows = report.summary[(report.summary["dataset"] == dataset)
                              & (report.summary["metric"] == "accuracy")]
        assert low <= min((rows["mean"] - rows["std"]).min(), 100.0 / CLASSES[dataset])
        assert high >= (rows["mean"] + rows["std"]).max()
        assert 0.0 <= low and high <= 100.0
    assert ylims["mlcc"] != ylims["bcfc"]
    import matplotlib.pyplot as plt

    ranges = {}
    for method in ("linear", "lora"):
        fig = draw_shots_figure(report.summary, "fs", method, "accuracy", ylims, classes)
        ranges[method] = {ax.get_title(): ax.get_ylim() for ax in fig.axes if ax.get_visible()}
        plt.close(fig)
    assert ranges["linear"] == ranges["lora"]
    assert ranges["lora"]["bcfc"] == pytest.approx(ylims["bcfc"])
    # without the shared ranges each figure would pick its own (the old behaviour)
    fig = draw_shots_figure(report.summary, "fs", "lora", "accuracy")
    own = {ax.get_title(): ax.get_ylim() for ax in fig.axes if ax.get_visible()}
    plt.close(fig)
    assert own["mlcc"] != pytest.approx(ylims["mlcc"])


def test_chance_level_and_the_number_of_classes(shots_report):
    store, _ = shots_report
    assert class_counts(store.records(full=True)) == CLASSES
    assert chance_level("accuracy", 4) == pytest.approx(25.0)
    assert chance_level("balanced_accuracy", 2) == pytest.approx(50.0)
    assert chance_level("auroc", 7) == pytest.approx(50.0)
    assert chance_level("macro_f1", 4) is None and chance_level("ece", 4) is None
    assert chance_level("accuracy", None) is None
    # multi-label runs and runs without a confusion matrix give no chance line
    multi = hand_record("m", dataset="ml", confusion_matrix=confusion(3))
    multi["metrics"]["task"] = "multi_label"
    plain = hand_record("p", dataset="plain")
    other = ResultStore(Path(store.path).with_name("other.sqlite"))
    other.insert_many([multi, plain])
    assert class_counts(other.records(full=True)) == {}


def test_one_shot_is_singular_in_tables_figures_and_page(shots_report):
    _, report = shots_report
    table = report.tables["fs__mlcc__clip__accuracy"]  # methods x training sizes (issue 30)
    assert "1 shot" in table.columns and "2 shots" in table.columns
    assert "1 shots" not in table.columns
    best = report.best["accuracy"]
    assert ("mlcc", "1 shot per class") in best.index
    out = report.out_dir
    texts = [report.html, out / "tables.md", out / "best__accuracy.md", out / "best__accuracy.csv",
             *(out / "tables").glob("*")]
    for path in texts:
        assert "1 shots" not in path.read_text(), path


def test_the_page_opens_with_the_best_method_per_data_set_and_shots(shots_report):
    _, report = shots_report
    best = report.best["accuracy"]
    assert list(best.index.names) == ["dataset", "training data"]
    assert [s for d, s in best.index if d == "mlcc"] == [
        "no training images", "1 shot per class", "2 shots per class", "4 shots per class",
        "8 shots per class", "all training data"]
    row = best.loc[("mlcc", "4 shots per class")]
    # lora ahead on mlcc, uni ahead of clip by 1 point at every seed (resolved); seeds 1-3
    # give 45, 46, 47: ± 0.82 (population std), a bootstrap interval over seeds of [45, 47]
    assert row["verdict"] == "best (resolved)" and row["best"] == "lora · uni (fs)"
    assert row["test accuracy (%) [interval]"] == "46.00 [45.00, 47.00]" and row["seeds"] == 3
    assert row["tied within the interval"] == ""
    assert row["runner-up"] == "lora · clip (fs)"
    assert row["lead (points) [interval]"] == "1.00 [1.00, 1.00]"
    cell = report.summary[(report.summary["metric"] == "accuracy")
                          & (report.summary["method"] == "lora")
                          & (report.summary["backbone"] == "uni")
                          & (report.summary["dataset"] == "mlcc")
                          & (report.summary["shots"] == 4)]
    assert cell["std"].item() == pytest.approx(0.8165, abs=1e-4)
    assert best.loc[("bcfc", "4 shots per class"), "best"] == "linear · uni (fs)"
    assert best.loc[("mlcc", "no training images"), "best"] == "zero-shot · uni (fs)"
    # the all-data probe scores the same on both backbones at every seed: an exact tie, no win
    tie = best.loc[("mlcc", "all training data")]
    assert tie["test accuracy (%) [interval]"] == "87.00 [86.00, 88.00]"
    assert tie["verdict"] == "no winner: tied"
    assert tie["best"] == "linear · clip (all) (equal highest mean)"
    assert tie["tied within the interval"] == "linear · uni (all)"
    assert tie["lead (points) [interval]"] == "0.00 [0.00, 0.00]"
    page = report.html.read_text()
    first = page.index("<h2")
    # the headline metric (the first; balanced accuracy by default, issue 30) opens the page
    assert page[first:].startswith("<h2 id='best-balanced_accuracy'>Best method per data set "
                                   "and training data: test balanced accuracy</h2>")
    assert page.index("data-table='best__balanced_accuracy'") < page.index("id='figures'") \
        < page.index("id='tables'") < page.index("data-table='best__accuracy'")
    csv = pd.read_csv(report.out_dir / "best__accuracy.csv", index_col=[0, 1])
    assert csv.loc[("mlcc", "4 shots per class"), "best"] == "lora · uni (fs)"


def test_best_table_prefers_the_lowest_ece_and_names_variants():
    summary = pd.DataFrame([
        {"sweep": "s", "dataset": "d", "backbone": "b", "method": m, "shots": 2,
         "fraction": float("nan"), "variant": v, "metric": "ece", "mean": mean, "std": 1.0,
         "seeds": 3, "lrs": ""}
        for m, v, mean in (("lora", "", 9.0), ("linear", "", 4.0), ("linear", "optim.steps=10", 6.0))])
    summary["shots"] = summary["shots"].astype("Int64")
    table = best_table(summary, "ece")
    row = table.loc[("d", "2 shots per class")]
    assert row["best"] == "linear · b" and row["test ECE (%)"] == "4.00±1.00"
    assert row["runner-up"] == "linear · b [optim.steps=10]" and row["lead (points)"] == "2.00"


def test_report_lists_every_table_and_figure_it_wrote(shots_report, tmp_path, capsys):
    from cytotune.experiments.cli import main

    store, _ = shots_report
    out = tmp_path / "cli"
    assert main(["report", str(store.path), "--out", str(out), "--metrics", "accuracy",
                 "macro_f1", "--figure-metrics", "accuracy", "macro_f1"]) == 0
    printed = capsys.readouterr().out
    tables = sorted((out / "tables").glob("*.csv"))
    figures = sorted((out / "figures").glob("*.png"))
    assert len(tables) > 4 and len(figures) >= 6
    # --figure-metrics draws the second metric too (by default only the headline is drawn)
    assert {"comparison__fs__accuracy.png", "comparison__fs__macro_f1.png"} <= \
        {p.name for p in figures}
    for path in [out / "report.html", *tables, *figures, out / "best__accuracy.csv",
                 out / "best__macro_f1.csv", out / "tables.md", out / "runs.csv"]:
        assert str(path) in printed, path
    assert f"{len(tables)} tables" in printed and f"{len(figures)} figures" in printed
    # the opening summary is on screen too
    assert "best method per data set and training data (accuracy)" in printed
    assert "lora · uni (fs)" in printed


def test_report_lines_name_each_file_once(shots_report):
    _, report = shots_report
    lines = report.lines()
    assert lines[0] == f"HTML page: {report.html}"
    text = "\n".join(lines)
    for stem, title in report.titles.items():
        assert f"{report.out_dir / 'tables' / stem}.csv (.md): {title}" in text
    for path in report.figures:
        assert text.count(str(path)) == 1
    for path in report.files:
        if path.suffix != ".md" or path.name in ("tables.md",):
            assert str(path) in text, path
