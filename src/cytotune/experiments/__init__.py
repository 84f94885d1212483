"""Experiments as resumable sweeps: a YAML grid of runs, a SQLite result store, a sweep runner
that skips what is done, and a report with the reference study's tables and figures.

    from cytotune.experiments import load_sweep, run_sweep, make_report, ResultStore
    sweep = load_sweep("experiment2_lora_fewshot")          # or a path to a YAML file
    run_sweep(sweep, "results.sqlite", devices=["cuda:0", "cuda:1"])
    make_report("results.sqlite", "report/")                # report/report.html, tables, figures

Layout: ``sweep`` (config, expansion, run ids) -> ``executors`` (where runs execute) ->
``runner`` (resume, store writes, progress) -> ``store`` (SQLite) -> ``report``.
"""
from cytotune.experiments.catalog import experiment_path, list_experiments
from cytotune.experiments.executors import (EXECUTORS, Executor, LocalExecutor, RunOutcome,
                                            RunStarted, RunTask, execute_task, get_executor,
                                            register_executor)
from cytotune.experiments.report import Report, make_report, select_best, summarize, table1
from cytotune.experiments.runner import SweepSummary, chunk_runs, run_sweep
from cytotune.experiments.store import ResultStore, make_record
from cytotune.experiments.sweep import (DatasetSpec, GenerateSpec, PlannedRun, SweepConfig,
                                        compute_run_id, expand_env, load_sweep)

__all__ = [
    "EXECUTORS", "DatasetSpec", "Executor", "GenerateSpec", "LocalExecutor", "PlannedRun",
    "Report", "ResultStore", "RunOutcome", "RunStarted", "RunTask", "SweepConfig", "SweepSummary",
    "chunk_runs", "compute_run_id", "execute_task", "expand_env", "experiment_path",
    "get_executor", "list_experiments", "load_sweep", "make_record", "make_report",
    "register_executor", "run_sweep", "select_best", "summarize", "table1",
]
