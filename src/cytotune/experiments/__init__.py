"""Experiments as resumable sweeps: a YAML grid of runs, a SQLite result store, a sweep runner
that skips what is done, and a report with the reference study's tables and figures.

    from cytotune.experiments import load_sweep, run_sweep, make_report, ResultStore
    sweep = load_sweep("experiment2_lora_fewshot")          # or a path to a YAML file
    run_sweep(sweep, "results.sqlite", devices=["cuda:0", "cuda:1"])
    make_report("results.sqlite", "report/")                # report/report.html, tables, figures

Layout: ``sweep`` (config, expansion, run ids) -> ``executors`` (where runs execute) ->
``runner`` (resume, store writes, progress) -> ``store`` (SQLite) -> ``report``.
"""
from typing import TYPE_CHECKING

from cytotune._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers; at run time each name is
    # imported on first use, so a light part does not pull in torch through the rest
    from cytotune.experiments.catalog import experiment_path, list_experiments
    from cytotune.experiments.executor_registry import (EXECUTORS, get_executor,
                                                        register_executor)
    from cytotune.experiments.executors import (Executor, LocalExecutor, RunOutcome, RunStarted,
                                                RunTask, execute_task)
    from cytotune.experiments.report import Report, make_report, select_best, summarize, table1
    from cytotune.experiments.runner import SweepSummary, chunk_runs, run_sweep
    from cytotune.experiments.store import ResultStore
    from cytotune.experiments.store_records import make_record
    from cytotune.experiments.sweep import PlannedRun, SweepConfig, compute_run_id, load_sweep
    from cytotune.experiments.sweep_fields import DatasetSpec, GenerateSpec, expand_env

_EXPORTS = {
    "experiment_path": "cytotune.experiments.catalog",
    "list_experiments": "cytotune.experiments.catalog",
    "EXECUTORS": "cytotune.experiments.executor_registry",
    "Executor": "cytotune.experiments.executors",
    "LocalExecutor": "cytotune.experiments.executors",
    "RunOutcome": "cytotune.experiments.executors",
    "RunStarted": "cytotune.experiments.executors",
    "RunTask": "cytotune.experiments.executors",
    "execute_task": "cytotune.experiments.executors",
    "get_executor": "cytotune.experiments.executor_registry",
    "register_executor": "cytotune.experiments.executor_registry",
    "Report": "cytotune.experiments.report",
    "make_report": "cytotune.experiments.report",
    "select_best": "cytotune.experiments.report",
    "summarize": "cytotune.experiments.report",
    "table1": "cytotune.experiments.report",
    "SweepSummary": "cytotune.experiments.runner",
    "chunk_runs": "cytotune.experiments.runner",
    "run_sweep": "cytotune.experiments.runner",
    "ResultStore": "cytotune.experiments.store",
    "make_record": "cytotune.experiments.store_records",
    "DatasetSpec": "cytotune.experiments.sweep_fields",
    "GenerateSpec": "cytotune.experiments.sweep_fields",
    "PlannedRun": "cytotune.experiments.sweep",
    "SweepConfig": "cytotune.experiments.sweep",
    "compute_run_id": "cytotune.experiments.sweep",
    "expand_env": "cytotune.experiments.sweep_fields",
    "load_sweep": "cytotune.experiments.sweep",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "EXECUTORS", "DatasetSpec", "Executor", "GenerateSpec", "LocalExecutor", "PlannedRun",
    "Report", "ResultStore", "RunOutcome", "RunStarted", "RunTask", "SweepConfig", "SweepSummary",
    "chunk_runs", "compute_run_id", "execute_task", "expand_env", "experiment_path",
    "get_executor", "list_experiments", "load_sweep", "make_record", "make_report",
    "register_executor", "run_sweep", "select_best", "summarize", "table1",
]
