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
from typing import Callable, Optional

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


class PlainSweepLines:
    """Plain lines for a sweep off a terminal: each run as it ends (runs done of all, elapsed,
    ETA), and what the in-process run is doing at each phase change and at most every
    ``every_s`` seconds within a phase. ``say(line)`` prints one line."""

    def __init__(self, say: Callable[[str], None], total: int, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.say, self.total, self.every_s, self.clock = say, total, every_s, clock
        self.started = clock()
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
        eta = (f", ETA {duration(elapsed / done * (self.total - done))}"
               if 0 < done < self.total else "")
        self.say(f"[{done}/{self.total}] {'finished' if ok else 'FAILED'} {label} "
                 f"(elapsed {duration(elapsed)}{eta})")
