"""Showing a run's progress to a person: a rich live display on a terminal, plain lines elsewhere.

Training only emits events (:mod:`cytotune.training.progress`); this module turns them into
something to read, so a 40-minute CPU run is never silent. Both displays print the planned step
count before any work and, after a few steps, the estimated training time. On a terminal, rich
shows phase, step n/N, steps/s, ETA and the last validation metric; in a log file or pipe (CI,
``nohup``), a plain line is written every ~10 % of a phase or every ``every_s`` seconds.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from cytotune.training.progress import TrainingObserver, duration

ESTIMATE_AFTER_STEPS = 5  # steps measured before the duration estimate is printed
UNITS = {"decoding": "images", "features": "images", "training": "steps", "evaluation": ""}


def metric_text(metrics: dict[str, float]) -> str:
    """The validation number worth a glance: the selection score, else accuracy."""
    if "val_score" in metrics:
        return f"val score {metrics['val_score']:.3f}"
    if "val_accuracy" in metrics:
        return f"val acc {metrics['val_accuracy']:.3f}"
    return ""


class _Tracker(TrainingObserver):
    """What both displays need: the current phase, its count, rate and ETA, the last metric,
    and the planned-steps and estimate lines (``say`` prints one line)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.name = ""
        self.total: Optional[int] = None
        self.done = 0
        self.reused_done = 0  # of self.done: found done already (cache, resumed build)
        self.started = clock()
        self.metric = ""
        self.estimated = False

    def say(self, line: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def planned(self, steps: int, detail: str = "") -> None:
        self.estimated = False  # a new run (leave-one-domain-out trains several)
        if steps:
            self.say(f"planned: {steps} optimizer steps" + (f" ({detail})" if detail else ""))

    def phase(self, name: str, total: Optional[int] = None) -> None:
        self.name, self.total, self.done, self.started = name, total, 0, self.clock()
        self.reused_done = 0

    def advance(self, done: int) -> None:
        self.done += done

    def reused(self, done: int) -> None:
        self.reused_done += done
        self.advance(done)

    def step(self, step: int, steps: int) -> None:
        self.done, self.total = step, steps
        if not self.estimated and step >= min(ESTIMATE_AFTER_STEPS, steps) and step < steps:
            self.estimated = True
            per_step = self.elapsed() / step
            self.say(f"estimated training time: {duration(per_step * steps)} "
                     f"({self.rate_text()}, measured over the first {step} steps; "
                     f"validation passes come on top)")

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.metric = metric_text(metrics)

    def elapsed(self) -> float:
        return max(self.clock() - self.started, 1e-9)

    def rate_text(self) -> str:
        unit = UNITS.get(self.name) or "items"
        rate = (self.done - self.reused_done) / self.elapsed()  # the work done in this phase
        if rate <= 0:
            return f"- {unit}/s"
        return f"{rate:.2f} {unit}/s" if rate >= 0.1 else f"{1 / rate:.1f} s/{unit[:-1]}"

    def eta(self) -> Optional[float]:
        worked = self.done - self.reused_done
        if not self.total or worked <= 0:
            return None
        return self.elapsed() / worked * (self.total - self.done)


class PlainProgress(_Tracker):
    """Plain lines for logs and pipes: each phase's start, then every ~``every_fraction`` of it
    or every ``every_s`` seconds, whichever comes first, and its end."""

    def __init__(self, stream: Optional[TextIO] = None, every_fraction: float = 0.1,
                 every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.stream = stream if stream is not None else sys.stderr
        self.every_fraction, self.every_s = every_fraction, every_s
        self._last_line = clock()
        self._last_decile = 0

    def say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = self.clock()

    def phase(self, name: str, total: Optional[int] = None) -> None:
        super().phase(name, total)
        self._last_decile = 0
        self.say(f"{name}" + (f": {total} {UNITS.get(name, '')}".rstrip() if total else ""))

    def advance(self, done: int) -> None:
        super().advance(done)
        self._maybe_line()

    def step(self, step: int, steps: int) -> None:
        super().step(step, steps)
        self._maybe_line()

    def _maybe_line(self) -> None:
        part = int(self.done / self.total / self.every_fraction) if self.total else 0
        if part > self._last_decile or self.clock() - self._last_line >= self.every_s:
            self._last_decile = max(part, self._last_decile)
            self.say(self.status())

    def status(self) -> str:
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        notes = ([f"{100 * self.done / self.total:.0f} %"] if self.total else []) + \
            ([f"{self.reused_done} done before"] if self.reused_done else [])
        notes_text = f" ({', '.join(notes)})" if notes else ""
        eta = self.eta()
        parts = [f"{self.name} {count}{notes_text}", self.rate_text(),
                 f"elapsed {duration(self.elapsed())}",
                 *([f"ETA {duration(eta)}"] if eta is not None and self.done < (self.total or 0)
                   else []), *([self.metric] if self.metric and self.name == "training" else [])]
        return "  ".join(parts)


class RichProgress(_Tracker):
    """A live rich display: one bar per phase with count, rate, elapsed, ETA and the last
    validation metric; lines (plan, estimate) print above it."""

    def __init__(self, console: Optional[Console] = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("[cyan]{task.fields[metric]}"),
                                 console=self.console, transient=False)
        self.task: Optional[TaskID] = None
        self.live = False

    def _start(self) -> None:
        if not self.live:
            self.progress.start()
            self.live = True

    def say(self, line: str) -> None:
        self._start()
        self.progress.console.print(line, markup=False, highlight=False)

    def phase(self, name: str, total: Optional[int] = None) -> None:
        self._close_task()
        super().phase(name, total)
        self._start()
        self.task = self.progress.add_task(name, total=total, rate="", metric="")

    def _close_task(self) -> None:
        if self.task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self.task, total=task.total or max(1, task.completed),
                                 completed=task.total or max(1, task.completed))
            self.progress.stop_task(self.task)
            self.task = None

    def advance(self, done: int) -> None:
        super().advance(done)
        self._refresh()

    def step(self, step: int, steps: int) -> None:
        super().step(step, steps)
        self._refresh()

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        super().evaluation(step, metrics)
        self._refresh()

    def _refresh(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.done, total=self.total,
                                 rate=self.rate_text(), metric=self.metric)

    def finished(self) -> None:
        self._close_task()
        if self.live:
            self.progress.stop()
            self.live = False


def progress_display(console: Optional[Console] = None,
                     stream: Optional[TextIO] = None) -> TrainingObserver:
    """The display for where output goes: rich when ``console`` (default: stderr) is a
    terminal, plain lines on ``stream`` (default: stderr) otherwise."""
    console = console or Console(stderr=True)
    if console.is_terminal and not console.is_dumb_terminal:
        return RichProgress(console)
    return PlainProgress(stream if stream is not None else console.file)
