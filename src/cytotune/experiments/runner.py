"""Run a sweep against a result store: skip what is done, record each run as it finishes.

The store is the source of truth. A run is done when its id has a row in the store; running a
sweep again runs only what is missing (a killed sweep resumes, losing at most the runs that were
in flight). A run that raises is recorded in the store's ``failures`` table with its error and
the sweep goes on; the next ``run_sweep`` retries it (``retry_failed=False`` skips it instead).

Nothing computed is lost:

- a run is claimed in the store (a lease, heartbeated while it trains) when a worker is about
  to start it, so several ``run_sweep`` calls on one store (two ``cytotune sweep`` commands, on
  one machine or several) split the runs instead of each training all of them; the runs of a
  worker that died are taken again once its leases are dead (expired, or its process gone);
- a run whose directory (``base.out``) already holds a finished run of the same config is read
  back from it (metrics.json) instead of being trained again: a sweep killed between publishing
  a run and recording it, or whose store write failed, gets it back on resume;
- when the store cannot be written (disk full, read-only) the sweep stops taking new runs, keeps
  the finished runs' records in a file beside the store (or in the temporary folder) that the
  next ``run_sweep`` inserts, and raises :class:`StoreWriteError` naming the store.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cytotune.experiments.executor_registry import get_executor
from cytotune.experiments.executors import (ChunkQueue, Executor, RunOutcome, RunStarted,
                                            RunTask, WorkerSetup)
from cytotune.experiments.run_progress import PlainSweepLines, SweepRunProgress, WorkETA
from cytotune.experiments.store import (CLAIMED, DEFAULT_LEASE_TTL_S, DONE, FAILED_ELSEWHERE,
                                        ResultStore, StoreWriteError, new_owner, utc_now)
from cytotune.experiments.store_records import (load_pending, raise_store_error,
                                                record_from_run_dir)
from cytotune.experiments.sweep import EXECUTION_FIELDS, PlannedRun, SweepConfig, load_sweep

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
    recovered: list[str] = field(default_factory=list)  # read back from their run directories
    done_elsewhere: list[str] = field(default_factory=list)  # finished by another worker meanwhile
    failed_elsewhere: list[str] = field(default_factory=list)  # failed in another worker meanwhile
    not_run: list[str] = field(default_factory=list)  # left when the call stopped early
    seconds: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    runs: list[PlannedRun] = field(default_factory=list)  # the plan, in execution order
    robustness: Any = None  # the robustness phase (.robustness_phase), when the sweep has one

    @property
    def to_run(self) -> int:
        return self.planned - self.already_done - self.skipped_failed

    def line(self) -> str:
        if self.dry_run:
            return (f"sweep {self.sweep}: {self.planned} runs, {self.already_done} already in "
                    f"{self.store}, {self.to_run} to run (dry run: nothing ran)")
        extra = "".join(f", {len(ids)} {what}" for ids, what in (
            (self.recovered, "read back from their run directories"),
            (self.done_elsewhere, "finished by another worker"),
            (self.failed_elsewhere, "failed in another worker")) if ids)
        return (f"sweep {self.sweep}: {len(self.completed)} runs finished, {len(self.failed)} "
                f"failed, {self.already_done} were already in the store{extra}, "
                f"{len(self.not_run)} not run; {self.seconds:.1f} s"
                + (f"; {self.robustness.line()}" if self.robustness is not None else ""))


def chunk_runs(runs: Sequence[PlannedRun], pack_size: int = 1) -> list[list[PlannedRun]]:
    """Group runs into chunks a single worker trains together (cytotune.training.group): the
    linear-probe runs sharing a (data set, backbone) form one chunk (one feature extraction, all
    heads in one batched loop); with ``pack_size`` > 1, LoRA runs sharing a (data set, backbone)
    form chunks of up to ``pack_size`` runs (packed on one backbone); every other run is a chunk
    of its own, as is every label-budget run. Order is kept within chunks."""
    chunks: list[list[PlannedRun]] = []
    open_groups: dict[tuple[str, str, str], list[PlannedRun]] = {}
    for run in runs:
        limit = None if run.method == "linear" else pack_size if run.method == "lora" else 1
        if run.config.budget is not None:
            limit = 1  # chosen on the backbone's features run by run: never trained as a group
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


def lease_ttl_default() -> float:
    """Seconds a lease lives without a heartbeat: ``CYTOTUNE_LEASE_TTL`` or 60."""
    value = os.environ.get("CYTOTUNE_LEASE_TTL")
    if not value:
        return DEFAULT_LEASE_TTL_S
    ttl = float(value)
    if not ttl > 0:
        raise ValueError(f"CYTOTUNE_LEASE_TTL must be a positive number of seconds, got {value!r}")
    return ttl


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two run configs the same run (where and how it executes left out)."""
    return {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}


