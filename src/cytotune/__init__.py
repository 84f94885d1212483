"""cytotune: adapt pretrained vision foundation models to cytology image classification.

The layers, bottom up: ``data`` (readers, splits, samplers, decoded images) -> ``models`` (model
cards and loaders) -> ``adapters`` (LoRA) -> ``training`` (methods, loop, metrics, runs) ->
``analysis`` (intervals, paired tests) -> ``inference`` / ``experiments`` -> ``api`` / ``cli``. See ``cytotune.api`` for the entry points.

The public names below are imported lazily, so ``import cytotune.data`` does not pull in torch
models, timm or open_clip.
"""
from __future__ import annotations

from typing import Any

from cytotune._version import __version__

_LAZY = {
    "train": "cytotune.api",
    "train_group": "cytotune.api",
    "train_leave_one_domain_out": "cytotune.api",
    "build_config": "cytotune.api",
    "models": "cytotune.api",
    "TrainConfig": "cytotune.training.config",
    "RunResult": "cytotune.training.runner",
    "load": "cytotune.inference",
    "compare_runs": "cytotune.inference.compare",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cytotune' has no attribute {name!r}")
