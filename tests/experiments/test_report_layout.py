"""Issue 30, items 6 and 8: the report's tables (one per data set and backbone, methods as rows
and training sizes as columns; a learning-curve table of a one-method sweep; Table 1 only for a
one-method, one-size sweep), cells as ``mean [low, high]`` where the summary has intervals and
``mean±std`` otherwise, ``all`` instead of ``<NA>``, the page's index of tables, and balanced
accuracy as the default headline metric."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from cytotune.experiments import ResultStore, make_report
from cytotune.experiments.report_layout import cell_words, sweep_tables, table1
from cytotune.experiments.report_tables import DEFAULT_METRICS, display_shots, fmt_cell
from experiments_helpers import hand_record
from test_report_shots import shots_sweep_records


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    store = ResultStore(root / "r.sqlite")
    store.insert_many(shots_sweep_records())
    return make_report(store, root / "out")


def _summary(rows: list[dict], intervals: bool) -> pd.DataFrame:
    """A hand-made long-form summary (the frame ``summarize`` returns), with the lead's interval
    columns added by hand when ``intervals``."""
    base = {"sweep": "s", "dataset": "d", "backbone": "b", "fraction": math.nan, "variant": "",
            "metric": "balanced_accuracy", "std": 2.0, "seeds": 5, "lrs": ""}
    frame = pd.DataFrame([{**base, **r} for r in rows])
    frame["shots"] = frame["shots"].astype("Int64")
    if intervals:
        frame["ci_low"] = frame["mean"] - 4.0
        frame["ci_high"] = frame["mean"] + 3.0
        frame["ci_basis"] = "hierarchical bootstrap over seeds and test images"
    return frame


METHOD_ROWS = [{"method": "zero-shot", "shots": None, "mean": 30.0},
               {"method": "linear", "shots": 1, "mean": 50.0},
               {"method": "linear", "shots": 4, "mean": 60.0},
               {"method": "linear", "shots": None, "mean": 80.0},
               {"method": "lora", "shots": 1, "mean": 55.0},
               {"method": "lora", "shots": 4, "mean": 70.5}]


def test_cells_are_mean_and_interval_where_there_is_one_else_mean_and_std():
    assert fmt_cell(62.5, 3.1) == "62.50±3.10"
    assert fmt_cell(62.5, 3.1, 55.25, 70.0) == "62.50 [55.25, 70.00]"
    assert fmt_cell(62.5, 3.1, math.nan, 70.0) == "62.50±3.10"  # half an interval is none
    assert fmt_cell(math.nan, 1.0, 1.0, 2.0) == ""


@pytest.mark.parametrize("intervals", [False, True])
def test_methods_table_rows_columns_and_cells(intervals):
    summary = _summary(METHOD_ROWS, intervals)
    (made,) = sweep_tables(summary, pd.DataFrame(), pd.DataFrame(), "s", "balanced_accuracy",
                           ["d"], ["b"])
    assert made.stem == "s__d__b__balanced_accuracy"
    table = made.table
    # zero-shot first; columns are training sizes in order, all data last
    assert list(table.index) == ["zero-shot", "linear", "lora"]
    assert list(table.columns) == ["zero-shot", "1 shot", "4 shots", "all"]
    if intervals:
        assert table.loc["lora", "4 shots"] == "70.50 [66.50, 73.50]"
        assert table.loc["zero-shot", "zero-shot"] == "30.00 [26.00, 33.00]"
        assert "mean [interval: hierarchical bootstrap over seeds and test images]" in \
            made.heading
        assert "±" not in made.heading
    else:
        assert table.loc["lora", "4 shots"] == "70.50±2.00"
        assert "mean±std over seeds" in made.heading
    assert table.loc["lora", "all"] == "" and table.loc["linear", "zero-shot"] == ""
    assert "test balanced accuracy (%)" in made.heading


def test_heading_names_the_level_when_the_summary_carries_it_and_cells_without_one():
    summary = _summary(METHOD_ROWS, True)
    summary["ci_level"] = 0.9
    summary.loc[summary["method"] == "zero-shot", ["ci_low", "ci_high"]] = math.nan
    words = cell_words(summary)
    assert words.startswith("mean [90 % interval: hierarchical bootstrap")
    assert words.endswith("mean±std over seeds where a cell has no interval")
    (made,) = sweep_tables(summary, pd.DataFrame(), pd.DataFrame(), "s", "balanced_accuracy",
                           ["d"], ["b"])
    assert made.table.loc["zero-shot", "zero-shot"] == "30.00±2.00"
    assert made.table.loc["linear", "1 shot"] == "50.00 [46.00, 53.00]"


def test_a_shots_sweep_gets_one_table_per_data_set_and_backbone(report, tmp_path):
    stems = [s for s in report.tables if s.endswith("__accuracy") and "balanced" not in s]
    # fs compares methods: 2 data sets x 2 backbones; the all-data sweep is Table 1
    assert stems == ["fs__mlcc__clip__accuracy", "fs__mlcc__uni__accuracy",
                     "fs__bcfc__clip__accuracy", "fs__bcfc__uni__accuracy",
                     "all__linear__all__accuracy"]
    table = report.tables["fs__mlcc__uni__accuracy"]
    assert list(table.index) == ["zero-shot", "linear", "lora"]
    assert list(table.columns) == ["trainable parameters", "zero-shot", "1 shot", "2 shots",
                                   "4 shots", "8 shots"]
    # lora on mlcc, uni, 4 shots: seeds 1-3 give 45, 46, 47, a bootstrap interval over seeds of
    # [45, 47] (the best table agrees); zero-shot scores 30 at every seed
    assert table.loc["lora", "4 shots"] == "46.00 [45.00, 47.00]"
    assert table.loc["zero-shot", "zero-shot"] == "30.00 [30.00, 30.00]"
    assert table.loc["linear", "trainable parameters"] == "100"
    assert "Average" not in table.index  # methods are never averaged together
    # no tiny tables: no per-(method, shots) tables are left
    assert not any(re.search(r"__\d+shot__", s) for s in report.tables)
    # the all-data sweep (one method, one size, two data sets) keeps the Table 1 layout
    one = report.tables["all__linear__all__accuracy"]
    assert list(one.index) == ["mlcc", "bcfc", "Average"] and list(one.columns) == ["clip", "uni"]
    assert one.loc["Average", "uni"] == "87.00"
    assert "Average: mean over data sets" in report.titles["all__linear__all__accuracy"]
    # without intervals the same layout holds mean ± std over seeds (population std)
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(shots_sweep_records())
    plain = make_report(store, tmp_path / "plain", intervals=None)
    assert [s for s in plain.tables if s.endswith("__accuracy") and "balanced" not in s] == stems
    table = plain.tables["fs__mlcc__uni__accuracy"]
    assert table.loc["lora", "4 shots"] == "46.00±0.82"
    assert table.loc["zero-shot", "zero-shot"] == "30.00±0.00"
    assert plain.tables["all__linear__all__accuracy"].loc["Average", "uni"] == "87.00"


def test_a_one_method_sweep_is_one_learning_curve_table_with_averages():
    rows = []
    for dataset, lift in (("d1", 0.0), ("d2", 10.0)):
        for backbone in ("b1", "b2"):
            for shots in (1, 2, 4):
                if (dataset, backbone, shots) == ("d2", "b2", 4):
                    continue  # one cell missing: its Average stays empty
                rows.append({"method": "lora", "dataset": dataset, "backbone": backbone,
                             "shots": shots, "mean": 40.0 + shots + lift})
    summary = _summary(rows, False)
    (made,) = sweep_tables(summary, pd.DataFrame(), pd.DataFrame(), "s", "balanced_accuracy",
                           ["d1", "d2"], ["b1", "b2"])
    assert made.stem == "s__lora__balanced_accuracy"
    assert list(made.table.index) == [("d1", "b1"), ("d1", "b2"), ("d2", "b1"), ("d2", "b2"),
                                      ("Average", "b1"), ("Average", "b2")]
    # no chosen runs given, so no parameter counts: no such column
    assert list(made.table.columns) == ["1 shot", "2 shots", "4 shots"]
    assert made.table.loc[("d2", "b1"), "2 shots"] == "52.00±2.00"
    assert made.table.loc[("Average", "b1"), "4 shots"] == "49.00"
    assert made.table.loc[("Average", "b2"), "4 shots"] == ""
    assert made.table.loc[("d2", "b2"), "4 shots"] == ""


def test_table1_cells_use_intervals_too():
    rows = [{"method": "linear", "shots": None, "dataset": d, "backbone": b, "mean": m}
            for d, b, m in (("d1", "b1", 70.0), ("d1", "b2", 75.0), ("d2", "b1", 80.0),
                            ("d2", "b2", 85.0))]
    summary = _summary(rows, True)
    table = table1(summary, "balanced_accuracy")
    assert table.loc["d1", "b2"] == "75.00 [71.00, 78.00]"
    assert table.loc["Average", "b1"] == "75.00"
    (made,) = sweep_tables(summary, pd.DataFrame(), pd.DataFrame(), "s", "balanced_accuracy",
                           ["d1", "d2"], ["b1", "b2"])
    assert made.stem == "s__linear__all__balanced_accuracy"
    assert "mean [interval" in made.heading


def test_all_data_runs_say_all_never_na(report):
    out = report.out_dir
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    all_data = summary[summary["sweep"] == "all"]
    assert set(all_data["shots"]) == {"all"}
    assert set(summary.loc[summary["method"] == "zero-shot", "shots"]) == {"0"}
    assert set(summary.loc[summary["sweep"] == "fs", "shots"]) >= {"1", "8"}
    for name in ("runs.csv", "selected.csv"):
        frame = pd.read_csv(out / name, keep_default_na=False)
        assert set(frame.loc[frame["sweep"] == "all", "shots"]) == {"all"}, name
    texts = [report.html, out / "tables.md", *out.glob("*.csv"), *out.glob("*.md"),
             *(out / "tables").glob("*")]
    for path in texts:
        text = path.read_text()
        assert "<NA>" not in text and "&lt;NA&gt;" not in text, path
    # the frame in memory keeps numbers (figures and statistics read it)
    assert report.summary["shots"].dtype == "Int64"
    assert display_shots(report.summary)["shots"].tolist().count("all") > 0


def test_balanced_accuracy_is_the_default_headline(report):
    assert DEFAULT_METRICS[0] == "balanced_accuracy"
    assert list(dict.fromkeys(report.summary["metric"])) == list(DEFAULT_METRICS)
    assert list(report.best) == list(DEFAULT_METRICS)
    page = report.html.read_text()
    first = page[page.index("<h2"):]
    assert first.startswith("<h2 id='best-balanced_accuracy'>")
    assert "test balanced accuracy (%)" in report.titles["fs__mlcc__clip__balanced_accuracy"]


def test_the_cli_reports_balanced_accuracy_first_by_default(tmp_path, capsys):
    from cytotune.experiments.cli import main

    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many([hand_record("a", seed=1, test=0.8), hand_record("b", seed=2, test=0.6)])
    assert main(["report", str(store.path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.index("(balanced_accuracy)") < printed.index("(accuracy)")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(dict.fromkeys(summary["metric"])) == ["balanced_accuracy", "accuracy",
                                                      "macro_f1"]
    # --metrics still chooses, the first being the headline
    assert main(["report", str(store.path), "--out", str(tmp_path / "acc"), "--metrics",
                 "accuracy"]) == 0
    assert set(pd.read_csv(tmp_path / "acc" / "summary.csv")["metric"]) == {"accuracy"}


def test_the_page_indexes_every_table_and_folds_the_other_metrics(report, tmp_path):
    page = report.html.read_text()
    nav = page[page.index("<nav id='contents'>"):page.index("</nav>")]
    for stem, title in report.tables.items():
        assert f"href='#table-{stem}'" in nav and f"id='table-{stem}'" in page
    assert "fs · mlcc · clip" in nav  # tables are named by their heading's first part
    # the headline metric's tables and figures are open; the others are folded
    accuracy = page.index("<details id='tables-accuracy'>")
    assert page.index("id='table-fs__mlcc__clip__balanced_accuracy'") < accuracy \
        < page.index("id='table-fs__mlcc__clip__accuracy'")
    # figures are shown at 5/4 of their printed size, from the PNG's dpi
    assert re.search(r"<figure id='figure-comparison__fs__balanced_accuracy' class='sized' "
                     r"style='width:\d+px'>", page)
    # by default only the headline metric is drawn: no folded figures of the others
    assert report.figures and all(p.stem.endswith("__balanced_accuracy") for p in report.figures)
    assert "<details id='figures-" not in page
    # figures of every metric when asked for: the headline's open, the others folded after it
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(shots_sweep_records())
    every = make_report(store, tmp_path / "every", figure_metrics=list(DEFAULT_METRICS))
    page = every.html.read_text()
    headline = page.index("id='figure-comparison__fs__balanced_accuracy'")
    assert headline < page.index("<details id='figures-accuracy'>") \
        < page.index("id='figure-comparison__fs__accuracy'")
    assert page.index("<details id='figures-macro_f1'>") \
        < page.index("id='figure-comparison__fs__macro_f1'")


def test_the_page_says_how_cells_are_given_with_and_without_intervals(tmp_path):
    from types import SimpleNamespace

    from cytotune.experiments.report_html import html_page
    from cytotune.experiments.report_tables import best_table

    for intervals in (False, True):
        summary = _summary(METHOD_ROWS, intervals)
        (made,) = sweep_tables(summary, pd.DataFrame(), pd.DataFrame(), "s",
                               "balanced_accuracy", ["d"], ["b"])
        best = {"balanced_accuracy": best_table(summary, "balanced_accuracy")}
        page = html_page("t", SimpleNamespace(path=tmp_path / "r.sqlite"), pd.DataFrame(),
                         pd.DataFrame(), summary, pd.DataFrame(), {made.stem: made.table},
                         {made.stem: made.heading}, [], pd.DataFrame(), ["balanced_accuracy"],
                         None, (), best)
        opening = page[page.index("<section class='best'>"):page.index("</section>")]
        if intervals:
            assert "[low, high] is the interval of the mean (hierarchical bootstrap over seeds " \
                   "and test images)" in opening
            assert "<td>70.50 [66.50, 73.50]</td>" in opening  # lora at 4 shots, the best
            assert "70.50 [66.50, 73.50]" in page[page.index("id='tables'"):]
        else:
            assert "± is the standard deviation over seeds" in opening
            assert "<td>70.50±2.00</td>" in opening
