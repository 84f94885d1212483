"""A run's ``train.log``: every INFO line of the run, whoever configured logging.

The CLI sets the ``cytotune`` logger to INFO. From Python (a notebook calling
``cytotune.api.train``) the logger is usually left at the root's WARNING, and logging drops
INFO records before any handler sees them, so ``train.log`` would hold no step, validation or
test lines. While a run log is open, :func:`open_run_log` therefore lowers the ``cytotune``
logger to INFO and keeps everything else as the user set it: the logger's own handlers get a
filter at the old threshold, and instead of propagating, records at or above the old threshold
are handed to the parent's handlers as propagation would have (so a notebook shows the same
warnings and no new INFO lines). The last run log to close puts the logger back as it was.
"""
from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLogHandler(logging.FileHandler):
    """A run's train.log; a failed write (full disk) is remembered and reported when the run
    is committed, instead of logging printing its traceback on every later line."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8")
        self.setFormatter(logging.Formatter(FORMAT))
        self.error: Optional[BaseException] = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.error is None:
            self.error = sys.exc_info()[1]


class _AtLeast(logging.Filter):
    """Keeps a handler at the threshold its logger had before INFO was let through."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class _Propagate(logging.Handler):
    """Hands records (at or above its level) to the parent logger's handlers, as propagation
    would: the logger's own propagation is off while INFO is let through."""

    def __init__(self, logger: logging.Logger, level: int):
        super().__init__(level)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        if self.logger.parent is not None:
            self.logger.parent.callHandlers(record)


@dataclass
class _Lowered:
    """What :func:`open_run_log` changed on a logger, to undo when its last run log closes."""

    open_logs: int = 0
    lowered: bool = False  # False: INFO already got through, nothing was changed
    level: int = logging.NOTSET
    propagate: bool = True
    forward: Optional[_Propagate] = None
    guarded: list[tuple[logging.Handler, _AtLeast]] = field(default_factory=list)


_LOCK = threading.Lock()
_LOWERED: dict[str, _Lowered] = {}


def open_run_log(path: Path, logger: logging.Logger,
                 filters: Sequence[logging.Filter] = ()) -> RunLogHandler:
    """Attach a :class:`RunLogHandler` writing ``path`` to ``logger`` (with ``filters``) and
    make sure its INFO lines reach it; close it with :func:`close_run_log`."""
    handler = RunLogHandler(path)
    for f in filters:
        handler.addFilter(f)
    with _LOCK:
        state = _LOWERED.setdefault(logger.name, _Lowered())
        if state.open_logs == 0:
            _lower_to_info(logger, state)
        state.open_logs += 1
        logger.addHandler(handler)
    return handler


def close_run_log(handler: RunLogHandler, logger: logging.Logger) -> Optional[BaseException]:
    """Detach and close ``handler``; the last one restores ``logger``. Returns the first write
    error of the log (None: all written)."""
    with _LOCK:
        logger.removeHandler(handler)
        state = _LOWERED.get(logger.name)
        if state is not None:
            state.open_logs -= 1
            if state.open_logs <= 0:
                _restore(logger, _LOWERED.pop(logger.name))
    try:
        handler.close()
    except OSError as err:
        handler.error = handler.error or err
    return handler.error


def _lower_to_info(logger: logging.Logger, state: _Lowered) -> None:
    threshold = logger.getEffectiveLevel()
    if threshold <= logging.INFO:
        return  # INFO already gets through (the CLI, or a user who asked for it)
    state.level, state.propagate = logger.level, logger.propagate
    for existing in list(logger.handlers):
        guard = _AtLeast(threshold)
        existing.addFilter(guard)
        state.guarded.append((existing, guard))
    if logger.propagate:
        state.forward = _Propagate(logger, threshold)
        logger.addHandler(state.forward)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    state.lowered = True


def _restore(logger: logging.Logger, state: _Lowered) -> None:
    if not state.lowered:
        return
    if state.forward is not None:
        logger.removeHandler(state.forward)
    for handler, guard in state.guarded:
        handler.removeFilter(guard)
    logger.propagate = state.propagate
    logger.setLevel(state.level)
