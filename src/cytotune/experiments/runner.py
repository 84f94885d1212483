"""Run a sweep against a result store: skip what is done, record each run as it finishes.

The store is the source of truth. A run is done when its id has a row in the store; running a
sweep again runs only what is missing (a killed sweep resumes, losing at most the runs that were
in flight). A run that raises is recorded in the store's ``failures`` table with its error and
the sweep goes on; the next ``run_sweep`` retries it (``retry_failed=False`` skips it instead).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from cytotune.experiments.executors import (Executor, RunOutcome, RunStarted, RunTask,
                                            WorkerSetup, get_executor)
from cytotune.experiments.store import ResultStore
from cytotune.experiments.sweep import PlannedRun, SweepConfig, load_sweep

log = logging.getLogger("cytotune")


@dataclass
class SweepSummary:
    """What one ``run_sweep`` call did."""

    sweep: str
    store: Path
    planned: int  # runs in the sweep
    already_done: int  # skipped: in the store before this call
    skipped_failed: int = 0  # skipped: failed before and retry_failed=False
    completed: list[str] = field(default_factory=list)  # run ids finished by this call
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, error)
    not_run: list[str] = field(default_factory=list)  # left when the call stopped early
    seconds: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    runs: list[PlannedRun] = field(default_factory=list)  # the plan, in execution order

    @property
    def to_run(self) -> int:
        return self.planned - self.already_done - self.skipped_failed

    def line(self) -> str:
        if self.dry_run:
            return (f"sweep {self.sweep}: {self.planned} runs, {self.already_done} already in "
                    f"{self.store}, {self.to_run} to run (dry run: nothing ran)")
        return (f"sweep {self.sweep}: {len(self.completed)} runs finished, {len(self.failed)} "
                f"failed, {self.already_done} were already in the store, "
                f"{len(self.not_run)} not run; {self.seconds:.1f} s")


def chunk_runs(runs: Sequence[PlannedRun], pack_size: int = 1) -> list[list[PlannedRun]]:
    """Group runs into chunks a single worker trains together (cytotune.training.group): the
    linear-probe runs sharing a (data set, backbone) form one chunk (one feature extraction, all
    heads in one batched loop); with ``pack_size`` > 1, LoRA runs sharing a (data set, backbone)
    form chunks of up to ``pack_size`` runs (packed on one backbone); every other run is a chunk
    of its own. Order is kept within chunks."""
    chunks: list[list[PlannedRun]] = []
    open_groups: dict[tuple[str, str, str], list[PlannedRun]] = {}
    for run in runs:
        limit = None if run.method == "linear" else pack_size if run.method == "lora" else 1
        if limit == 1:
            chunks.append([run])
            continue
        key = (run.method, run.dataset, run.backbone)
        group = open_groups.get(key)
        if group is None or (limit is not None and len(group) >= limit):
            group = open_groups[key] = []
            chunks.append(group)
        group.append(run)
    return chunks


def prepare_datasets(sweep: SweepConfig) -> None:
    """Generate the synthetic data sets a sweep asks for and that do not exist yet (done once,
    by the driver, before any worker starts)."""
    from cytotune.data import DEFAULT_CLASSES, generate_cytology_dataset

    for name, spec in sweep.datasets.items():
        if spec.generate is None or Path(spec.resolved_source).expanduser().exists():
            continue
        g = spec.generate
        log.info("generating synthetic data set %s in %s", name, spec.resolved_source)
        generate_cytology_dataset(spec.resolved_source, n_per_class=g.n_per_class,
                                  image_size=g.image_size, seed=g.seed,
                                  classes=g.classes or DEFAULT_CLASSES)


def run_sweep(sweep: Union[SweepConfig, Mapping[str, Any], str, Path],
              store: Union[ResultStore, str, Path], executor: Union[str, Executor] = "local",
              devices: Optional[Sequence[str]] = None, dry_run: bool = False,
              progress: bool = True, *, retry_failed: bool = True,
              worker_setup: WorkerSetup = None, console: Optional[Console] = None,
              executor_options: Optional[Mapping[str, Any]] = None,
              pack_size: Optional[int] = None) -> SweepSummary:
    """Run every run of ``sweep`` that ``store`` does not hold yet.

    ``executor``: "local" (default) or an :class:`Executor`. ``devices``: e.g. ``["cuda:0",
    "cuda:1"]`` runs one worker process per device; None or one device runs here, one run at a
    time, on that device (None: each run's ``device`` option). ``worker_setup``: a callable or
    'module:function' run once per worker before its first run (e.g. to register model cards).
    ``dry_run``: plan only; prints the plan and returns it in the summary. ``pack_size``:
    LoRA runs packed on one backbone (None: the sweep's ``pack_size``).
    """
    started = time.perf_counter()
    if pack_size is not None and pack_size < 1:
        raise ValueError(f"pack_size (--pack) must be >= 1, got {pack_size}")
    sweep = load_sweep(sweep)
    store = store if isinstance(store, ResultStore) else ResultStore(store)
    console = console or Console(stderr=True)
    runs = sweep.runs()
    done = store.done_ids()
    failed_before = store.failed_ids() if not retry_failed else set()
    todo = [r for r in runs if r.run_id not in done and r.run_id not in failed_before]
    summary = SweepSummary(sweep=sweep.name, store=store.path, planned=len(runs),
                           already_done=sum(r.run_id in done for r in runs),
                           skipped_failed=sum(r.run_id in failed_before and r.run_id not in done
                                              for r in runs),
                           runs=runs, dry_run=dry_run)
    if dry_run:
        if progress:
            _print_plan(console, sweep, runs, done, failed_before)
            console.print(summary.line())
        return summary
    if not todo:
        if progress:
            console.print(summary.line())
        return summary

    prepare_datasets(sweep)
    options = dict(executor_options or {})
    if worker_setup is not None:
        options["worker_setup"] = worker_setup
    runner = get_executor(executor, devices=devices, **options)
    by_id = {r.run_id: r for r in todo}
    remaining = set(by_id)
    chunks = [[RunTask(run_id=r.run_id, keys={k: v for k, v in r.key_fields().items()
                                               if k != "run_id"},
                       config=r.config.to_dict(), label=r.describe()) for r in chunk]
              for chunk in chunk_runs(todo, sweep.pack_size if pack_size is None else pack_size)]

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[left]} left, [red]{task.fields[failed]} failed[/red]"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   TextColumn("{task.fields[current]}"), console=console, disable=not progress,
                   transient=False)
    task_id = bar.add_task(sweep.name, total=len(todo), left=len(todo), failed=0, current="")
    in_flight: dict[str, str] = {}

    def report(event: Union[RunStarted, RunOutcome]) -> None:
        if isinstance(event, RunStarted):
            in_flight[event.run_id] = by_id[event.run_id].describe() if event.run_id in by_id else ""
            bar.update(task_id, current=_current(in_flight))
            return
        in_flight.pop(event.run_id, None)
        remaining.discard(event.run_id)
        if event.ok:
            store.insert(event.record)
            summary.completed.append(event.run_id)
        else:
            keys = {"run_id": event.run_id, **event.keys, "config": event.config}
            store.record_failure(keys, event.error or "unknown error", event.traceback,
                                 device=event.device, worker=event.worker)
            summary.failed.append((event.run_id, event.error or ""))
            if progress:
                bar.console.print(f"[red]failed[/red] {by_id[event.run_id].describe()}: "
                                  f"{event.error}")
        bar.update(task_id, advance=1, left=len(remaining), failed=len(summary.failed),
                   current=_current(in_flight))

    if progress:
        console.print(f"sweep [bold]{sweep.name}[/bold]: {len(runs)} runs, "
                      f"{summary.already_done} already in {store.path}, {len(todo)} to run on "
                      f"{runner.describe()}")
    try:
        with bar:
            runner.execute(chunks, report)
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.not_run = [r.run_id for r in todo if r.run_id in remaining]
        summary.seconds = time.perf_counter() - started
        if progress:
            console.print(f"[yellow]interrupted[/yellow]: {len(summary.completed)} runs recorded "
                          f"in {store.path}, {len(summary.not_run)} left; run the sweep again to "
                          f"resume")
        raise
    summary.not_run = [r.run_id for r in todo if r.run_id in remaining]
    summary.seconds = time.perf_counter() - started
    if progress:
        console.print(summary.line())
    return summary


def _current(in_flight: Mapping[str, str]) -> str:
    labels = list(in_flight.values())
    if not labels:
        return ""
    return labels[0] if len(labels) == 1 else f"{labels[0]} (+{len(labels) - 1} more)"


def _print_plan(console: Console, sweep: SweepConfig, runs: Sequence[PlannedRun],
                done: set[str], failed: set[str]) -> None:
    table = Table(title=f"sweep {sweep.name}: {len(runs)} runs")
    for col in ("#", "run id", "dataset", "backbone", "method", "sample", "seed", "lr", "status"):
        table.add_column(col, justify="right" if col in ("#", "seed", "lr") else "left")
    indices = list(range(len(runs)))
    if len(runs) > 200:
        indices = indices[:100] + [-1] + indices[-20:]
    for i in indices:
        if i < 0:
            table.add_row("...", "", "", "", "", "", "", "", "")
            continue
        run = runs[i]
        status = "done" if run.run_id in done else ("failed (skipped)" if run.run_id in failed
                                                    else "to run")
        table.add_row(str(i + 1), run.run_id, run.dataset, run.backbone, run.method, run.sample,
                      str(run.seed), f"{run.lr:g}", status)
    console.print(table)
