"""The fields of a sweep file, parsed and checked one by one: the data sets (with ``generate``
and held-out domains), methods, sample sizes, learning rates, exclusions and the shared ``base``
options, and the ``${NAME}`` environment references in them. :mod:`cytotune.experiments.sweep`
assembles them into a :class:`~cytotune.experiments.sweep.SweepConfig` and plans its runs.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from cytotune.experiments.dataset_selection import ENV_REFERENCE
from cytotune.training.config import (ConfigError, TrainConfig, check_lr, check_number,
                                      coerce_value, dataclass_from_dict, set_dotted)

# Placeholders allowed in ``base.out``.
OUT_PLACEHOLDERS = ("sweep", "run_id", "dataset", "backbone", "method", "sample", "shots",
                    "fraction", "seed", "lr")
OUT_PLACEHOLDER_PATTERN = re.compile(r"(?<!\$)\{([^{}]*)\}")
_EXCLUDE_KEYS = ("dataset", "backbone", "method")

ShotsValue = Optional[int]  # None: all of the training split


def expand_env(value: str, option: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """``value`` with ``${NAME}`` / ``${NAME:-default}`` replaced from the environment."""
    env = os.environ if environ is None else environ

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{option}: environment variable {name} is not set "
                          f"(it should point to the data set or folder this option names)")

    return ENV_REFERENCE.sub(replace, value)


def _expand_tree(value: Any, option: str, environ) -> Any:
    if isinstance(value, str):
        return expand_env(value, option, environ)
    if isinstance(value, dict):
        return {k: _expand_tree(v, f"{option}.{k}", environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_tree(v, f"{option}[{i}]", environ) for i, v in enumerate(value)]
    return value


@dataclass
class GenerateSpec:
    """Draw cytotune's synthetic data set into the data set's ``source`` if it is missing."""

    n_per_class: int = 40
    image_size: int = 64
    seed: int = 0
    classes: Optional[tuple[str, ...]] = None  # None: the generator's four default classes


@dataclass
class DatasetSpec:
    """One data set of a sweep; fields left None take the value of ``base.data``."""

    source: str = ""  # as written (may hold ${VARIABLES}); ``resolved_source`` is the path used
    layout: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)
    split_seed: Optional[int] = None
    val_fraction: Optional[float] = None
    test_fraction: Optional[float] = None
    skip_bad_images: Optional[bool] = None
    generate: Optional[GenerateSpec] = None
    # out-of-domain evaluation (a CSV 'domain' column): as TrainConfig's data options, or
    # leave_one_domain_out, the domains to hold out one at a time (see _expand_domains)
    train_domains: Optional[list[str]] = None
    test_domains: Optional[list[str]] = None
    leave_one_domain_out: Optional[list[str]] = None
    resolved_source: str = field(default="", init=False, compare=False)

    def data_overrides(self) -> dict[str, Any]:
        values: dict[str, Any] = {"source": self.resolved_source, "layout": self.layout,
                                  "options": copy.deepcopy(self.options)}
        for name in ("split_seed", "val_fraction", "test_fraction", "skip_bad_images",
                     "train_domains", "test_domains"):
            if getattr(self, name) is not None:
                values[name] = getattr(self, name)
        return values


def parse_exclude(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise ConfigError(f"exclude: expected a list of {{dataset, backbone, method}} mappings, "
                          f"got {value!r}")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping) or not entry:
            raise ConfigError(f"exclude[{i}]: expected a mapping with some of "
                              f"{', '.join(_EXCLUDE_KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(_EXCLUDE_KEYS))
        if unknown:
            raise ConfigError(f"exclude[{i}]: unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(_EXCLUDE_KEYS)}")
        out.append({k: coerce_value(str, v, f"exclude[{i}].{k}") for k, v in entry.items()})
    return out


def string_list(value: Any, option: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    items = coerce_value(list[str], value, option)
    if not items:
        raise ConfigError(f"{option}: give at least one")
    no_repeats(items, option)
    return items


def no_repeats(items: Iterable, option: str) -> None:
    items = list(items)
    repeated = sorted({str(x) for x in items if items.count(x) > 1})
    if repeated:
        raise ConfigError(f"{option}: repeated value(s) {', '.join(repeated)}")


def parse_datasets(value: Any, environ) -> dict[str, DatasetSpec]:
    from cytotune.data import LAYOUTS

    if not isinstance(value, Mapping) or not value:
        raise ConfigError("datasets: expected a mapping of name -> {source, layout, options}")
    out = {}
    for name, entry in value.items():
        option = f"datasets.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{option}: data set names are letters, digits, '_', '.' or '-'")
        if isinstance(entry, str):  # shorthand: name: path
            entry = {"source": entry}
        if isinstance(entry, Mapping) and isinstance(entry.get("leave_one_domain_out"), str):
            # a comma-separated list, possibly from an environment variable
            entry = {**entry, "leave_one_domain_out": expand_env(
                entry["leave_one_domain_out"], f"{option}.leave_one_domain_out", environ)}
        spec = dataclass_from_dict(DatasetSpec, entry, option + ".")
        if spec.generate is not None:
            check_number(f"{option}.generate.n_per_class", spec.generate.n_per_class, minimum=1,
                         integer=True)
            check_number(f"{option}.generate.image_size", spec.generate.image_size, minimum=8,
                         integer=True)
            check_number(f"{option}.generate.seed", spec.generate.seed, minimum=0, integer=True)
        if not spec.source:
            raise ConfigError(f"{option}.source is required")
        if spec.layout is not None and spec.layout.lower() not in LAYOUTS:
            raise ConfigError(f"{option}.layout: unknown layout {spec.layout!r}; known: "
                              f"{', '.join(sorted(LAYOUTS))}")
        expanded = expand_env(spec.source, f"{option}.source", environ)
        spec.resolved_source = str(Path(expanded).expanduser().resolve())
        spec.options = _expand_tree(spec.options, f"{option}.options", environ)
        out.update(_expand_domains(name, spec, option))
    return out


HELD_OUT = ".heldout-"


def _expand_domains(name: str, spec: DatasetSpec, option: str) -> dict[str, DatasetSpec]:
    """A data set entry with ``leave_one_domain_out: [a, b, c]`` becomes one entry per domain,
    ``<name>.heldout-<domain>``, trained on the other domains and tested on that one (the
    report's out-of-domain columns); every other entry stays as it is."""
    domains = spec.leave_one_domain_out
    if domains is None:
        return {name: spec}
    if spec.train_domains or spec.test_domains:
        raise ConfigError(f"{option}: leave_one_domain_out chooses the domains itself; drop "
                          f"train_domains / test_domains")
    if len(domains) < 2:
        raise ConfigError(f"{option}.leave_one_domain_out: give at least two domains")
    no_repeats(domains, f"{option}.leave_one_domain_out")
    out = {}
    for domain in domains:
        held = dataclasses.replace(spec, leave_one_domain_out=None, test_domains=[domain])
        held.resolved_source = spec.resolved_source
        out[f"{name}{HELD_OUT}{re.sub(r'[^A-Za-z0-9_.-]+', '_', domain)}"] = held
    return out


def parse_methods(value: Any) -> list[str]:
    from cytotune.training.method_registry import is_known_method, method_names

    methods = string_list(value, "method")
    for m in methods:
        if not is_known_method(m):
            raise ConfigError(f"method: unknown method {m!r}; known: {', '.join(method_names())}")
    return methods


def parse_shots(value: Any) -> list[ShotsValue]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [v.strip() for v in value.split(",")] if isinstance(value, str) else [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"shots: expected a list of whole numbers and/or 'all', got {value!r}")
    out: list[ShotsValue] = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item.strip().lower() == "all":
            out.append(None)
            continue
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool) or item < 1:
            raise ConfigError(f"shots[{i}]: expected a whole number >= 1 or 'all', got {item!r}")
        out.append(item)
    no_repeats(out, "shots")
    return out


