"""Phase markers and kill points for scripts/fault_injection.py (not part of cytotune).

A sweep process started by the fault-injection script imports this module and calls
:func:`install` before ``cytotune.cli.main``. It wraps the places where a kill matters (store
claims, commits and lease renewals, run-folder staging, writing and publishing, cache writes,
reading a published run back) and the training phases the run reports to its observer
(decoding, features, training, evaluation), and appends one line per boundary to the file
named by ``FAULT_PHASE_LOG``::

    TIME PID THREAD EVENT NAME [RUN_ID]

EVENT is ``B``/``E``/``X`` (a span begins / ends / ends by an exception), ``P`` (the run's
observer entered a phase) or ``K`` (this process kills itself now). The lines go straight to
the kernel with ``os.write`` on an ``O_APPEND`` descriptor, so a SIGKILL loses none. The
library is not changed: everything is wrapped from outside, in the child process only.

``FAULT_KILL_AT=NAME|K|DELAY|SIGNAL`` makes the process send itself SIGNAL DELAY seconds after
the K-th begin of span (or observer phase) NAME: at once, in the thread that reached it, when
DELAY is 0, else from a timer thread, which kills only while NAME still runs (else it waits
for NAME's next begin, with half the delay). ``after SPAN`` as NAME: at the K-th end of SPAN.

:func:`read_log`, :func:`phase_at` and :func:`trained_again` read such a log back (the script's
side): the phase a kill landed in, and the runs trained again after they were published.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

LOG_ENV, KILL_ENV = "FAULT_PHASE_LOG", "FAULT_KILL_AT"

START_UP = "start-up (imports, reading the sweep)"
LEASE_RENEWAL = "lease renewal"
SWEEP_END = "sweep end (releasing its leases)"
EXITING = "exiting (the sweep's work done)"
# span name: (module, attribute) pairs it wraps; a run id is read from RunWriter's out_dir
SPANS: dict[str, tuple[tuple[str, str], ...]] = {
    "store claim": (("cytotune.experiments.store", "ResultStore.claim"),),
    "store commit": (("cytotune.experiments.store", "ResultStore.insert"),
                     ("cytotune.experiments.store", "ResultStore.record_failure")),
    "store release": (("cytotune.experiments.store", "ResultStore.release"),),
    SWEEP_END: (("cytotune.experiments.store", "ResultStore.release_all"),),
    LEASE_RENEWAL: (("cytotune.experiments.store", "ResultStore.renew"),),
    "run-folder staging": (("cytotune.training.rundir", "RunWriter.__init__"),),
    "writing the run folder": (("cytotune.training.runner", "_write_run"),
                               ("cytotune.training.group", "_write_run")),
    "publishing the run folder": (("cytotune.training.rundir", "RunWriter.commit"),),
    "cache write": (("cytotune.data.cachefiles", "write_atomic"),),
    "decoding into the image cache": (("cytotune.data.image_store",
                                       "ImageStore._decode_and_store"),),
    "read-back check of the run folder": (("cytotune.experiments.runner", "read_finished_run"),),
}
OBSERVER_PHASES = ("decoding", "features", "training", "evaluation")
# spans after which the main thread is "between" things until the next phase or span
_ENDING = {"store claim", "store commit", "store release", SWEEP_END, "run-folder staging",
           "writing the run folder", "publishing the run folder",
           "read-back check of the run folder"}


# ---------------------------------------------------------------- the child's side (install)
class _Marker:
    """Writes the marks; at a kill point, kills this process (see the module docstring)."""

    def __init__(self, path: str, kill_at: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.open: dict[str, int] = {}  # spans in flight, by name
        self.phase: Optional[str] = None  # the observer's phase, until an ending span
        self.target: Optional[str] = None
        if kill_at:  # "NAME|K|DELAY|SIGNAL"; NAME "after SPAN": at the K-th end of SPAN
            name, k, delay, sig = kill_at.split("|")
            self.target, self.arm_at, self.delay, self.sig = name, int(k), float(delay), int(sig)
            self.trigger = ("E", name[len("after "):]) if name.startswith("after ") else \
                ("BP", name)
            self.pending = False

    def mark(self, event: str, name: str, run_id: str = "") -> None:
        thread = threading.current_thread().name.replace(" ", "_")
        line = (f"{time.time():.6f} {os.getpid()} {thread} {event} "
                f"{name.replace(' ', '_')} {run_id}".rstrip() + "\n")
        os.write(self.fd, line.encode())
        with self.lock:
            if event == "B":
                self.open[name] = self.open.get(name, 0) + 1
                if thread == "MainThread" and name in _ENDING:
                    self.phase = None
            elif event in "EX":
                self.open[name] = self.open.get(name, 1) - 1
            elif event == "P":
                self.phase = name
            if self.target is None or event not in self.trigger[0] or name != self.trigger[1]:
                return
            self.counts[name] = self.counts.get(name, 0) + 1
            arm = self.counts[name] >= self.arm_at and not self.pending
            self.pending = self.pending or arm
        if arm:
            if self.delay <= 0:
                self._fire()
            else:
                threading.Timer(self.delay, self._fire).start()

    def _fire(self) -> None:
        """Kill now if the target phase still runs (or was aimed at with no delay); else aim at
        its next occurrence with half the delay (a timer overshot a phase shorter than in the
        calibration sweep)."""
        with self.lock:
            name = self.trigger[1]
            running = self.open.get(name, 0) > 0 or self.phase == name
            if self.delay > 0 and not running:
                self.pending = False
                self.arm_at = self.counts.get(name, 0) + 1
                self.delay = self.delay / 2 if self.delay > 0.001 else 0.0
                return
        self.mark("K", signal.Signals(self.sig).name)
        os.kill(os.getpid(), self.sig)


def _span(marker: _Marker, name: str, fn: Callable) -> Callable:
    if getattr(fn, "_fault_span", False):  # imported from a module wrapped already
        return fn

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out_dir", args[1] if len(args) > 1 else None)
        run_id = (Path(str(out)).name if name == "run-folder staging" and out is not None else
                  args[0].out_dir.name if name == "publishing the run folder" else "")
        marker.mark("B", name, run_id)
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            marker.mark("X", name, run_id)
            raise
        marker.mark("E", name, run_id)
        return result
    wrapped._fault_span = True  # type: ignore[attr-defined]
    return wrapped


def install() -> None:
    """Wrap the spans and the observer when ``FAULT_PHASE_LOG`` is set (else do nothing)."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    marker = _Marker(path, os.environ.get(KILL_ENV, ""))
    for name, places in SPANS.items():
        for module_name, attribute in places:
            owner: Any = importlib.import_module(module_name)
            *parents, leaf = attribute.split(".")
            for part in parents:
                owner = getattr(owner, part)
            setattr(owner, leaf, _span(marker, name, getattr(owner, leaf)))

    from cytotune.training import progress

    original = progress.observing

    class Tap(progress.TrainingObserver):
        """Forwards every event to the sweep's observer, marking phase changes."""

        def __init__(self, inner: progress.TrainingObserver):
            self.inner = inner

        def __getattr__(self, attr: str) -> Any:
            return getattr(self.inner, attr)

        def planned(self, steps: int, detail: str = "") -> None:
            self.inner.planned(steps, detail)

        def phase(self, name: str, total: Optional[int] = None) -> None:
            marker.mark("P", name)
            self.inner.phase(name, total)

        def advance(self, done: int) -> None:
            self.inner.advance(done)

        def reused(self, done: int) -> None:
            self.inner.reused(done)

        def step(self, step: int, steps: int) -> None:
            self.inner.step(step, steps)

        def evaluation(self, step: int, metrics: dict[str, float]) -> None:
            self.inner.evaluation(step, metrics)

        def finished(self) -> None:
            self.inner.finished()

    @contextlib.contextmanager
    def observing(obs: progress.TrainingObserver) -> Iterator[progress.TrainingObserver]:
        with original(Tap(obs)):
            yield obs

    progress.observing = observing


