"""Issue 30 (items 6 and 7) and issue 31 (item 13): the report's figures hold every result of
its tables, all-data runs included, with intervals, the metric's baseline, variants in their
method's colour, legends that match what is drawn, figure filters, and PNG (200 dpi) + SVG."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from cytotune.experiments import ResultStore, make_report
from cytotune.experiments.report import select_best, summarize
from cytotune.experiments.report_figure_parts import class_sizes
from cytotune.experiments.report_figures import draw_shots_comparison, draw_shots_figure
from experiments_helpers import hand_record

SIZES = (12, 4, 4)  # test images per class: majority class 60 %, 1/C 33.3 %


def matrix(sizes=SIZES) -> list[list[int]]:
    """A confusion matrix whose row sums are ``sizes`` (all answers right)."""
    return [[n if i == j else 0 for j in range(len(sizes))] for i, n in enumerate(sizes)]


def demo_records() -> list[dict]:
    """demo_sweep's shape: linear and lora at 2 and 8 shots and on all data, 2 seeds; lora's
    all-data result the best. The linear probe has a second variant (select_on train-cv)."""
    records = []
    for method, base in (("linear", 0.50), ("lora", 0.55)):
        for shots in (2, 8, None):
            for seed in (1, 2):
                acc = base + (0.3 if shots is None else 0.02 * shots) + 0.02 * seed
                records.append(hand_record(f"{method}-{shots}-{seed}", sweep="demo",
                                           dataset="demo", backbone="enet", method=method,
                                           shots=shots, seed=seed, val=acc, test=acc,
                                           confusion_matrix=matrix()))
    return records


def store_of(tmp_path, records, name="r.sqlite") -> ResultStore:
    store = ResultStore(tmp_path / name)
    store.insert_many(records)
    return store


def summary_of(store: ResultStore, metrics=("accuracy",)) -> pd.DataFrame:
    return summarize(select_best(store.records(full=True)), list(metrics))


def data_lines(ax) -> list:
    """The labelled lines of a panel (baselines and reference lines included)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_demo_sweep_comparison_draws_every_all_data_result(tmp_path):
    store = store_of(tmp_path, demo_records())
    summary = summary_of(store)
    fig = draw_shots_comparison(summary, "demo", "accuracy")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["2", "8", "all"]
    all_x = ax.get_xticks()[-1]
    assert all_x > 8 * 2  # after a gap
    for method in ("linear", "lora"):
        mean = summary[(summary["method"] == method) & summary["shots"].isna()]["mean"].item()
        points = [p for p in fig.drawn.points if p["method"] == method and pd.isna(p["shots"])]
        assert len(points) == 1 and points[0]["mean"] == pytest.approx(mean)
        line = points[0]["line"]
        assert line in ax.get_lines()
        x, y = line.get_xdata(), line.get_ydata()
        assert any(abs(math.log2(xi / all_x)) < 0.2 and yi == pytest.approx(mean)
                   for xi, yi in zip(x, y))
        # with its error bar (mean ± std, 1 point here): a vertical segment at that x
        segments = [s for c in ax.collections for s in c.get_segments()]
        assert any(s[0][0] == pytest.approx(x[0]) == s[1][0]
                   and (s[0][1], s[1][1]) == pytest.approx((mean - 1.0, mean + 1.0))
                   for s in segments)
    close(fig)
    # lora's all-data result, the best, is in lora's own figure too
    fig = draw_shots_figure(summary, "demo", "lora", "accuracy")
    assert any(pd.isna(p["shots"]) and p["method"] == "lora" for p in fig.drawn.points)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-1] == "all"
    close(fig)


def _cells(frame: pd.DataFrame) -> set[tuple]:
    def norm(v):
        return None if pd.isna(v) else float(v)

    return {(r.sweep, r.dataset, r.backbone, r.method, r.variant or "", norm(r.shots),
             norm(r.fraction), r.metric) for r in frame.itertuples()}


