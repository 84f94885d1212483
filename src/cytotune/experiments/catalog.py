"""The sweeps shipped with cytotune: the reference study's three experiments and an offline demo.

They live as YAML files in ``cytotune/experiments/configs/``; copy one to change it, or override
options on the command line (``cytotune sweep experiment1_linear --set seeds=[1]``).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from cytotune.training.config import ConfigError

_PACKAGE = "cytotune.experiments"
_FOLDER = "configs"


def _configs_dir() -> Path:
    return Path(str(resources.files(_PACKAGE).joinpath(_FOLDER)))


def list_experiments() -> list[str]:
    """Names of the shipped sweeps (YAML file stems), sorted."""
    folder = _configs_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def experiment_path(name: str) -> Path:
    """Path of the shipped sweep called ``name`` (with or without ``.yaml``)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    path = _configs_dir() / f"{stem}.yaml"
    if not path.is_file():
        raise ConfigError(f"no shipped experiment named {name!r}; known: "
                          f"{', '.join(list_experiments()) or 'none'}")
    return path
