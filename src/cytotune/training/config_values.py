"""The plumbing of typed configs: reading YAML, turning plain mappings into dataclasses with
every key and type checked, setting dotted options, and checks of an output folder. Shared by
the run config (:mod:`cytotune.training.config`, which re-exports these names) and the sweep
configuration; errors are :class:`ConfigError` lines naming the option at fault.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names it."""


def check_out_target(out: str | os.PathLike) -> None:
    """Refuse, before any training, an existing ``--out`` folder the finished run could not
    be published onto: a run is renamed into place at the end, which fails on a mount point
    (a read-only one used to train fully and then suggest freeing space) and is not wanted in
    a folder made read-only. A missing ``--out`` (its parent is checked when the run's
    staging folder is made there) and a file (refused by the run writer) pass."""
    path = Path(out).expanduser()
    if not path.is_dir():
        return
    writable = os.access(path, os.W_OK)
    if os.path.ismount(path):
        if not writable:
            raise ConfigError(f"--out {path} is a read-only mount point: it is not writable; "
                              f"choose another --out")
        raise ConfigError(f"--out {path} is a mount point: a finished run is renamed into "
                          f"place, which cannot replace a mount point; choose a folder inside "
                          f"it, e.g. --out {path / 'run'}")
    if not writable:
        raise ConfigError(f"--out {path} is not writable (read-only folder or file system); "
                          f"choose another --out")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_yaml_file(path: str | Path) -> Any:
    """``yaml.safe_load`` of a file, with any parse error (or a Python tag such as
    ``!!python/object``, which safe_load never constructs) as one ConfigError line naming the
    file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = _one_line(err.problem or err.context or "")
        if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
            problem = (f"{problem}; cytotune reads plain YAML only (no Python objects or other "
                       f"tags)")
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None


def set_dotted(values: dict[str, Any], key: str, value: Any, label: str = "option") -> None:
    """Set ``values["a"]["b"]["c"] = value`` for the dotted ``key`` "a.b.c", creating sections."""
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{label} {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dataclass_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a plain mapping, checking every key and type; errors name the
    option with its dotted ``prefix`` (shared with the sweep configuration)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(prefix + k for k in unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    kwargs = {name: coerce_value(hints[name], value, prefix + name) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from None


def coerce_value(hint: Any, value: Any, name: str) -> Any:
    """Check ``value`` against a type hint, converting where YAML is looser than Python."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(arg, value, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{name}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, name + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce_value(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value
