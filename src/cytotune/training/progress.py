"""Progress of a run as events, for whoever wants to show them (a terminal display, a sweep bar).

Training code reports what it is doing through the current :class:`TrainingObserver`; it never
prints. The observer is held in a context variable, so callers opt in around any training call
without threading an argument through every method::

    with observing(MyObserver()):
        run_training(config)

Events, in order, for one run: ``planned`` (the optimizer steps it will take), ``phase`` for
"decoding", then "features" (methods on frozen features) and "training" with ``advance`` /
``step`` calls inside them, ``evaluation`` after each validation, ``phase("evaluation")`` for the
final test pass, then ``finished``. Runs trained as a group report their shared phases once.
The default observer ignores everything, so library and test code pay nothing.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

from cytotune.training.method_registry import FEATURE_PROBES, TRAINING_FREE

PHASES = ("decoding", "features", "training", "evaluation")


def duration(seconds: float) -> str:
    """``seconds`` as people read it: 12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class TrainingObserver:
    """Receives a run's progress; every method is a no-op, override what you show."""

    def planned(self, steps: int, detail: str = "") -> None:
        """Before any work: the run will take ``steps`` optimizer steps (``detail``: why)."""

    def phase(self, name: str, total: Optional[int] = None) -> None:
        """A new phase starts (one of :data:`PHASES`); ``total``: its units (images, steps)."""

    def advance(self, done: int) -> None:
        """``done`` more units of the current phase are finished (images decoded/extracted)."""

    def reused(self, done: int) -> None:
        """``done`` units of the current phase were already done before (found in a cache, or
        decoded by a stopped build this one resumes): counted as done, but not as work done
        now, so rates and ETAs leave them out. By default the same as :meth:`advance`."""
        self.advance(done)

    def step(self, step: int, steps: int) -> None:
        """Optimizer step ``step`` of ``steps`` is finished."""

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """A validation pass at ``step`` gave ``metrics`` (e.g. val_accuracy, val_loss)."""

    def finished(self) -> None:
        """The run is over (also after an error: displays close here)."""


_NULL = TrainingObserver()
_OBSERVER: contextvars.ContextVar[TrainingObserver] = contextvars.ContextVar(
    "cytotune_training_observer", default=_NULL)


def observer() -> TrainingObserver:
    """The observer training code reports to now (a no-op one unless a caller set one)."""
    return _OBSERVER.get()


@contextlib.contextmanager
def observing(obs: TrainingObserver) -> Iterator[TrainingObserver]:
    """Report the progress of training inside the block to ``obs``; ``finished`` at the end."""
    token = _OBSERVER.set(obs)
    try:
        yield obs
    finally:
        _OBSERVER.reset(token)
        obs.finished()


class RecordingObserver(TrainingObserver):
    """Keeps every event as a tuple (tests, and anyone who wants the trace afterwards)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def planned(self, steps: int, detail: str = "") -> None:
        self.events.append(("planned", steps))

    def phase(self, name: str, total: Optional[int] = None) -> None:
        self.events.append(("phase", name, total))

    def advance(self, done: int) -> None:
        self.events.append(("advance", done))

    def step(self, step: int, steps: int) -> None:
        self.events.append(("step", step, steps))

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.events.append(("evaluation", step, dict(metrics)))

    def finished(self) -> None:
        self.events.append(("finished",))


def step_plan(config, num_train: int, num_classes: int = 0) -> tuple[int, str]:
    """The optimizer steps a run will take on ``num_train`` training images, and why (the rule
    that set them), known before any image is decoded so a user can stop a run that is too long.
    ``config``: a TrainConfig (not imported here: methods import this module). A label budget
    trains on ``budget`` images with the schedule of ceil(budget / ``num_classes``) shots."""
    o = config.optim
    shots = config.shots
    if getattr(config, "budget", None) is not None:
        num_train = min(num_train, config.budget)
        shots = -(-config.budget // max(1, num_classes))
    if config.method in TRAINING_FREE:
        return 0, f"{config.method}: no training"
    if config.method in FEATURE_PROBES:
        return 0, f"{config.method}: fitted on cached features, no optimizer steps"
    if o.steps is not None:
        return int(o.steps), "set by --steps"
    batch = max(1, min(o.batch_size, num_train))
    per_epoch = max(1, -(-num_train // batch))
    if config.method == "linear":
        steps = o.linear_steps(num_train)
        return steps, (f"{steps // per_epoch} epochs x {per_epoch} batches of {num_train} cached "
                       f"features; --steps or --linear-epochs to change")
    steps = o.resolve_steps(num_train, shots)
    if o.epochs is not None:
        why = f"{o.epochs:g} epochs x {per_epoch} batches of {num_train} images"
    elif shots is not None:
        why = f"the study's schedule 50 + 100 x {shots} shots" + (
            f" (a budget of {config.budget} images)" if shots != config.shots else "")
    else:
        why = f"10 epochs x {per_epoch} batches of {num_train} images"
    return steps, why + "; --steps to change"
