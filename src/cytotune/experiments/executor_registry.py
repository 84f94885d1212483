"""Executors by name (``run_sweep(executor="local" | "ray" | ...)``, ``--executor``).

A module of its own so that the executors built on :mod:`cytotune.experiments.executors` (the Ray
one) are imported by the registry and never by the module they build on: no import circle, and
Ray is imported only when the ``"ray"`` executor is asked for.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

from cytotune.experiments.executors import Executor, LocalExecutor


def _ray_executor(devices: Optional[Sequence[str]] = None, **options: Any) -> Executor:
    """Factory of the "ray" executor: imports Ray (and the module using it) only when called."""
    from cytotune.experiments.ray_executor import RayExecutor

    return RayExecutor(devices=devices, **options)


EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": _ray_executor}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make ``run_sweep(executor=name)`` build executors with ``factory(devices=..., **options)``."""
    EXECUTORS[name] = factory


def get_executor(executor: Union[str, Executor], devices: Optional[Sequence[str]] = None,
                 **options: Any) -> Executor:
    """``executor`` itself if it is one, else a new executor of that name."""
    if isinstance(executor, Executor):
        return executor
    factory = EXECUTORS.get(executor)
    if factory is None:
        raise ValueError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    return factory(devices=devices, **options)


__all__ = ["EXECUTORS", "get_executor", "register_executor"]