# ---------------------------------------------------------------- the script's side (reading)
@dataclass
class Mark:
    time: float
    pid: int
    thread: str
    event: str
    name: str
    run_id: str = ""


def read_log(path: Path) -> list[Mark]:
    """The lines of a phase log (a torn last line of a killed process is skipped)."""
    marks = []
    if not path.exists():
        return marks
    for line in path.read_text(errors="replace").split("\n")[:-1]:  # whole lines only
        parts = line.split()
        if len(parts) < 5:
            continue
        try:
            marks.append(Mark(float(parts[0]), int(parts[1]), parts[2], parts[3],
                              parts[4].replace("_", " "), parts[5] if len(parts) > 5 else ""))
        except ValueError:
            continue
    return marks


def phase_at(marks: list[Mark], pid: int, at: float) -> str:
    """What process ``pid`` was doing at time ``at``: a lease renewal in flight in any thread,
    else the innermost open span of its main thread, else the observer's phase or ``after
    SPAN`` (the last span that ended), else start-up."""
    open_spans: dict[str, list[str]] = {}
    state = START_UP
    for m in marks:
        if m.pid != pid or m.time > at:
            continue
        stack = open_spans.setdefault(m.thread, [])
        if m.event == "B":
            stack.append(m.name)
        elif m.event in "EX":
            if m.name in stack:
                del stack[len(stack) - 1 - stack[::-1].index(m.name)]
            if m.thread == "MainThread" and m.name in _ENDING and not stack:
                state = EXITING if m.name == SWEEP_END else f"after {m.name}"
        elif m.event == "P" and m.thread == "MainThread":
            state = m.name
    if any(LEASE_RENEWAL in s for s in open_spans.values()):
        return LEASE_RENEWAL
    main = open_spans.get("MainThread", [])
    if main:
        return main[-1]
    return state


