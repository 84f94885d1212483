"""What the run in flight is doing, shown in a sweep's progress bar (in-process runs only).

A sweep's bar counts runs; a single run can take most of an hour on a CPU, so the bar also shows
the phase and step of the run being trained, from the training observer events
(:mod:`cytotune.training.progress`). Runs in worker processes report nothing here (their events
stay in their process); the bar still counts them.

Off a terminal (a log file, a batch job) rich draws the bar once, at the end, so a sweep over
50k images would say nothing for hours: :class:`PlainSweepLines` writes plain lines instead.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Optional

from cytotune.training.progress import TrainingObserver, duration


class SweepRunProgress(TrainingObserver):
    """Calls ``show(text)`` with e.g. "training 120/450 val acc 0.625", at most every
    ``interval_s`` seconds (a phase change always shows)."""

    def __init__(self, show: Callable[[str], None], interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.show, self.interval_s, self.clock = show, interval_s, clock
        self.name, self.total, self.done, self.metric = "", None, 0, ""
        self._last = -float("inf")

    def text(self) -> str:
        count = f" {self.done}/{self.total}" if self.total else ""
        return f"{self.name}{count}" + (f" {self.metric}" if self.metric else "")

    def _show(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last >= self.interval_s:
            self._last = now
            self.show(self.text())

    def phase(self, name: str, total: Optional[int] = None) -> None:
        self.name, self.total, self.done = name, total, 0
        if name == "decoding":
            self.metric = ""  # a new run (or group) starts
        self._show(force=True)

    def advance(self, done: int) -> None:
        self.done += done
        self._show()

    def step(self, step: int, steps: int) -> None:
        self.done, self.total = step, steps
        self._show(force=step == steps)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        if "val_accuracy" in metrics:
            self.metric = f"val acc {metrics['val_accuracy']:.3f}"

    def finished(self) -> None:
        self.show("")


class WorkETA:
    """A sweep's ETA weighted by each run's planned work (:mod:`.work`), not by run count: a
    sweep whose cheap linear runs come first does not promise minutes before an hour of LoRA.
    ``weights``: run id -> planned work (estimated seconds or work units; only ratios count);
    a run missing from it weighs the mean of the others. ``seconds``: the weights are estimated
    seconds, so the ETA starts from them and leans on the measured pace as work gets done
    (one run's start-up costs do not multiply the whole sweep's estimate).

    ``kinds``: run id -> its kind (backbone and method). The pace is then measured per kind,
    because an estimate is wrong by a different factor per kind (a calibration made under load
    overstates LoRA far more than the linear probe): the runs left of a kind already seen go at
    that kind's measured pace alone, the others at the pace over all work so far. A run's time is the
    wall time since the previous run ended (runs of a group, which end together, share it), so
    with several workers at once the per-kind split is approximate."""

    PRIOR = 0.1  # with seconds: the estimate counts as this share of the sweep already measured

    def __init__(self, weights: Mapping[str, float], clock: Callable[[], float] = time.monotonic,
                 seconds: bool = False, kinds: Optional[Mapping[str, str]] = None):
        known = [float(w) for w in weights.values() if w and w > 0]
        self.default = sum(known) / len(known) if known else 1.0
        self.weights = dict(weights)
        self.kinds = dict(kinds or {})
        self.total = sum(self.weight(r) for r in self.weights) or 1.0
        self.done_work = 0.0
        self.prior = self.PRIOR * self.total if seconds else 0.0
        self.clock = clock
        self.started = self.last_end = clock()
        self.left = set(self.weights)
        self.kind_time: dict[str, float] = {}  # measured seconds per kind
        self.kind_work: dict[str, float] = {}  # planned work done per kind

    def weight(self, run_id: str) -> float:
        w = self.weights.get(run_id)
        return float(w) if w and w > 0 else self.default

    def run_done(self, run_id: str) -> None:
        now = self.clock()
        self.done_work += self.weight(run_id)
        self.left.discard(run_id)
        kind = self.kinds.get(run_id)
        if kind is not None:
            self.kind_time[kind] = self.kind_time.get(kind, 0.0) + (now - self.last_end)
            self.kind_work[kind] = self.kind_work.get(kind, 0.0) + self.weight(run_id)
        self.last_end = now

    def drop(self, run_id: str) -> None:
        """A run settled without work here (done by another worker, read back): no time spent,
        and no longer left to do."""
        self.total = max(self.done_work, self.total - self.weight(run_id))
        self.left.discard(run_id)

    def fraction(self) -> float:
        return min(1.0, self.done_work / self.total)

    def eta(self) -> Optional[float]:
        """Seconds left: work left x the pace so far (elapsed / work done, with seconds
        weights shrunk towards the estimate's own pace), per kind where runs of that kind have
        ended; None before any run ended."""
        if self.done_work <= 0 or self.done_work >= self.total:
            return None
        elapsed = self.clock() - self.started
        pace = (elapsed + self.prior) / (self.done_work + self.prior)
        if not self.kinds:
            return pace * (self.total - self.done_work)
        left = 0.0
        for run_id in self.left:
            kind = self.kinds.get(run_id)
            if kind in self.kind_work and self.kind_work[kind] > 0:
                # the kind's own measured pace: an estimate that is off for this kind (by 8x,
                # seen) would keep pulling the ETA away for the rest of the sweep
                left += self.weight(run_id) * self.kind_time[kind] / self.kind_work[kind]
            else:
                left += self.weight(run_id) * pace
        return left

    def text(self) -> str:
        eta = self.eta()
        return "ETA -" if eta is None else f"ETA {duration(eta)}"


class PlainSweepLines:
    """Plain lines for a sweep off a terminal: each run as it ends (runs done of all, elapsed,
    ETA, weighted by planned work when ``eta`` is given), and what the in-process run is doing at each phase change and at most every
    ``every_s`` seconds within a phase. ``say(line)`` prints one line."""

    def __init__(self, say: Callable[[str], None], total: int, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, eta: Optional[WorkETA] = None):
        self.say, self.total, self.every_s, self.clock = say, total, every_s, clock
        self.started = clock()
        self.work = eta  # weighted by planned work; None: by run count
        self._phase, self._last = "", -float("inf")

    def run_text(self, text: str) -> None:
        """The in-process run's status (``SweepRunProgress`` text); "" when it ends."""
        phase = text.split(" ", 1)[0] if text else ""
        now = self.clock()
        if text and (phase != self._phase or now - self._last >= self.every_s):
            self.say(f"  {text}")
            self._last = now
        self._phase = phase

    def run_ended(self, label: str, ok: bool, done: int) -> None:
        """A run ended; ``done`` runs of the sweep's are settled (those another sweep on the
        store finished or recovered from their run directories included)."""
        elapsed = self.clock() - self.started
        left = (self.work.eta() if self.work is not None else
                elapsed / done * (self.total - done) if done else None)
        eta = f", ETA {duration(left)}" if left is not None and 0 < done < self.total else ""
        self.say(f"[{done}/{self.total}] {'finished' if ok else 'FAILED'} {label} "
                 f"(elapsed {duration(elapsed)}{eta})")