def mixed_records() -> list[dict]:
    """A shots sweep (two methods, a zero-shot run of a backbone without a curve too), a
    data-fraction sweep, a sweep run on all data only, and a zero-shot-only sweep."""
    records = demo_records()
    records.append(hand_record("zs-enet", sweep="demo", dataset="demo", backbone="enet",
                               method="zero-shot", val=0.3, test=0.3, confusion_matrix=matrix()))
    records.append(hand_record("zs-other", sweep="demo", dataset="demo", backbone="other",
                               method="zero-shot", val=0.3, test=0.2, confusion_matrix=matrix()))
    for method in ("linear", "lora"):
        for fraction in (10.0, 100.0):
            for seed in (1, 2):
                acc = 0.6 + fraction / 1000 + (0.05 if method == "lora" else 0)
                records.append(hand_record(f"f-{method}-{fraction}-{seed}", sweep="frac",
                                           dataset="demo", backbone="enet", method=method,
                                           fraction=fraction, seed=seed, val=acc, test=acc,
                                           confusion_matrix=matrix()))
    for dataset in ("demo", "second"):
        for backbone in ("enet", "other"):
            for seed in (1, 2):
                records.append(hand_record(f"t1-{dataset}-{backbone}-{seed}", sweep="table1",
                                           dataset=dataset, backbone=backbone, seed=seed,
                                           val=0.7, test=0.7 + 0.01 * seed,
                                           confusion_matrix=matrix()))
    records.append(hand_record("zs-only", sweep="zs", dataset="second", backbone="enet",
                               method="zero-shot", val=0.4, test=0.4, confusion_matrix=matrix()))
    return records


def test_every_result_of_the_tables_is_a_drawn_point(tmp_path):
    from cytotune.experiments.report_figures import draw_figures

    store = store_of(tmp_path, mixed_records())
    metrics = ("accuracy", "balanced_accuracy")
    summary = summary_of(store, metrics)
    drawn: set[tuple] = set()
    names = []
    for stem, fig in draw_figures(summary, summary.iloc[0:0], metrics,
                                  class_sizes(store.records(full=True))):
        names.append(stem)
        for p in fig.drawn.points:
            # each recorded point is on a line of the panel of its data set
            (ax,) = [a for a in fig.axes if a.get_visible() and a.get_title() == p["dataset"]]
            line = p["line"]
            assert line in ax.get_lines()
            assert any(x == pytest.approx(p["x"]) and y == pytest.approx(p["mean"])
                       for x, y in zip(line.get_xdata(), line.get_ydata()))
            drawn |= _cells(pd.DataFrame([p]).assign(metric=p["metric"]))
        close(fig)
    assert _cells(summary) <= drawn, _cells(summary) - drawn
    # the all-data-only and zero-shot-only sweeps get a figure of their own
    assert "results__table1__accuracy" in names and "results__zs__accuracy" in names
    # and the report's files say the same: the CSV beside each figure lists its points (every
    # reported metric drawn: by default only the headline metric is)
    report = make_report(store, tmp_path / "out", metrics=metrics, figure_metrics=metrics)
    frames = [pd.read_csv(p.with_suffix(".csv")) for p in report.figures]
    written = pd.concat(frames, ignore_index=True)
    written["variant"] = written["variant"].astype(object).where(written["variant"].notna(), "")
    assert _cells(report.summary) <= _cells(written)
    # by default the headline metric alone is drawn, every one of its cells
    default = make_report(store, tmp_path / "default", metrics=metrics)
    written = pd.concat([pd.read_csv(p.with_suffix(".csv")) for p in default.figures
                         if not p.name.startswith("ranking__")], ignore_index=True)
    written["variant"] = written["variant"].astype(object).where(written["variant"].notna(), "")
    assert set(written["metric"]) == {"accuracy"}
    headline = default.summary[default.summary["metric"] == "accuracy"]
    assert _cells(headline) <= _cells(written)


