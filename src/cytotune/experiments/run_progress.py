"""What the run in flight is doing, shown in a sweep's progress bar (in-process runs only).

A sweep's bar counts runs; a single run can take most of an hour on a CPU, so the bar also shows
the phase and step of the run being trained, from the training observer events
(:mod:`cytotune.training.progress`). Runs in worker processes report nothing here (their events
stay in their process); the bar still counts them.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from cytotune.training.progress import TrainingObserver


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