def parse_fractions(value: Any) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    fractions = coerce_value(list[float], value, "fractions")
    if not fractions:
        raise ConfigError("fractions: give at least one percentage")
    for i, f in enumerate(fractions):
        if not 0 < f <= 100:
            raise ConfigError(f"fractions[{i}]: a percentage in (0, 100], got {f:g}")
    no_repeats(fractions, "fractions")
    return fractions


def parse_budgets(value: Any) -> list[int]:
    """``budgets``: label budgets (training images in total, issue 34), whole numbers >= 2."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    budgets = coerce_value(list[int], value, "budgets")
    if not budgets:
        raise ConfigError("budgets: give at least one number of images")
    for i, b in enumerate(budgets):
        if b < 2:
            raise ConfigError(f"budgets[{i}]: a number of training images >= 2, got {b}")
    no_repeats(budgets, "budgets")
    return budgets


def parse_sampling(value: Any) -> list[str]:
    """``sampling``: the budget's selection strategies (:mod:`cytotune.data.selection`)."""
    from cytotune.data.selection import strategy_names

    names = string_list(value, "sampling")
    for name in names:
        if name not in strategy_names():
            raise ConfigError(f"sampling: unknown strategy {name!r}; known: "
                              f"{', '.join(strategy_names())}")
    no_repeats(names, "sampling")
    return names