def variant_records() -> list[dict]:
    """Two methods on one backbone; linear in two variants (optim.steps 10 / 20), as val and
    train-cv are in the shipped store; the linear probe on all data in another sweep."""
    records = []
    for seed in (1, 2):
        for shots in (1, 4):
            for method, steps in (("linear", 10), ("linear", 20), ("lora", 10)):
                rec = hand_record(f"{method}{steps}-{shots}-{seed}", sweep="fs", dataset="d",
                                  backbone="b", method=method, shots=shots, seed=seed,
                                  val=0.5, test=0.4 + 0.05 * shots + steps / 1000,
                                  confusion_matrix=matrix())
                rec["config"]["optim"]["steps"] = steps
                records.append(rec)
        records.append(hand_record(f"all-{seed}", sweep="all", dataset="d", backbone="b",
                                   seed=seed, val=0.8, test=0.8, confusion_matrix=matrix()))
    return records


def legend_pairs(fig) -> list[tuple[str, object]]:
    (legend,) = fig.legends
    return [(t.get_text(), h) for t, h in zip(legend.get_texts(), legend.legend_handles)]


def same_look(a, b) -> bool:
    return (to_rgba(a.get_color()) == to_rgba(b.get_color())
            and a.get_linestyle() == b.get_linestyle() and a.get_marker() == b.get_marker())


def test_variants_share_their_methods_colour_and_legends_match_the_lines(tmp_path):
    summary = summary_of(store_of(tmp_path, variant_records()))
    fig = draw_shots_comparison(summary, "fs", "accuracy")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in data_lines(ax)}
    ten, twenty = lines["linear [optim.steps=10]"], lines["linear [optim.steps=20]"]
    lora = lines["lora [optim.steps=10]"]
    assert to_rgba(ten.get_color()) == to_rgba(twenty.get_color())  # one method, one colour
    assert ten.get_linestyle() != twenty.get_linestyle() and ten.get_marker() != twenty.get_marker()
    assert to_rgba(lora.get_color()) != to_rgba(ten.get_color())
    for text, handle in legend_pairs(fig):
        if text in lines:
            assert same_look(handle, lines[text]), text
    assert set(lines) <= {text for text, _ in legend_pairs(fig)}
    close(fig)
    # the linear probe's all-data reference line: the legend shows its colour and dash
    fig = draw_shots_figure(summary, "fs", "lora", "accuracy")
    ax = fig.axes[0]
    (reference,) = [line for line in data_lines(ax) if line.get_label().startswith("linear probe")]
    assert reference.get_ydata()[0] == pytest.approx(80.0)
    (entry,) = [h for t, h in legend_pairs(fig) if t == reference.get_label()]
    assert same_look(entry, reference) and reference.get_linestyle() == ":"
    close(fig)


@pytest.mark.parametrize("metric, value, name", [
    ("accuracy", 60.0, "majority class"), ("balanced_accuracy", 100 / 3, "chance (1/C)"),
    ("macro_f1", 100 / 3, "chance (1/C)"), ("auroc", 50.0, "chance"), ("ece", None, None)])
def test_each_metric_draws_its_baseline_with_its_value(tmp_path, metric, value, name):
    store = store_of(tmp_path, demo_records())
    sizes = class_sizes(store.records(full=True))
    assert sizes == {"demo": SIZES}
    fig = draw_shots_comparison(summary_of(store, [metric]), "demo", metric, classes=sizes)
    ax = fig.axes[0]
    if value is None:
        assert fig.drawn.baselines == {}
        assert not [t for t in ax.texts if "chance" in t.get_text() or "majority" in t.get_text()]
    else:
        drawn, label, line = fig.drawn.baselines["demo"]
        assert drawn == pytest.approx(value) and label == name
        assert line in ax.get_lines() and line.get_ydata()[0] == pytest.approx(value)
        assert f"{name}: {value:.1f}" in [t.get_text() for t in ax.texts]
        assert f"{name}: {value:.1f}" in [t for t, _ in legend_pairs(fig)]
    close(fig)


