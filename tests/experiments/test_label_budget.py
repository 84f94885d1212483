"""Label-budget sweeps (issue 34): the grid, its runs, and the report's budget section."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from experiments_helpers import small_sweep

from cytotune.experiments import ResultStore, run_sweep
from cytotune.experiments.report import make_report
from cytotune.experiments.sweep import SweepConfig
from cytotune.training.config import ConfigError


def _values(tmp_path, **grid):
    base = {"name": "b", "datasets": {"d": {"source": "/nowhere/d"}},
            "backbones": ["uni-tiny"], "method": ["prototype"], "budgets": [4, 8],
            "sampling": ["random", "kmeans"], "seeds": [1, 2]}
    base.update(grid)
    return base


def test_budget_grid_plans_every_budget_strategy_and_seed():
    sweep = SweepConfig.from_dict(_values(None), check_models=False)
    runs = sweep.runs()
    assert len(runs) == 2 * 2 * 2
    assert {r.sample for r in runs} == {"budget4-random", "budget4-kmeans", "budget8-random",
                                        "budget8-kmeans"}
    assert all(r.shots is None and r.fraction is None for r in runs)
    assert {(r.config.budget, r.config.sampling) for r in runs} == {
        (4, "random"), (4, "kmeans"), (8, "random"), (8, "kmeans")}
    assert len({r.run_id for r in runs}) == len(runs)
    again = SweepConfig.from_dict(sweep.to_dict(), check_models=False)
    assert [r.run_id for r in again.runs()] == [r.run_id for r in runs]


@pytest.mark.parametrize("change, message", [
    ({"shots": [1]}, "give budgets or shots, not both"),
    ({"budgets": None}, "sampling chooses the images of a label budget: give budgets too"),
    ({"sampling": ["best"]}, "sampling: unknown strategy 'best'"),
    ({"budgets": [1]}, "budgets\\[0\\]: a number of training images >= 2, got 1"),
    ({"budgets": [4, 4]}, "budgets"),
])
def test_bad_budget_grids_are_refused(change, message):
    values = _values(None)
    values.update(change)
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        SweepConfig.from_dict(values, check_models=False)


def test_budget_sweep_runs_and_the_report_pairs_strategies_with_random(synthetic_data,
                                                                      tiny_model_names, tmp_path):
    values = small_sweep("budget", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", method=["prototype"], shots=None, lrs=None,
                         budgets=[4, 8], sampling=["random", "kmeans"], seeds=[1, 2, 3])
    values.pop("shots")
    store = ResultStore(tmp_path / "r.sqlite")
    summary = run_sweep(values, store, progress=False)
    assert len(summary.completed) == 12 and not summary.failed
    report = make_report(store, tmp_path / "report")
    stems = [s for s in report.tables if s.startswith("label_budget__")]
    assert len(stems) == 1
    table = report.tables[stems[0]]
    assert set(table.columns) == {"random", "kmeans"}
    assert any(p.name.startswith("label_budget__") and p.suffix == ".png" for p in report.figures)
    # the paired difference is the mean over seeds of kmeans minus random, by hand
    records = store.records(full=True)
    records["budget"] = [json.loads(c)["budget"] for c in records["config_json"]]
    records["sampling"] = [json.loads(c)["sampling"] for c in records["config_json"]]
    by = records.set_index(["budget", "sampling", "seed"])["test_balanced_accuracy"]
    diff = np.mean([by[(4, "kmeans", s)] - by[(4, "random", s)] for s in (1, 2, 3)]) * 100
    cell = table.loc[("prototype", 4), "kmeans"]
    assert cell.split("; ")[1].startswith(f"{diff:+.1f}")
    mean_random = np.mean([by[(4, "random", s)] for s in (1, 2, 3)]) * 100
    assert table.loc[("prototype", 4), "random"].startswith(f"{mean_random:.1f}")
    points = pd.read_csv(next(p for p in report.files if p.name.startswith("label_budget__")
                              and p.suffix == ".csv" and "figures" in str(p)))
    assert set(points["x"]) == {4.0, 8.0}


def test_grid_crosses_settings_into_every_run_and_refuses_owned_or_bad_options():
    values = _values(None, method=["prototype"], budgets=[4], sampling=["random"], seeds=[1],
                     grid={"data.val_fraction": [0.2, 0.3], "optim.batch_size": [8, 16]})
    sweep = SweepConfig.from_dict(values, check_models=False)
    runs = sweep.runs()
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    assert {(r.config.data.val_fraction, r.config.optim.batch_size) for r in runs} == {
        (0.2, 8), (0.2, 16), (0.3, 8), (0.3, 16)}
    assert SweepConfig.from_dict(sweep.to_dict(), check_models=False).runs()[3].run_id == \
        runs[3].run_id
    for grid, message in (({"seed": [1, 2]}, "grid.seed: set by the sweep's own fields"),
                          ({"optim.batch_size": []}, "grid.optim.batch_size: expected a "
                                                     "non-empty list"),
                          ({"optim.nope": [1]}, "grid.optim.nope"),
                          ({"optim.batch_size": ["x"]}, "grid.optim.batch_size")):
        with pytest.raises(ConfigError, match=message):
            SweepConfig.from_dict(_values(None, grid=grid), check_models=False)
