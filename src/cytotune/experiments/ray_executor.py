"""Run a sweep on a Ray cluster (``run_sweep(..., executor="ray")``, ``cytotune sweep --executor ray``).

One Ray task per chunk (a single run, or the linear-probe runs sharing a data set and backbone,
run in order so the later ones read the features the first one cached). Each task runs
:func:`cytotune.experiments.executors.execute_task` on a Ray worker and returns the plain
:class:`RunOutcome` objects; the driver reports them (and the runner writes them to the store),
so Ray workers never touch the store and need no access to it.

Resources: a task asks for ``gpus_per_run`` GPUs (default 1) when its run's device is ``cuda``,
``cuda:N`` or ``auto`` and the cluster has GPUs (``use_gpus=None``, the default; True / False
force it), else ``cpus_per_run`` CPUs (default 1). On a GPU the run's device is pinned to
``cuda`` (Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPU it assigned); without one, ``auto`` is
pinned to ``cpu``.

Failures:
- a worker that dies (segfault, OOM killer, node lost) has its task re-run by Ray, up to
  ``max_retries`` times (Ray's own task retries; an exception escaping the task, e.g. from the
  worker set-up, is retried too: ``retry_exceptions``);
- a run that raises is retried in its worker ``run_retries`` times (default 1) and then returned
  as a failed outcome, which the runner records in the store's failures table;
- a chunk of several runs that still fails after Ray's retries is split and each of its runs
  tried again as a task of its own, so one run that kills its worker every time fails alone;
- a task that finally fails has each of its not yet reported runs reported as failed.
Chunks are taken from the sweep's queue (which claims their runs in the store, see
:mod:`cytotune.experiments.store`) only while fewer tasks are in flight than the cluster can run
at once (``max_in_flight``, default: its GPUs / ``gpus_per_run`` or CPUs / ``cpus_per_run``), so a
second sweep on the same store takes the runs this one has not started. The driver holds the
leases and heartbeats them; a Ray worker never touches the store. A run's RunStarted is reported
when its task is submitted (Ray queues the task until its resources are free). Each run's outcome is reported exactly once (the driver ignores any second outcome of a run id; the
store's INSERT OR IGNORE would absorb a duplicate anyway).

Nodes: a task runs with the cache folder its run names, resolved in the Ray worker (a relative
``cache_dir`` in the worker's working directory, the folder its node's ``ray start`` ran in;
``CYTOTUNE_NODE_CACHE`` in a node's environment replaces it there, see
:data:`cytotune.experiments.executors.NODE_CACHE_ENV`): a node's later tasks reuse what its
earlier ones cached, and no node's cache is assumed visible on another (a task that finds
nothing builds its own entry). Each outcome's worker label names the Ray node
(``host:pid@node:<id>``, :func:`worker_label`) and the driver logs the runs finished per node.
Tested with two nodes on one machine in ``tests/experiments/test_ray_cluster.py``.

``ray`` is imported only when a RayExecutor is used (``pip install "cytotune[ray]"``); the
executor is registered lazily as ``"ray"`` in :mod:`cytotune.experiments.executor_registry`.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Mapping, Optional, Sequence

from cytotune.experiments.executors import (ChunkQueue, Executor, Report, RunOutcome, RunStarted,
                                            RunTask, WorkerSetup, as_queue, execute_chunk,
                                            execute_task, resolve_worker_setup)

log = logging.getLogger("cytotune")

_GPU_DEVICES = ("auto", "cuda")
NODE_PREFIX = "node:"  # in a worker label: the Ray node a run ran on


def _import_ray():
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the ray executor needs Ray: pip install 'cytotune[ray]' "
                          "(or pip install 'ray>=2.9')") from err
    return ray


# ---- worker side --------------------------------------------------------------------------------
_SETUP_DONE: set[Any] = set()  # per worker process: the set-ups already run


def _setup_key(setup: WorkerSetup) -> Any:
    if isinstance(setup, str):
        return setup
    return (getattr(setup, "__module__", None), getattr(setup, "__qualname__", repr(setup)))


def run_chunk(tasks: Sequence[RunTask], device: Optional[str], setup: WorkerSetup,
              run_retries: int, cpu_threads: Optional[int]) -> list[RunOutcome]:
    """The body of a Ray task: set the worker up (once per worker process), then run the chunk's
    tasks in order; a failing run is tried ``run_retries`` more times before its failed outcome
    is returned."""
    if setup is not None:
        key = _setup_key(setup)
        if key not in _SETUP_DONE:
            fn = resolve_worker_setup(setup)
            if fn is not None:
                fn()
            _SETUP_DONE.add(key)
    if cpu_threads:
        import torch

        torch.set_num_threads(cpu_threads)
    worker = worker_label(device)
    outcomes = []
    # the chunk trains as a group; a run that fails there is retried alone
    for task, outcome in zip(tasks, execute_chunk(tasks, device, worker)):
        for attempt in range(max(0, int(run_retries))):
            if outcome.ok:
                break
            log.warning("run %s failed (attempt %d of %d), retrying: %s", task.run_id,
                        attempt + 1, run_retries + 1, outcome.error)
            outcome = execute_task(task, device, worker)
        outcomes.append(outcome)
    return outcomes


def worker_label(device: Optional[str]) -> str:
    """``host:pid@node:<Ray node id, 8 hex>`` (``/gpuN`` added on a GPU): the node id tells
    runs of two Ray nodes apart even when they share a host name (several nodes on one machine,
    containers with one name), so a store can be counted per node."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()
        if node:
            worker += f"@{NODE_PREFIX}{node[:8]}"
        if device == "cuda":
            gpus = ray.get_gpu_ids()
            if gpus:
                worker += f"/gpu{','.join(str(g) for g in gpus)}"
    except Exception:  # noqa: BLE001 - only a label
        pass
    return worker