def read_finished_run(task: RunTask) -> Optional[dict[str, Any]]:
    """The store record of ``task`` read back from its run directory when that holds a finished
    run of the same config (config.yaml), else None (no directory, another config, unreadable)."""
    from cytotune.training.config import TrainConfig
    from cytotune.training.rundir import COMPLETE_MARKER

    out = task.config.get("out")
    if not out:
        return None
    out_dir = Path(out).expanduser()
    if not (out_dir / COMPLETE_MARKER).is_file() or not (out_dir / "config.yaml").is_file():
        return None
    try:
        saved = TrainConfig.from_yaml(out_dir / "config.yaml").to_dict()
        if _identity(saved) != _identity(TrainConfig.from_dict(task.config).to_dict()):
            return None
        return record_from_run_dir({"run_id": task.run_id, **task.keys}, out_dir, task.config)
    except Exception as err:  # noqa: BLE001 - not readable: the run is trained again
        log.warning("run directory %s not read back (%s: %s); the run is trained again", out_dir,
                    type(err).__name__, err)
        return None


class _LeaseKeeper:
    """Heartbeat of a sweep's leases: a thread renewing them every ttl / 3 seconds."""

    def __init__(self, store: ResultStore, owner: str, ttl: float):
        self.store, self.owner, self.ttl = store, owner, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cytotune-lease-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(self.ttl / 3):
            try:
                self.store.renew(self.owner, self.ttl)
            except Exception as err:  # noqa: BLE001 - leases lapse: at worst a run is redone
                if not warned:
                    log.warning("cannot renew the leases in %s (%s); another sweep may take "
                                "these runs", self.store.path, err)
                    warned = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