def kill_mark(marks: list[Mark], pid: int) -> Optional[Mark]:
    """The ``K`` line of process ``pid`` (it killed itself), else None."""
    return next((m for m in marks if m.pid == pid and m.event == "K"), None)


def first_claim(marks: list[Mark], pid: int) -> Optional[float]:
    return next((m.time for m in marks if m.pid == pid and m.event == "B"
                 and m.name == "store claim"), None)


def trained_again(marks: list[Mark]) -> tuple[list[str], list[str]]:
    """(runs started again after they were published: duplicate work; runs started more than
    once in all: including the runs in flight at a kill, which are redone by design)."""
    published: set[str] = set()
    starts: dict[str, int] = {}
    again: list[str] = []
    for m in sorted(marks, key=lambda m: m.time):
        if not m.run_id:
            continue
        if m.event == "B" and m.name == "run-folder staging":
            starts[m.run_id] = starts.get(m.run_id, 0) + 1
            if m.run_id in published and m.run_id not in again:
                again.append(m.run_id)
        elif m.event == "E" and m.name == "publishing the run folder":
            published.add(m.run_id)
    return again, sorted(r for r, n in starts.items() if n > 1)


def occurrences(marks: list[Mark], pid: int) -> dict[str, list[float]]:
    """For each span / observer phase name: how long each of its occurrences in process
    ``pid`` lasted (an observer phase: until the next phase or ending span of the main
    thread), in order. Used to place kill points after an unkilled calibration sweep."""
    found: dict[str, list[float]] = {}
    opened: dict[tuple[str, str], list[tuple[int, float]]] = {}
    current: Optional[tuple[str, int, float]] = None
    for m in (m for m in marks if m.pid == pid):
        if m.event == "B":
            found.setdefault(m.name, []).append(0.0)
            opened.setdefault((m.thread, m.name), []).append((len(found[m.name]) - 1, m.time))
        elif m.event in "EX" and opened.get((m.thread, m.name)):
            index, began = opened[(m.thread, m.name)].pop()
            found[m.name][index] = m.time - began
        if m.thread == "MainThread" and (m.event == "P" or (m.event == "B"
                                                              and m.name in _ENDING)):
            if current is not None:
                found[current[0]][current[1]] = m.time - current[2]
                current = None
            if m.event == "P":
                found.setdefault(m.name, []).append(0.0)
                current = (m.name, len(found[m.name]) - 1, m.time)
    return found
