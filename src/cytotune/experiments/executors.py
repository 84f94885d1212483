"""Where and how the runs of a sweep execute.

An executor receives *chunks* (lists of :class:`RunTask`, each chunk run in order by one worker)
as a :class:`ChunkQueue` (or a plain list, wrapped in one) and takes each chunk from it only
when a worker is free to start it: the driver's queue may claim the chunk's runs in the store
at that moment (leases, see :mod:`cytotune.experiments.store`), so parallel sweeps on one store
split the work. It reports events back to the driver through a callback: :class:`RunStarted` when a run begins
and :class:`RunOutcome` when it ends (success with a store record, or failure with the error).
The driver (:func:`cytotune.experiments.run_sweep`) writes each outcome to the store as it
arrives; executors never touch the store, so a remote worker needs no access to it.

Every executor runs a task with the same function, :func:`execute_task`, which builds the
TrainConfig, pins the device, runs :func:`cytotune.training.runner.run_training` and turns the
result (or the exception) into a plain, picklable :class:`RunOutcome`.

- :class:`LocalExecutor`: one device: runs in this process, one run at a time. Several devices:
  one spawned worker process per device; each asks the driver for its next chunk when idle (the
  driver hands chunks out from its queue, so it always knows which runs each worker holds). A
  worker that dies (a segfault, the OOM killer) has its in-flight run recorded as failed, the rest
  of its chunk re-queued, and is replaced (while work is left), up to ``max_restarts`` times.

- :class:`cytotune.experiments.ray_executor.RayExecutor` (``"ray"``): one Ray task per chunk on
  a Ray cluster, with its GPU or CPU request and retries.

Executors are found by name in :mod:`cytotune.experiments.executor_registry` (which imports the
Ray one only when it is used), so this module never imports the executors built on it.
"""
from __future__ import annotations

import importlib
import logging
import os
import socket
import time
import traceback as traceback_module
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from cytotune.experiments.store_records import make_record

log = logging.getLogger("cytotune")

WorkerSetup = Union[str, Callable[[], Any], None]
# Set in a worker's environment (e.g. of `ray start` on a node), the cache folder of every run it
# executes, whatever the sweep says: the sweep's ${VARIABLES} are expanded by the driver, so this
# is how a node whose fast local disk has its own path gets its own cache. cache_dir is left out
# of run ids, so the results are the same runs.
NODE_CACHE_ENV = "CYTOTUNE_NODE_CACHE"


@dataclass
class RunTask:
    """What a worker needs to run one run: its key fields and its TrainConfig as a dict."""

    run_id: str
    keys: dict[str, Any]  # sweep, dataset, backbone, method, shots, fraction, seed, lr
    config: dict[str, Any]  # TrainConfig.to_dict()
    label: str = ""  # human-readable, for progress and logs


class ChunkQueue:
    """The chunks of a sweep, handed out one at a time as workers become free.

    :meth:`take` gives the next chunk, or None when nothing can start now; :meth:`exhausted`
    says nothing is left to take, now or later. This plain queue only hands out its chunks; the
    sweep runner's queue also claims each chunk's runs in the store when it is taken and may
    answer None for a while (another worker holds the runs that are left). Executors ask again
    after ``wait_s`` seconds.
    """

    wait_s = 1.0

    def __init__(self, chunks: Sequence[Sequence["RunTask"]] = ()):
        self._pending: deque = deque(list(c) for c in chunks if c)

    def take(self) -> Optional[list["RunTask"]]:
        return self._pending.popleft() if self._pending else None

    def put_back(self, tasks: Sequence["RunTask"]) -> None:
        """Tasks handed out but not run (their worker died): first in line again."""
        if tasks:
            self._pending.appendleft(list(tasks))

    def exhausted(self) -> bool:
        return not self._pending

    def remaining(self) -> int:
        """Tasks not handed out (yet)."""
        return sum(len(c) for c in self._pending)


def as_queue(chunks: Union[ChunkQueue, Sequence[Sequence["RunTask"]]]) -> ChunkQueue:
    return chunks if isinstance(chunks, ChunkQueue) else ChunkQueue(chunks)


@dataclass
class RunStarted:
    run_id: str
    worker: str
    device: Optional[str]


@dataclass
class RunOutcome:
    run_id: str
    ok: bool
    record: Optional[dict[str, Any]] = None  # a store record when ok
    error: Optional[str] = None  # "ExceptionType: message" when not ok
    traceback: Optional[str] = None
    worker: str = ""
    device: Optional[str] = None
    seconds: float = 0.0
    keys: dict[str, Any] = field(default_factory=dict)
    config: Optional[dict[str, Any]] = None