class _ClaimingQueue(ChunkQueue):
    """The sweep's chunks, each run claimed in the store when its chunk is taken.

    A run found done (another worker recorded it) or failed in another worker since this sweep
    started is dropped; a run whose directory holds its finished result is read back
    (``recover``); a run held by another worker's live lease waits and is asked for again every
    ``wait_s`` seconds once nothing else is left, until it is done or its lease is dead.
    """

    def __init__(self, chunks: Sequence[Sequence[RunTask]], store: ResultStore, owner: str,
                 ttl: float, since: str, recover: Callable[[RunTask], bool],
                 skipped: Callable[[str, str], None],
                 store_failed: Callable[[BaseException], None]):
        super().__init__(chunks)
        self.store, self.owner, self.ttl, self.since = store, owner, ttl, since
        self.recover, self.skipped, self.store_failed = recover, skipped, store_failed
        self.waiting: list[list[RunTask]] = []
        self.stopped = False
        self._last_poll = 0.0

    def stop(self) -> None:
        """Take nothing more (the store cannot be written)."""
        self.stopped = True

    def exhausted(self) -> bool:
        return self.stopped or (super().exhausted() and not self.waiting)

    def remaining(self) -> int:
        return super().remaining() + sum(len(c) for c in self.waiting)

    def take(self) -> Optional[list[RunTask]]:
        if self.stopped:
            return None
        while True:
            chunk = super().take()
            if chunk is None:
                break
            claimed = self._claim(chunk, waited=False)
            if claimed:
                return claimed
        if not self.waiting or time.monotonic() - self._last_poll < self.wait_s:
            return None
        self._last_poll = time.monotonic()
        waiting, self.waiting = self.waiting, []
        found: Optional[list[RunTask]] = None
        for chunk in waiting:
            if found is None:
                found = self._claim(chunk, waited=True) or None
            else:
                self.waiting.append(chunk)
        return found

    def _claim(self, chunk: list[RunTask], waited: bool) -> list[RunTask]:
        """Claim what can be claimed of ``chunk``; ``waited``: its runs were held by another
        worker before (a failure recorded since this sweep started is then that worker's)."""
        try:
            status = self.store.claim([t.run_id for t in chunk], self.owner, self.ttl,
                                      failed_since=self.since if waited else None)
        except (sqlite3.Error, OSError) as err:
            self.store_failed(err)  # stops this queue
            return []
        claimed, held = [], []
        for task in chunk:
            state = status[task.run_id]
            if state == CLAIMED:
                if not self.recover(task):
                    claimed.append(task)
            elif state == DONE:
                self.skipped(task.run_id, DONE)
            elif state == FAILED_ELSEWHERE:
                self.skipped(task.run_id, FAILED_ELSEWHERE)
            else:
                held.append(task)
        if held:
            self.waiting.append(held)
        return claimed


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
              pack_size: Optional[int] = None, lease_ttl: Optional[float] = None,
              estimate: bool = False) -> SweepSummary:
    """Run every run of ``sweep`` that ``store`` does not hold yet.

    ``executor``: "local" (default) or an :class:`Executor`. ``devices``: e.g. ``["cuda:0",
    "cuda:1"]`` runs one worker process per device; None or one device runs here, one run at a
    time, on that device (None: each run's ``device`` option). ``worker_setup``: a callable or
    'module:function' run once per worker before its first run (e.g. to register model cards).
    ``dry_run``: plan only; prints the plan (and with ``estimate`` its estimated time, see
    :mod:`.estimate`) and returns it in the summary. ``pack_size``:
    LoRA runs packed on one backbone (None: the sweep's ``pack_size``). ``lease_ttl``: seconds
    a run's claim lives without a heartbeat (None: ``CYTOTUNE_LEASE_TTL`` or 60).

    Raises :class:`StoreWriteError` when the store cannot be written; the finished runs are
    kept (see the module docstring) and the next call picks them up.
    """
    started = time.perf_counter()
    if pack_size is not None and pack_size < 1:
        raise ValueError(f"pack_size (--pack) must be >= 1, got {pack_size}")
    ttl = lease_ttl_default() if lease_ttl is None else float(lease_ttl)
    if not ttl > 0:
        raise ValueError(f"lease_ttl must be a positive number of seconds, got {lease_ttl}")
    sweep = load_sweep(sweep)
    console = console or Console(stderr=True)
    if sweep.skipped_datasets:
        from cytotune.experiments.dataset_selection import skipped_line
        line = skipped_line(sweep.skipped_datasets, list(sweep.datasets))
        if progress:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            log.warning(line)
    if dry_run:
        from cytotune.experiments.plan import dry_run as plan_dry_run
        return plan_dry_run(sweep, store, progress, retry_failed, console, estimate, SweepSummary)
    if not isinstance(store, ResultStore):
        try:
            store = ResultStore(store)
        except (sqlite3.Error, OSError) as err:
            raise StoreWriteError(f"cannot open the result store {store}: {err}") from None
    runs = sweep.runs()
    try:
        kept = load_pending(store)
    except (sqlite3.Error, OSError) as err:
        raise StoreWriteError(f"cannot write to the result store {store.path}: {err}") from None
    if kept:
        log.info("%d finished runs kept while %s could not be written were recorded now",
                 kept, store.path)
    done = store.done_ids()
    failed_before = store.failed_ids() if not retry_failed else set()
    todo = [r for r in runs if r.run_id not in done and r.run_id not in failed_before]
    summary = SweepSummary(sweep=sweep.name, store=store.path, planned=len(runs),
                           already_done=sum(r.run_id in done for r in runs),
                           skipped_failed=sum(r.run_id in failed_before and r.run_id not in done
                                              for r in runs),
                           runs=runs)
    if not todo:
        _robustness_phase(sweep, store, summary, devices)
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
    owner = new_owner()
    unsaved: list[dict[str, Any]] = []  # finished runs the store refused
    store_error: list[BaseException] = []

    plain = progress and not console.is_terminal  # a log file: lines, not a bar drawn at the end
    from cytotune.experiments.estimate import run_weights
    weights, unit = run_weights(sweep, todo, _records(store))
    work = WorkETA(weights, seconds=unit == "seconds",  # the ETA weighs runs by planned work
                   kinds={r.run_id: f"{r.backbone}|{r.method}" for r in todo})
    lines = PlainSweepLines(lambda line: console.print(line, markup=False, highlight=False,
                                                       soft_wrap=True), len(todo), eta=work)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[left]} left, [red]{task.fields[failed]} failed[/red]"),
                   TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                   TextColumn("{task.fields[current]}"), TextColumn("[cyan]{task.fields[run]}"),
                   console=console, disable=not progress or plain, transient=False)
    task_id = bar.add_task(sweep.name, total=len(todo), left=len(todo), failed=0, current="",
                           run="", eta=work.text())
    in_flight: dict[str, str] = {}

    def store_failed(err: BaseException) -> None:
        if not store_error:
            store_error.append(err)
            log.error("cannot write to the result store %s: %s; no new runs are started",
                      store.path, err)
        queue.stop()

    def write(action: Callable[[], Any]) -> bool:
        """Run a store write; on failure stop taking runs (the first error is kept)."""
        try:
            action()
            return True
        except (sqlite3.Error, OSError) as err:
            store_failed(err)
            return False

    def report(event: Union[RunStarted, RunOutcome]) -> None:
        if isinstance(event, RunStarted):
            in_flight[event.run_id] = by_id[event.run_id].describe() if event.run_id in by_id else ""
            bar.update(task_id, current=_current(in_flight))
            return
        in_flight.pop(event.run_id, None)
        remaining.discard(event.run_id)
        work.run_done(event.run_id)
        if event.ok:
            if write(lambda: store.insert(event.record)):
                summary.completed.append(event.run_id)
            else:
                unsaved.append(event.record)
        else:
            keys = {"run_id": event.run_id, **event.keys, "config": event.config}
            write(lambda: store.record_failure(keys, event.error or "unknown error",
                                               event.traceback, device=event.device,
                                               worker=event.worker))
            summary.failed.append((event.run_id, event.error or ""))
            if progress:
                bar.console.print(f"[red]failed[/red] {by_id[event.run_id].describe()}: "
                                  f"{event.error}")
        write(lambda: store.release([event.run_id], owner))
        bar.update(task_id, advance=1, left=len(remaining), failed=len(summary.failed),
                   current=_current(in_flight), eta=work.text())
        if plain:
            lines.run_ended(by_id[event.run_id].describe() if event.run_id in by_id else
                            event.run_id, event.ok, len(todo) - len(remaining))

    def skipped(run_id: str, why: str) -> None:
        remaining.discard(run_id)
        work.drop(run_id)
        (summary.done_elsewhere if why == DONE else summary.failed_elsewhere).append(run_id)
        bar.update(task_id, advance=1, left=len(remaining), current=_current(in_flight))

    def recover(task: RunTask) -> bool:
        record = read_finished_run(task)
        if record is None:
            return False
        if not write(lambda: store.insert(record)):
            unsaved.append(record)
            return True
        write(lambda: store.release([task.run_id], owner))
        remaining.discard(task.run_id)
        work.drop(task.run_id)
        summary.recovered.append(task.run_id)
        log.info("run %s read back from %s", task.run_id, record["out_dir"])
        bar.update(task_id, advance=1, left=len(remaining), current=_current(in_flight))
        return True

    queue = _ClaimingQueue(chunks, store, owner, ttl, utc_now(), recover, skipped, store_failed)

    if progress:
        console.print(f"sweep [bold]{sweep.name}[/bold]: {len(runs)} runs, "
                      f"{summary.already_done} already in {store.path}, {len(todo)} to run on "
                      f"{runner.describe()}")
    keeper = _LeaseKeeper(store, owner, ttl)
    from cytotune.training.progress import TrainingObserver, observing

    run_progress = (SweepRunProgress(lines.run_text) if plain else
                    SweepRunProgress(lambda text: bar.update(task_id, run=text, eta=work.text()))
                    if progress
                    else TrainingObserver())
    try:
        with bar, observing(run_progress):  # phase and step of an in-process run
            runner.execute(queue, report)
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.not_run = [r.run_id for r in todo if r.run_id in remaining]
        summary.seconds = time.perf_counter() - started
        if progress:
            console.print(f"[yellow]interrupted[/yellow]: {len(summary.completed)} runs recorded "
                          f"in {store.path}, {len(summary.not_run)} left; run the sweep again to "
                          f"resume")
        raise
    finally:
        keeper.stop()
        try:
            store.release_all(owner)
        except (sqlite3.Error, OSError):
            pass  # the leases expire by themselves
        if store_error:
            raise_store_error(store, store_error[0], unsaved, console if progress else None)
    summary.not_run = [r.run_id for r in todo if r.run_id in remaining]
    _robustness_phase(sweep, store, summary, devices)
    summary.seconds = time.perf_counter() - started
    if progress:
        console.print(summary.line())
    return summary


def _robustness_phase(sweep: SweepConfig, store: ResultStore, summary: SweepSummary,
                      devices: Optional[Sequence[str]]) -> None:
    """Every finished run under the sweep's perturbations, if it has any (resumable)."""
    if sweep.robustness:
        from cytotune.experiments.robustness_phase import evaluate_sweep_robustness
        summary.robustness = evaluate_sweep_robustness(sweep, store,
                                                       devices[0] if devices else None)


def _current(in_flight: Mapping[str, str]) -> str:
    labels = list(in_flight.values())
    if not labels:
        return ""
    return labels[0] if len(labels) == 1 else f"{labels[0]} (+{len(labels) - 1} more)"


def _records(store: ResultStore):
    """The store's finished runs with their configs and timings, or None when unreadable."""
    try:
        return store.records(full=True)
    except Exception:  # noqa: BLE001 - the ETA falls back to planned work units
        return None