def parse_robustness(value: Any, base: Mapping[str, Any]) -> list[str]:
    """``robustness``: perturbation kinds every finished run is evaluated under
    (:mod:`cytotune.data.perturb`); the evaluation reads each run's saved model, so the sweep
    must write run directories (``base.out``)."""
    from cytotune.data.perturb_kinds import PERTURBATIONS

    kinds = string_list(value, "robustness")
    for kind in kinds:
        if kind not in PERTURBATIONS:
            raise ConfigError(f"robustness: unknown perturbation {kind!r}; known: "
                              f"{', '.join(PERTURBATIONS)}")
    no_repeats(kinds, "robustness")
    if not base.get("out"):
        raise ConfigError("robustness evaluates each run's saved model: set base.out to a run "
                          "directory pattern, e.g. base: {out: \"runs/{sweep}/{run_id}\"}")
    return kinds


def parse_lrs(value: Any, methods: list[str]) -> Optional[Union[list[float], dict[str, list[float]]]]:
    if value is None:
        return None

    def grid(v: Any, option: str) -> list[float]:
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            v = [v]
        lrs = coerce_value(list[float], v, option)
        if not lrs:
            raise ConfigError(f"{option}: give at least one learning rate")
        for i, lr in enumerate(lrs):
            check_lr(f"{option}[{i}]", lr)
        no_repeats(lrs, option)
        return lrs

    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(methods))
        if unknown:
            raise ConfigError(f"lrs: grid for method(s) {', '.join(map(str, unknown))} that the "
                              f"sweep does not run ({', '.join(methods)})")
        from cytotune.training.method_registry import FEATURE_PROBES, TRAINING_FREE

        missing = [m for m in methods
                   if m not in value and m not in TRAINING_FREE and m not in FEATURE_PROBES]
        if missing:
            raise ConfigError(f"lrs: no learning rates for method(s) {', '.join(missing)}")
        return {m: grid(value[m], f"lrs.{m}") for m in methods if m in value}
    return grid(value, "lrs")


def parse_base(value: Any, environ) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"base: expected a mapping (a partial TrainConfig), got {value!r}")
    base = _expand_tree(copy.deepcopy(dict(value)), "base", environ)
    grid_owned = {"method": "method", "shots": "shots", "fraction": "fractions", "seed": "seeds"}
    for owned, top_level in grid_owned.items():
        if owned in base:
            raise ConfigError(f"base.{owned}: set by the sweep grid; use the top-level "
                              f"'{top_level}' option")
    for section, owned, top_level in (("model", "name", "backbones"), ("data", "source", "datasets")):
        if isinstance(base.get(section), Mapping) and owned in base[section]:
            raise ConfigError(f"base.{section}.{owned}: set by the sweep grid; use the top-level "
                              f"'{top_level}' option")
    # type-check every option now, with its full name
    check = {k: v for k, v in base.items() if k != "out"}
    dataclass_from_dict(TrainConfig, check, "base.")
    out = base.get("out")
    if out is not None:
        if not isinstance(out, str):
            raise ConfigError(f"base.out: expected a path pattern, got {out!r}")
        for placeholder in OUT_PLACEHOLDER_PATTERN.findall(out):
            if placeholder not in OUT_PLACEHOLDERS:
                raise ConfigError(f"base.out: unknown placeholder {{{placeholder}}}; known: "
                                  f"{', '.join('{' + p + '}' for p in OUT_PLACEHOLDERS)}")
        if "{run_id}" not in out:
            raise ConfigError("base.out: the pattern must contain {run_id} so runs do not share "
                              "a directory")
    return base


