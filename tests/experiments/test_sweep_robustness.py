"""A sweep's robustness phase (issue 33): every finished run evaluated under perturbations,
kept in the store, resumable, and reported beside the clean score."""
from __future__ import annotations

import sqlite3

import pytest
from experiments_helpers import small_sweep

from cytotune.experiments import ResultStore, run_sweep
from cytotune.experiments.report import make_report
from cytotune.experiments.sweep import SweepConfig
from cytotune.training.config import ConfigError


def _values(synthetic_data, tiny_model_names, tmp_path, **grid):
    values = small_sweep("robust", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", method=["linear", "prototype"], shots=[2],
                         seeds=[1, 2], lrs={"linear": [1e-2]}, robustness=["blur", "noise"])
    values["base"]["out"] = str(tmp_path / "runs" / "{run_id}")
    values.update(grid)
    return values


def test_robustness_needs_run_directories_and_known_kinds(synthetic_data, tiny_model_names,
                                                           tmp_path):
    values = _values(synthetic_data, tiny_model_names, tmp_path)
    del values["base"]["out"]
    with pytest.raises(ConfigError, match="robustness evaluates each run's saved model: set "
                                          "base.out"):
        SweepConfig.from_dict(values)
    values = _values(synthetic_data, tiny_model_names, tmp_path, robustness=["fog"])
    with pytest.raises(ConfigError, match="robustness: unknown perturbation 'fog'; known: hed"):
        SweepConfig.from_dict(values)


def test_robustness_is_evaluation_only_and_keeps_run_ids(synthetic_data, tiny_model_names,
                                                         tmp_path):
    values = _values(synthetic_data, tiny_model_names, tmp_path)
    with_phase = SweepConfig.from_dict(values).runs()
    values.pop("robustness")
    without = SweepConfig.from_dict(values).runs()
    assert [r.run_id for r in with_phase] == [r.run_id for r in without]


def test_sweep_evaluates_stores_resumes_and_reports_robustness(synthetic_data, tiny_model_names,
                                                               tmp_path):
    values = _values(synthetic_data, tiny_model_names, tmp_path)
    store = ResultStore(tmp_path / "r.sqlite")
    summary = run_sweep(values, store, progress=False)
    assert len(summary.completed) == 4 and not summary.failed
    assert len(summary.robustness.evaluated) == 4 and not summary.robustness.failed
    rows = store.robustness()
    assert len(rows) == 4 * (1 + 2 * 5)
    records = store.records().set_index("run_id")
    clean = rows[rows["kind"] == "clean"].set_index("run_id")
    for run_id, row in clean.iterrows():  # severity 0 is the run's own test result
        assert row["balanced_accuracy"] == pytest.approx(
            records.loc[run_id, "test_balanced_accuracy"], abs=1e-12)
    # resumable: a second call evaluates nothing again; a run without rows is evaluated
    again = run_sweep(values, store, progress=False)
    assert again.robustness.evaluated == [] and again.robustness.already == 4
    lost = clean.index[0]
    with sqlite3.connect(store.path) as con:  # as if the phase was killed before this run
        con.execute("DELETE FROM robustness WHERE run_id = ?", (lost,))
    resumed = run_sweep(values, store, progress=False)
    assert resumed.robustness.evaluated == [lost] and len(store.robustness()) == len(rows)
    report = make_report(store, tmp_path / "report")
    stems = [s for s in report.tables if s.startswith("robustness__")]
    assert len(stems) == 1
    table = report.tables[stems[0]]
    assert {"clean", "worst-case drop", "mean drop", "drop blur", "drop noise"} <= set(table.columns)
    assert len(table) == 2  # linear and prototype
    assert all(("(blur)" in v or "(noise)" in v) for v in table["worst-case drop"])
    assert any(p.name.startswith("robustness__") for p in report.figures)