Event = Union[RunStarted, RunOutcome]
Report = Callable[[Event], None]


def resolve_worker_setup(setup: WorkerSetup) -> Optional[Callable[[], Any]]:
    """A setup callable from itself or from a 'module:function' (or 'module.function') name."""
    if setup is None or callable(setup):
        return setup
    module_name, sep, attr = setup.partition(":")
    if not sep:
        module_name, _, attr = setup.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"worker_setup {setup!r}: expected 'package.module:function'")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ValueError(f"worker_setup {setup!r}: {attr} is not a callable of {module_name}")
    return fn


def execute_task(task: RunTask, device: Optional[str] = None, worker: str = "main") -> RunOutcome:
    """Run one task; never raises for a failing run (the error is in the outcome), but lets
    KeyboardInterrupt and SystemExit through."""
    from cytotune.training.runner import run_training

    start = time.perf_counter()
    try:
        config = _config_of(task, device)
        return _succeeded(task, run_training(config), config, worker,
                          time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - a failing run is data, the sweep goes on
        return _failed(task, err, device, worker, start)


def execute_chunk(tasks: Sequence[RunTask], device: Optional[str] = None,
                  worker: str = "main") -> list[RunOutcome]:
    """Run a chunk's tasks; a chunk of several is trained as a group
    (:func:`cytotune.training.group.run_training_group`: shared decode and features for linear
    probes, packed LoRA). Like :func:`execute_task`, never raises for a failing run."""
    if len(tasks) <= 1:
        return [execute_task(task, device, worker) for task in tasks]
    from cytotune.training.group import run_training_group

    start = time.perf_counter()
    configs, outcomes = [], {}
    for task in tasks:
        try:
            configs.append((task, _config_of(task, device)))
        except Exception as err:  # noqa: BLE001 - a bad config fails its run only
            outcomes[task.run_id] = _failed(task, err, device, worker, start)
    results = run_training_group([c for _, c in configs], pack_size=len(configs))
    seconds = (time.perf_counter() - start) / max(1, len(configs))
    for (task, config), result in zip(configs, results):
        if isinstance(result, Exception):
            outcomes[task.run_id] = _failed(task, result, device, worker, start)
            continue
        try:
            outcomes[task.run_id] = _succeeded(task, result, config, worker, seconds)
        except Exception as err:  # noqa: BLE001
            outcomes[task.run_id] = _failed(task, err, device, worker, start)
    return [outcomes[task.run_id] for task in tasks]


def _config_of(task: RunTask, device: Optional[str]):
    """The task's TrainConfig, on ``device`` when one is given, with this process's
    :data:`NODE_CACHE_ENV` as its cache folder when that is set (and the run caches at all)."""
    from cytotune.training.config import TrainConfig

    config = TrainConfig.from_dict(task.config)
    if device is not None:
        config.device = device
    node_cache = os.environ.get(NODE_CACHE_ENV)
    if node_cache and config.cache_dir is not None:
        log.info("run %s: cache folder %s from %s (the sweep names %s)", task.run_id, node_cache,
                 NODE_CACHE_ENV, config.cache_dir)
        config.cache_dir = node_cache
    return config


def _succeeded(task: RunTask, result: Any, config, worker: str, seconds: float) -> RunOutcome:
    record = make_record({"run_id": task.run_id, **task.keys}, result, device=config.device,
                         worker=worker)
    return RunOutcome(run_id=task.run_id, ok=True, record=record, worker=worker,
                      device=config.device, seconds=seconds, keys=task.keys, config=task.config)


def _failed(task: RunTask, err: BaseException, device: Optional[str], worker: str,
            start: float) -> RunOutcome:
    message = f"{type(err).__name__}: {err}"
    log.warning("run %s (%s) failed: %s", task.run_id, task.label, message)
    return RunOutcome(run_id=task.run_id, ok=False, error=message,
                      traceback="".join(traceback_module.format_exception(err)), worker=worker,
                      device=device, seconds=time.perf_counter() - start, keys=task.keys,
                      config=task.config)


class Executor(ABC):
    """Runs chunks of tasks and reports events to the driver, in the driver's thread."""

    name = "executor"

    @abstractmethod
    def execute(self, chunks: Union[ChunkQueue, Sequence[Sequence[RunTask]]],
                report: Report) -> None:
        """Run every task of every chunk (a chunk's tasks in order, on one worker) and call
        ``report`` with a RunStarted and a RunOutcome per task. Chunks are taken from the queue
        (:func:`as_queue`) only when a worker can start them. Returns when the queue is
        exhausted and all taken tasks are reported; on KeyboardInterrupt, stops its workers and
        re-raises."""

    def describe(self) -> str:
        return self.name


class LocalExecutor(Executor):
    """This machine: in-process on one device, or one spawned worker process per device."""

    name = "local"

    def __init__(self, devices: Optional[Sequence[str]] = None, *,
                 worker_setup: WorkerSetup = None, max_restarts: int = 3,
                 start_method: str = "spawn"):
        self.devices = list(devices) if devices else []
        self.worker_setup = worker_setup
        self.max_restarts = int(max_restarts)
        self.start_method = start_method
        if isinstance(worker_setup, str):
            resolve_worker_setup(worker_setup)  # fail now on a bad name, not in every worker

    def describe(self) -> str:
        if len(self.devices) > 1:
            return f"local, {len(self.devices)} worker processes ({', '.join(self.devices)})"
        return f"local, in process ({self.devices[0] if self.devices else 'config device'})"

    def execute(self, chunks: Union[ChunkQueue, Sequence[Sequence[RunTask]]],
                report: Report) -> None:
        queue = as_queue(chunks)
        if len(self.devices) <= 1:
            self._execute_here(queue, report)
        else:
            _ProcessPool(self, queue, report).run()

    def _execute_here(self, queue: ChunkQueue, report: Report) -> None:
        device = self.devices[0] if self.devices else None
        setup = resolve_worker_setup(self.worker_setup)
        if setup is not None:
            setup()
        worker = f"{socket.gethostname()}:{os.getpid()}"
        while not queue.exhausted():
            chunk = queue.take()
            if chunk is None:  # what is left is held by other workers for now
                time.sleep(queue.wait_s)
                continue
            for task in chunk:
                report(RunStarted(task.run_id, worker, device))
            for outcome in execute_chunk(chunk, device, worker):
                report(outcome)


# ---- worker processes ---------------------------------------------------------------------------
# Each worker talks to the driver over its own duplex pipe (not a queue shared by all workers):
# a worker killed in the middle of a message (segfault, OOM killer) can then only break its own
# channel, never block the others on a lock it died holding.
def _worker_main(device: str, conn, setup: WorkerSetup, parent_pid: int,
                 threads: Optional[int]) -> None:
    """A worker process: set up, then ask for chunks and run them until told to stop."""
    worker = f"{socket.gethostname()}:{os.getpid()}/{device}"
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        fn = resolve_worker_setup(setup)
        if fn is not None:
            fn()
    except BaseException:  # noqa: BLE001 - reported to the driver, which stops the sweep
        conn.send(("setup_failed", traceback_module.format_exc()))
        return
    try:
        while True:
            conn.send(("ready", None))
            while not conn.poll(1.0):
                if os.getppid() != parent_pid:  # the driver is gone: stop
                    return
            chunk = conn.recv()
            if chunk is None:
                return
            for task in chunk:
                conn.send(("started", RunStarted(task.run_id, worker, device)))
            for outcome in execute_chunk(chunk, device, worker):
                conn.send(("outcome", outcome))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return


@dataclass
class _Slot:
    device: str
    process: Any
    conn: Any  # the driver's end of the worker's pipe
    held: deque = field(default_factory=deque)  # tasks handed to this worker, not yet reported
    stopping: bool = False  # told to stop (no work left when it asked)
    waiting: bool = False  # asked for work when none could start: answer it when some can
    seen_ready: bool = False  # set up and asked for work at least once
    broken: bool = False  # its pipe closed or broke: the process is dead or dying


class _ProcessPool:
    """Driver side of LocalExecutor's worker processes."""

    def __init__(self, executor: LocalExecutor, queue: ChunkQueue, report: Report):
        import multiprocessing

        self.executor = executor
        self.report = report
        self.ctx = multiprocessing.get_context(executor.start_method)
        self.queue = queue
        self.slots: list[_Slot] = []
        self.restarts = 0
        cpu_workers = sum(1 for d in executor.devices if d == "cpu")
        self.cpu_threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None

    def _start(self, device: str) -> None:
        ours, theirs = self.ctx.Pipe(duplex=True)
        threads = self.cpu_threads if device == "cpu" else None
        process = self.ctx.Process(
            target=_worker_main, name=f"cytotune-worker-{device}",
            args=(device, theirs, self.executor.worker_setup, os.getpid(), threads), daemon=True)
        process.start()
        theirs.close()  # the worker holds it now; our copy would hide the worker's death
        self.slots.append(_Slot(device, process, ours))

    def _work_left(self) -> bool:
        return not self.queue.exhausted() or any(slot.held for slot in self.slots)

    def run(self) -> None:
        from multiprocessing.connection import wait

        try:
            for device in self.executor.devices:
                self._start(device)
            while self._work_left():
                live = {slot.conn: slot for slot in self.slots if not slot.broken}
                for conn in wait(list(live), timeout=1.0):
                    self._receive(live[conn])
                for slot in self.slots:
                    if slot.waiting and not slot.broken:
                        self._hand_out(slot)
                self._check_deaths()
                if not self.queue.exhausted() and not any(s.process.is_alive() and not s.stopping
                                                          for s in self.slots):
                    raise RuntimeError(f"{self.queue.remaining()} runs were not run: no worker "
                                       f"process is left to run them")
        finally:
            self._shutdown()

    def _receive(self, slot: _Slot) -> None:
        try:
            kind, payload = slot.conn.recv()
        except Exception:  # noqa: BLE001 - EOF, or a message cut short by the worker's death
            slot.broken = True

            return
        if kind == "ready":
            slot.seen_ready = True
            self._hand_out(slot)
        elif kind == "started":
            self.report(payload)
        elif kind == "outcome":
            slot.held = deque(t for t in slot.held if t.run_id != payload.run_id)
            self.report(payload)
        elif kind == "setup_failed":
            slot.stopping = True
            raise RuntimeError(f"worker setup failed on {slot.device}:\n{payload}")

    def _hand_out(self, slot: _Slot) -> None:
        """Answer a worker's request for work: a chunk, stop (nothing left) or later."""
        chunk = self.queue.take()
        if chunk:
            slot.waiting = False
            slot.held.extend(chunk)
            self._send(slot, chunk)
        elif self.queue.exhausted():
            slot.waiting = False
            slot.stopping = True
            self._send(slot, None)
        else:
            slot.waiting = True

    @staticmethod
    def _send(slot: _Slot, message: Any) -> None:
        try:
            slot.conn.send(message)
        except (OSError, ValueError):
            slot.broken = True

    def _check_deaths(self) -> None:
        for slot in list(self.slots):
            if slot.process.is_alive() and not slot.broken:
                continue
            if slot.process.is_alive():  # broken pipe but not yet exited
                slot.process.join(5.0)
                if slot.process.is_alive():
                    slot.process.terminate()
                    slot.process.join(2.0)
            while not slot.broken and slot.conn.poll(0):  # its last messages
                self._receive(slot)
            self.slots.remove(slot)
            slot.conn.close()
            code = slot.process.exitcode
            held = list(slot.held)
            if not held:
                if not slot.stopping:
                    log.warning("idle worker on %s exited with code %s", slot.device, code)
                    self._maybe_restart(slot.device, code)
                continue
            # the first task it held was in flight (its "started" message may not have made it):
            # record it as failed, so a run that kills its worker cannot take down one worker
            # after another; put the rest back in front of the queue
            lost, rest = held[0], held[1:]
            log.warning("worker on %s died (exit code %s) during run %s", slot.device, code,
                        lost.label or lost.run_id)
            self.report(RunOutcome(
                run_id=lost.run_id, ok=False, worker=f"pid {slot.process.pid}", device=slot.device,
                error=f"WorkerDied: the worker process on {slot.device} exited with code {code} "
                      f"during this run", keys=lost.keys, config=lost.config))
            if rest:
                self.queue.put_back(rest)
            self._maybe_restart(slot.device, code)

    def _maybe_restart(self, device: str, code: Any) -> None:
        if not self.queue.exhausted() and self.restarts < self.executor.max_restarts:
            self.restarts += 1
            self._start(device)

    def _shutdown(self) -> None:
        """Stop the workers: idle ones are told to stop; ones still starting up (they hold
        nothing) are terminated at once; anything still running after 5 s is terminated."""
        for slot in self.slots:
            if not slot.process.is_alive():
                continue
            if not slot.seen_ready:
                slot.process.terminate()
            elif not slot.stopping:
                self._send(slot, None)
        deadline = time.monotonic() + 5.0
        for slot in self.slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.terminate()
                slot.process.join(2.0)
            slot.conn.close()