GRID_OWNED = ("method", "shots", "fraction", "seed", "budget", "sampling", "optim.lr",
              "model.name", "data.source", "out")


def parse_grid(value: Any, environ) -> dict[str, list[Any]]:
    """``grid``: more settings crossed with the sweep's grid, as dotted TrainConfig fields to
    lists of values (``{optim.augment: [on, "dihedral,hed"], data.stain_norm: [none, macenko]}``):
    every run is planned once per combination. Runs of one setting that differ in these values
    are different experiments, so the report keeps them apart as variants."""
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"grid: expected a mapping of dotted options to lists of values, got "
                          f"{value!r}")
    out: dict[str, list[Any]] = {}
    for key, values in value.items():
        option = f"grid.{key}"
        if not isinstance(key, str) or key in GRID_OWNED:
            raise ConfigError(f"{option}: set by the sweep's own fields ({', '.join(GRID_OWNED)} "
                              f"are not grid options)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{option}: expected a non-empty list of values, got {values!r}")
        values = _expand_tree(copy.deepcopy(values), option, environ)
        no_repeats([repr(v) for v in values], option)
        for v in values:  # each value type-checked with its full name now
            probe: dict[str, Any] = {}
            set_dotted(probe, key, v)
            try:
                dataclass_from_dict(TrainConfig, probe, "")
            except ConfigError as err:
                raise ConfigError(f"{option}: {err}") from None
        out[key] = list(values)
    return out


def check_model_names(backbones: list[str]) -> None:
    from cytotune.models import get_card
    from cytotune.models.errors import UnknownModelError

    for i, name in enumerate(backbones):
        if ":" in name:  # '<family>:<model>' cards are built on first use
            continue
        try:
            get_card(name)
        except UnknownModelError as err:
            raise ConfigError(f"backbones[{i}]: {err}") from None


def base_lr(values: Mapping[str, Any]) -> Any:
    """``base.optim.lr`` of a sweep dict as written, or None."""
    base = values.get("base")
    optim = base.get("optim") if isinstance(base, Mapping) else None
    return optim.get("lr") if isinstance(optim, Mapping) else None


def warn_unused_lr(sweep) -> None:
    """Once per sweep: with ``lrs``, every run that learns takes its rate from the grid
    (``parse_lrs`` requires one for each such method), so ``base.optim.lr`` sets nothing."""
    lr = base_lr({"base": sweep.base})
    if sweep.lrs is not None and lr is not None:
        logging.getLogger("cytotune").warning(
            "sweep %s: lrs sets every run's learning rate; base.optim.lr=%s is not used (drop "
            "it, or drop lrs)", sweep.name, lr)


def warn_unused_length(sweep) -> None:
    """Once per sweep: ``base.optim.steps`` also sets the linear probes' length (one rule for
    every method, see OptimConfig), so ``base.optim.linear_epochs`` beside it is never used."""
    optim = sweep.base.get("optim")
    if ("linear" in sweep.method and isinstance(optim, Mapping)
            and optim.get("steps") is not None and optim.get("linear_epochs") is not None):
        logging.getLogger("cytotune").warning(
            "sweep %s: base.optim.steps=%s sets the length of the linear runs too; "
            "base.optim.linear_epochs=%s is not used (drop it, or drop steps)", sweep.name,
            optim["steps"], optim["linear_epochs"])


def refuse_ignored_lr(values: Any, overrides: Mapping[str, Any]) -> None:
    """An override of ``base.optim.lr`` that ``lrs`` would silently replace is an error
    naming both (issue 31: ``--set base.optim.lr=nan`` was accepted and ignored)."""
    touched = [k for k in overrides if k in ("base", "base.optim", "base.optim.lr")]
    if not touched or not isinstance(values, Mapping) or values.get("lrs") is None:
        return
    lr = base_lr(values)
    if lr is None:
        return
    raise ConfigError(f"override {touched[-1]} sets base.optim.lr={lr}, but the sweep's lrs "
                      f"({values['lrs']}) sets every run's learning rate, so base.optim.lr "
                      f"would be ignored; give the rates as lrs instead (--set "
                      f"'lrs=[RATE, ...]')")