def node_of(worker: str) -> Optional[str]:
    """The short Ray node id in a :func:`worker_label`, or None."""
    _, sep, rest = worker.partition("@" + NODE_PREFIX)
    return rest.split("/", 1)[0] if sep else None


# ---- driver side --------------------------------------------------------------------------------
class RayExecutor(Executor):
    """Runs each chunk as a Ray task; see the module docstring."""

    name = "ray"

    def __init__(self, devices: Optional[Sequence[str]] = None, *, address: Optional[str] = None,
                 worker_setup: WorkerSetup = None, gpus_per_run: float = 1,
                 cpus_per_run: float = 1, use_gpus: Optional[bool] = None, max_retries: int = 3,
                 retry_exceptions: bool = True, run_retries: int = 1, split_failed_chunks: bool = True,
                 init_options: Optional[Mapping[str, Any]] = None,
                 shutdown: Optional[bool] = None, max_in_flight: Optional[int] = None):
        if devices and len(set(devices)) > 1:
            raise ValueError("the ray executor places runs on the cluster's GPUs itself: give at "
                             "most one --devices value (cpu, cuda or auto) to pin every run's "
                             f"device, not {list(devices)}")
        self.device = devices[0] if devices else None
        self.address = address
        self.worker_setup = worker_setup
        self.gpus_per_run = float(gpus_per_run)
        self.cpus_per_run = float(cpus_per_run)
        self.use_gpus = use_gpus
        self.max_retries = int(max_retries)
        self.retry_exceptions = bool(retry_exceptions)
        self.run_retries = int(run_retries)
        self.split_failed_chunks = bool(split_failed_chunks)
        self.init_options = dict(init_options or {})
        self.shutdown = shutdown  # None: shut down (disconnect) only if this executor connected
        self.max_in_flight = max_in_flight  # None: what the cluster can run at once
        self._cluster_gpus = 0.0
        self._cluster_cpus = 0.0
        self.runs_per_node: dict[str, int] = {}  # short node id -> runs finished there
        if isinstance(worker_setup, str):
            resolve_worker_setup(worker_setup)  # fail now on a bad name, not in every worker

    def describe(self) -> str:
        where = self.address or os.environ.get("RAY_ADDRESS") or "local Ray instance"
        return f"ray ({where}), one task per run"

    # ---- resources
    def _plan(self, chunk: Sequence[RunTask]) -> tuple[dict[str, Any], Optional[str], Optional[int]]:
        """Ray options, the device to pin and the torch threads of one chunk's task."""
        wanted = self.device or str(chunk[0].config.get("device") or "auto")
        has_gpus = self._cluster_gpus > 0 if self.use_gpus is None else self.use_gpus
        if has_gpus and wanted.split(":")[0] in _GPU_DEVICES and self.gpus_per_run > 0:
            return {"num_gpus": self.gpus_per_run, "num_cpus": self.cpus_per_run}, "cuda", None
        device = "cpu" if wanted == "auto" else (self.device or None)
        return ({"num_cpus": self.cpus_per_run}, device,
                max(1, int(self.cpus_per_run)) if wanted in ("auto", "cpu") else None)

    def _capacity(self) -> int:
        """Tasks in flight at once: what the cluster can run (never fewer than one)."""
        if self.max_in_flight is not None:
            return max(1, int(self.max_in_flight))
        has_gpus = self._cluster_gpus > 0 if self.use_gpus is None else self.use_gpus
        if has_gpus and self.gpus_per_run > 0:
            return max(1, int(self._cluster_gpus // self.gpus_per_run))
        return max(1, int(self._cluster_cpus // max(self.cpus_per_run, 1e-9)))

    # ---- run
    def execute(self, chunks: ChunkQueue | Sequence[Sequence[RunTask]], report: Report) -> None:
        ray = _import_ray()
        started_here = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": True, **self.init_options}
            ray.init(address=self.address, **options)
            started_here = True
        try:
            resources = ray.cluster_resources()
            self._cluster_gpus = float(resources.get("GPU", 0))
            self._cluster_cpus = float(resources.get("CPU", 1))
            self.runs_per_node = {}
            self._run(ray, as_queue(chunks), report)
            self._log_nodes(ray)
        finally:
            if self.shutdown or (self.shutdown is None and started_here):
                ray.shutdown()

    def _run(self, ray, queue: ChunkQueue, report: Report) -> None:
        remote = ray.remote(run_chunk)
        reported: set[str] = set()
        pending: dict[Any, tuple[list[RunTask], bool, str]] = {}  # ref -> (chunk, split, device)

        def submit(chunk: list[RunTask], split: bool) -> None:
            options, device, threads = self._plan(chunk)
            name = (chunk[0].label or chunk[0].run_id)[:100]
            ref = remote.options(max_retries=self.max_retries,
                                 retry_exceptions=self.retry_exceptions, name=name,
                                 **options).remote(chunk, device, self.worker_setup,
                                                   self.run_retries, threads)
            pending[ref] = (chunk, split, device or "")
            for task in chunk:
                report(RunStarted(task.run_id, "ray", device))

        def deliver(outcome: RunOutcome) -> None:
            if outcome.run_id in reported:
                return
            reported.add(outcome.run_id)
            node = node_of(outcome.worker) if outcome.ok else None
            if node:
                self.runs_per_node[node] = self.runs_per_node.get(node, 0) + 1
            report(outcome)

        capacity = self._capacity()
        try:
            while pending or not queue.exhausted():
                while len(pending) < capacity:  # take work only when it can start
                    chunk = queue.take()
                    if not chunk:
                        break
                    submit(chunk, False)
                if not pending:  # what is left is held by other workers for now
                    time.sleep(queue.wait_s)
                    continue
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    chunk, split, device = pending.pop(ref)
                    try:
                        outcomes = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        left = [t for t in chunk if t.run_id not in reported]
                        if self.split_failed_chunks and not split and len(left) > 1:
                            log.warning("ray task of %d runs failed (%s); trying each run alone",
                                        len(left), type(err).__name__)
                            for task in left:
                                submit([task], True)
                            continue
                        message = _first_line(err)
                        for task in left:
                            log.warning("run %s (%s) failed on ray: %s", task.run_id, task.label,
                                        message)
                            deliver(RunOutcome(
                                run_id=task.run_id, ok=False, worker="ray", device=device or None,
                                error=f"RayTaskFailed: {type(err).__name__}: {message}",
                                traceback=str(err), keys=task.keys, config=task.config))
                        continue
                    for outcome in outcomes:
                        deliver(outcome)
                    for task in chunk:  # a chunk returns an outcome per task; never leave one out
                        if task.run_id not in reported:
                            deliver(RunOutcome(run_id=task.run_id, ok=False, worker="ray",
                                               error="RayTaskFailed: no outcome returned",
                                               keys=task.keys, config=task.config))
        except KeyboardInterrupt:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            raise

    def _log_nodes(self, ray) -> None:
        """One line: the runs finished on each Ray node (id, address), e.g. to see a sweep
        spread over the cluster."""
        if not self.runs_per_node:
            return
        try:
            where = {n["NodeID"][:8]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
        except Exception:  # noqa: BLE001 - only a log line
            where = {}
        log.info("runs finished per ray node: %s", ", ".join(
            f"{node} ({where.get(node, '?')}): {count}"
            for node, count in sorted(self.runs_per_node.items())))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # RayTaskError's text ends with the original exception's "Type: message" line
    return (lines[-1] if lines else type(err).__name__)[:500]


__all__ = ["RayExecutor", "run_chunk"]