def test_bars_are_the_interval_where_the_summary_has_one_else_the_std(tmp_path):
    summary = summary_of(store_of(tmp_path, demo_records()))

    def bar_segments(fig) -> list[tuple[float, float]]:
        return sorted((round(float(s[0][1]), 6), round(float(s[1][1]), 6))
                      for c in fig.axes[0].collections for s in c.get_segments())

    fig = draw_shots_comparison(summary, "demo", "accuracy")
    expected = sorted((round(m - s, 6), round(m + s, 6))
                      for m, s in zip(summary["mean"], summary["std"]))
    assert bar_segments(fig) == expected
    assert fig.drawn.note == "bars: mean ± std over seeds"
    assert "bars: mean ± std over seeds" in [t for t, _ in legend_pairs(fig)]
    close(fig)
    with_ci = summary.assign(ci_low=summary["mean"] - 7.0, ci_high=summary["mean"] + 3.0,
                             ci_basis="95 % interval, bootstrap over seeds and test images")
    fig = draw_shots_comparison(with_ci, "demo", "accuracy")
    assert bar_segments(fig) == sorted((round(m - 7.0, 6), round(m + 3.0, 6))
                                       for m in summary["mean"])
    note = "bars: 95 % interval, bootstrap over seeds and test images"
    assert fig.drawn.note == note and note in fig._suptitle.get_text()
    assert note in [t for t, _ in legend_pairs(fig)]
    assert {p["interval"] for p in fig.drawn.points} == {"ci"}
    close(fig)
    # an interval missing for some cells: those fall back to the std, and the note says so
    with_ci.loc[with_ci["shots"].isna(), ["ci_low", "ci_high"]] = np.nan
    fig = draw_shots_comparison(with_ci, "demo", "accuracy")
    assert fig.drawn.note.endswith("where computed, else mean ± std over seeds")
    close(fig)


def test_figures_are_png_at_200_dpi_and_svg(tmp_path):
    from PIL import Image

    report = make_report(store_of(tmp_path, demo_records()), tmp_path / "out",
                         metrics=["accuracy"])
    assert report.figures
    for png in report.figures:
        assert png.suffix == ".png"
        with Image.open(png) as image:
            assert min(image.info["dpi"]) >= 199.5
            assert image.size[0] >= 1000
        svg = png.with_suffix(".svg")
        assert svg in report.files and svg.stat().st_size > 1000
        assert ET.parse(svg).getroot().tag.endswith("svg")
        assert png.with_suffix(".csv") in report.files
    page = report.html.read_text()
    assert page.count("data:image/png;base64,") == len(report.figures)


def test_methods_and_backbones_filters_select_what_the_figures_draw(tmp_path, capsys):
    from cytotune.experiments.cli import main

    records = demo_records() + [
        hand_record(f"other-{shots}-{seed}", sweep="demo", dataset="demo", backbone="other",
                    method="lora", shots=shots, seed=seed, val=0.5, test=0.5,
                    confusion_matrix=matrix()) for shots in (2, 8) for seed in (1, 2)]
    store = store_of(tmp_path, records)
    report = make_report(store, tmp_path / "out", metrics=["accuracy"], methods=["lora"],
                         backbones=["enet"])
    names = {p.name for p in report.figures}
    assert names == {"shots__demo__lora__accuracy.png"}  # one method: no comparison
    points = pd.read_csv(tmp_path / "out" / "figures" / "shots__demo__lora__accuracy.csv")
    assert set(points["method"]) == {"lora"} and set(points["backbone"]) == {"enet"}
    assert set(report.summary["method"]) == {"linear", "lora"}  # tables keep everything
    # an unknown name: one error line naming the option and the known names, nothing written
    with pytest.raises(ValueError, match=r"--methods: unknown method lorra; known: linear, lora"):
        make_report(store, tmp_path / "bad", methods=["lorra"])
    assert not (tmp_path / "bad" / "report.html").exists()
    assert not list((tmp_path / "bad").rglob("*.*"))
    code = main(["report", str(store.path), "--out", str(tmp_path / "cli"), "--backbones",
                 "enet,vit", "--metrics", "accuracy"])
    printed = capsys.readouterr().out
    assert code == 2
    assert printed.strip().splitlines() == [
        "error: --backbones: unknown backbone vit; known: enet, other"]
    assert main(["report", str(store.path), "--out", str(tmp_path / "cli"), "--methods",
                 "linear", "lora", "--backbones", "other", "--metrics", "accuracy"]) == 0
    capsys.readouterr()
    assert {p.name for p in (tmp_path / "cli" / "figures").glob("*.png")} == {
        "shots__demo__lora__accuracy.png"}
