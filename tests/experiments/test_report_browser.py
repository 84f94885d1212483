"""Issue 17, item 7 and issue 30, item 8: report.html in a real browser (headless Chromium, via
scripts/check_report_html.py): every figure loads, every table is there, the page opens with the
summary, and nothing overflows sideways in a 1,366 px wide window. The browser test is skipped,
with the reason, where no Chromium is installed (CI installs one: .ci/run); the checks' logic is
tested without one."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cytotune.experiments import ResultStore, make_report
from experiments_helpers import hand_record
from test_report_shots import shots_sweep_records

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_report_html.py"


def _script():
    spec = importlib.util.spec_from_file_location("check_report_html", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_report_html", module)
    spec.loader.exec_module(module)
    return module


check = _script()


def _facts(**changes) -> dict:
    facts = {"title": "t", "first_heading": "Best method per data set and training data: test "
                                            "accuracy",
             "images": [{"figure": "a.png", "complete": True, "width": 900, "height": 400,
                         "shown": [900, 400]}],
             "tables": [{"table": "best__accuracy", "rows": 5, "shown": [800, 120]},
                        {"table": "s__lora__1shot__accuracy", "rows": 3, "shown": [300, 60]}],
             "layout": {"scroll_width": 1351, "scroll_height": 4000, "client_width": 1351,
                        "window_width": 1366},
             "layout_opened": {"scroll_width": 1351, "scroll_height": 9000,
                               "client_width": 1351, "window_width": 1366}}
    facts.update(changes)
    return facts


def test_evaluate_passes_a_page_that_shows_everything():
    result = check.evaluate(_facts(), ["best__accuracy", "s__lora__1shot__accuracy"], ["a.png"])
    assert result.ok and result.lines()[-1] == "all checks passed"


def test_evaluate_names_a_broken_image_a_missing_table_and_a_late_summary():
    broken = [{"figure": "a.png", "complete": True, "width": 0, "height": 0, "shown": [16, 16]}]
    result = check.evaluate(_facts(images=broken, first_heading="Figures"),
                            ["best__accuracy", "missing__table"], ["a.png", "gone.png"])
    assert not result.ok
    text = "\n".join(result.problems)
    assert "figure a.png did not load" in text and "figure gone.png is not on the page" in text
    assert "table missing__table is not on the page" in text
    assert "does not open with the summary" in text


def test_evaluate_names_a_page_wider_than_its_window():
    wide = {"scroll_width": 2756, "scroll_height": 32000, "client_width": 1351,
            "window_width": 1366}
    result = check.evaluate(_facts(layout=wide), ["best__accuracy"], ["a.png"])
    assert result.problems == ["the page overflows sideways: scroll width 2756 px in a window "
                               "1366 px wide (client width 1351 px)"]
    # a folded section that overflows once opened is caught too
    result = check.evaluate(_facts(layout_opened={**wide, "scroll_width": 1360}),
                            ["best__accuracy"], ["a.png"])
    assert len(result.problems) == 1 and "with its folded sections opened" in result.problems[0]
    # a page the probe did not measure passes nothing
    result = check.evaluate(_facts(layout={}), ["best__accuracy"], ["a.png"])
    assert result.problems == ["the page's size was not measured"]
    assert "scroll width 1351 px, height 4000 px" in "\n".join(_ok_lines())


def _ok_lines() -> list[str]:
    return check.evaluate(_facts(), ["best__accuracy"], ["a.png"]).lines()


def wide_records() -> list[dict]:
    """Runs that make wide tables: a sweep of three methods with long variant labels (two
    image sizes and a long data path), probe choices (hp_ columns) and long run ids."""
    records = []
    source = "/data/" + "very_long_folder_name_" * 4 + "cells"
    for method in ("linear", "knn", "logreg"):
        for size in (112, 224):
            for shots in (1, 2, 4, 8, 16, 32):
                for seed in (1, 2, 3):
                    record = hand_record(f"wide-{method}-{size}-{shots}-{seed}-" + "x" * 40,
                                         sweep="a_sweep_with_a_long_name", dataset="mlcc",
                                         backbone="a-backbone-with-a-long-name-vit-l14",
                                         method=method, shots=shots, seed=seed,
                                         test=0.5 + shots / 100)
                    record["config"].update({"model": {"name": "b", "image_size": size},
                                             "data": {"source": source}})
                    record["metrics"]["hyperparameters"] = {"k": 5, "C": 0.01,
                                                            "select_on": "val"}
                    records.append(record)
    return records


def test_expected_files_of_a_report_dir(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "figures").mkdir()
    for name in ("tables/x.csv", "tables/x.md", "best__accuracy.csv", "figures/f.png",
                 "runs.csv"):
        (tmp_path / name).write_text("")
    assert check.expected_from_dir(tmp_path) == (["x", "best__accuracy"], ["f.png"])


def test_no_browser_is_one_clear_line(tmp_path, monkeypatch):
    (tmp_path / "report.html").write_text("<html></html>")
    monkeypatch.setattr(check, "find_chromium", lambda explicit=None: None)
    assert check.main([str(tmp_path)]) == 2


@pytest.mark.skipif(check.find_chromium() is None,
                    reason="no Chromium installed (chromium, chromium-browser, google-chrome or "
                           "$CHROMIUM): the real-browser check of report.html needs one")
def test_report_page_in_headless_chromium(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(shots_sweep_records() + wide_records())
    report = make_report(store, tmp_path / "out")  # default metrics: balanced accuracy first
    chromium = check.find_chromium()
    facts = check.render_facts(report.html, chromium)
    tables = [*report.tables, *(f"best__{m}" for m in report.best)]
    figures = [p.name for p in report.figures if p.suffix == ".png"]
    result = check.evaluate(facts, tables, figures)
    assert result.ok, result.problems
    assert len(result.images) == len(figures) >= 6
    assert {t["table"] for t in result.tables} >= set(tables)
    # the summary, in the headline metric, comes first
    assert result.first_heading.startswith("Best method per data set and training data: test "
                                           "balanced accuracy")
    # every figure loaded: decoded (naturalWidth > 0) and laid out
    assert all(i["width"] > 0 and i["height"] > 0 and i["shown"][0] > 0 for i in result.images)
    # no horizontal overflow in a 1,366 px wide window, as the page opens and with every
    # folded section (other metrics, long lists) opened
    for layout in (result.layout, result.layout_opened):
        assert layout["window_width"] == 1366
        assert layout["scroll_width"] <= min(1366, layout["client_width"]), layout
    # an index of every table by name, near the top (before the figures)
    page = report.html.read_text()
    for stem in report.tables:
        assert page.index(f"href='#table-{stem}'") < page.index("id='figures'")
    # the script end to end, as a user runs it, with a screenshot
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(SCRIPT), str(report.out_dir), "--screenshot",
                           str(shot)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CHROMIUM": chromium})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    assert f"images loaded: {len(figures)}/{len(figures)}" in done.stdout
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
