"""The Python API: what the CLI wraps and notebooks call.

    import cytotune
    result = cytotune.train(data="path/to/images", model="clip-vit-b16", method="lora",
                            rank=2, targets="q,v", shots=4, seed=1, lr=1e-3, out="runs/x")
    result.metrics["test"]["accuracy"]
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from cytotune.models import ModelCard, list_cards
from cytotune.training.config import ConfigError, TrainConfig, set_dotted
from cytotune.training.flat_options import FLAT_OPTIONS  # flat keyword -> dotted config path
from cytotune.training.runner import RunResult, run_training


def build_config(config: TrainConfig | dict | str | Path | None = None, **options: Any) -> TrainConfig:
    """A TrainConfig from a base (object, dict or YAML path) plus flat or dotted keyword options."""
    if config is None:
        values: dict[str, Any] = {}
    elif isinstance(config, TrainConfig):
        values = config.to_dict()
    elif isinstance(config, (str, Path)):
        values = TrainConfig.from_yaml(config).to_dict()
    elif isinstance(config, dict):
        values = copy.deepcopy(config)
    else:
        raise ConfigError(f"config must be a TrainConfig, dict or YAML path, got {type(config).__name__}")
    for key, value in options.items():
        set_dotted(values, FLAT_OPTIONS.get(key, key), value)
    return TrainConfig.from_dict(values)


def train(config: TrainConfig | dict | str | Path | None = None, **options: Any) -> RunResult:
    """Train and evaluate one run; see ``FLAT_OPTIONS`` for the keyword shortcuts."""
    return run_training(build_config(config, **options))


def train_leave_one_domain_out(config: TrainConfig | dict | str | Path | None = None,
                               **options: Any) -> list[RunResult]:
    """One run per domain of the data (its ``domain`` column), that domain held out for testing;
    see :mod:`cytotune.training.leave_one_domain_out`."""
    from cytotune.training.leave_one_domain_out import run_leave_one_domain_out

    return run_leave_one_domain_out(build_config(config, **options))


def train_group(configs: list[TrainConfig | dict | str | Path], pack_size: int = 8,
                **options: Any) -> list[RunResult | Exception]:
    """Train several runs together where they share a backbone (linear probes: one feature
    extraction and batched heads; LoRA: up to ``pack_size`` runs packed on one backbone); the
    same results as :func:`train` on each. Each entry is a config (object or YAML path) or a dict
    of :func:`train`'s keyword options; ``options`` apply to every entry. Returns one result or
    the exception of a failed run per entry, in order (a failing run fails alone)::

        grid = [dict(seed=s, lr=lr) for s in (1, 2, 3) for lr in (1e-3, 1e-2)]
        results = cytotune.train_group(grid, data="mlcc/", layout="mlcc", model="uni",
                                       method="lora", shots=4)
    """
    from cytotune.training.group import run_training_group

    built = []
    for config in configs:
        if isinstance(config, dict):
            built.append(build_config(None, **{**options, **config}))
        else:
            built.append(build_config(config, **options))
    return run_training_group(built, pack_size=pack_size)


def models() -> list[ModelCard]:
    """The registered model cards."""
    return list_cards()


__all__ = ["FLAT_OPTIONS", "build_config", "train", "train_group", "train_leave_one_domain_out",
           "models",
           "RunResult", "TrainConfig"]
