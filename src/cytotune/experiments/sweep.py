"""A sweep: a grid of training runs described once in YAML, expanded into a fixed list of runs.

    name: experiment2_lora_fewshot
    datasets:                       # name -> where and how to read it
      mlcc: {source: "${CYTOTUNE_MLCC}", layout: mlcc}
      hicervix: {source: "${CYTOTUNE_HICERVIX}", layout: hicervix, options: {level: 3}}
    backbones: [clip-vit-b16, uni]  # model card names
    method: lora                    # or a list of methods
    shots: [1, 2, 4, all]           # k images per class ("all": the whole training split) ...
    # fractions: [5, 10, 100]       # ... or percentages of the training split
    seeds: [1, 2, 3]
    lrs: [1e-4, 1e-3]               # or per method: {linear: [...], lora: [...]}
    base:                           # a partial TrainConfig shared by every run
      lora: {rank: 2, targets: [q, v]}
      optim: {batch_size: 32}
      cache_dir: "${CYTOTUNE_CACHE:-.cytotune_cache}"
      out: "runs/{sweep}/{run_id}"  # optional run directories; the result store is the truth

Strings in ``datasets`` and ``base`` may name environment variables as ``${NAME}`` or
``${NAME:-default}``; a variable that is unset (and has no default) is a :class:`ConfigError`
naming it. A data set entry may carry ``generate: {n_per_class, image_size, seed, classes}``:
the sweep then draws cytotune's synthetic cytology-like set into ``source`` when that folder does
not exist yet (demos and tests that must run offline).

A training-free method (``zero-shot``) is planned once per (data set, backbone): on the whole
training split, with the first seed and learning rate, whatever the shots, seeds and ``lrs`` say
(nothing it computes depends on them; it needs no entry in a per-method ``lrs``).

Runs are ordered by (data set, backbone), then method, sample size, seed and learning rate, so
linear-probe runs that share frozen features run back to back and reuse the feature cache.

Each run has a stable id: a hash of what determines its result, namely the sweep name, the data
set name and the resolved TrainConfig (data sources expanded and made absolute) without the
fields that only say where or how it executes (``out``, ``device``, ``cache_dir``,
``num_workers``, ``overwrite``: the device a parallel worker is given must not change the id).
Options equal to TrainConfig's defaults are left out of the hash, so an option added to
TrainConfig later (with a default) keeps every existing id. The data path is part of the id on
purpose: the same sweep file pointed (through its environment variables) at another data set
must not find the first data set's results and call itself done.

Each field of the file is parsed and checked in :mod:`cytotune.experiments.sweep_fields`; this
module assembles them into a :class:`SweepConfig` and plans its runs.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

from cytotune.experiments.dataset_selection import select_datasets
from cytotune.experiments.sweep_fields import (HELD_OUT, OUT_PLACEHOLDER_PATTERN, DatasetSpec,
                                               ShotsValue, check_model_names, no_repeats,
                                               parse_base, parse_budgets, parse_datasets,
                                               parse_grid,
                                               parse_exclude, parse_fractions, parse_lrs,
                                               parse_methods, parse_robustness,
                                               parse_sampling, parse_shots,
                                               refuse_ignored_lr, string_list,
                                               warn_unused_length, warn_unused_lr,
                                               base_lr)
from cytotune.training.config import (DEFAULT_LINEAR_EPOCHS, ConfigError, TrainConfig,
                                      check_lr, coerce_value, load_yaml_file, set_dotted)


class Sample(NamedTuple):
    """What one grid point takes from the training split: ``shots`` per class, a ``fraction``
    (percent), a label ``budget`` chosen by ``sampling``, or (all None) all of it."""

    shots: Optional[int] = None
    fraction: Optional[float] = None
    budget: Optional[int] = None
    sampling: Optional[str] = None


# TrainConfig fields that say where or how a run executes, not what it computes.
EXECUTION_FIELDS = ("out", "device", "cache_dir", "num_workers", "overwrite")



@dataclass
class PlannedRun:
    """One run of a sweep: its key fields, its full TrainConfig and its stable id."""

    run_id: str
    sweep: str
    dataset: str
    backbone: str
    method: str
    shots: Optional[int]
    fraction: Optional[float]
    seed: int
    lr: float
    config: TrainConfig

    @property
    def sample(self) -> str:
        """'4shot', 'frac25', 'budget16-kmeans' or 'all'."""
        if self.config.budget is not None:
            return f"budget{self.config.budget}-{self.config.sampling}"
        if self.shots is not None:
            return f"{self.shots}shot"
        if self.fraction is not None:
            return f"frac{self.fraction:g}"
        return "all"

    def key_fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "sweep": self.sweep, "dataset": self.dataset,
                "backbone": self.backbone, "method": self.method, "shots": self.shots,
                "fraction": self.fraction, "seed": self.seed, "lr": self.lr}

    def describe(self) -> str:
        return (f"{self.dataset} {self.backbone} {self.method} {self.sample} seed={self.seed} "
                f"lr={self.lr:g}")


@dataclass
class SweepConfig:
    """A grid of runs; see the module docstring for the YAML form."""

    name: str
    datasets: dict[str, DatasetSpec]
    backbones: list[str]
    method: list[str] = field(default_factory=lambda: ["linear"])
    shots: Optional[list[ShotsValue]] = None  # None (and no fractions): one "all data" sample
    fractions: Optional[list[float]] = None
    # label budgets (issue 34): training images in total, each chosen by every ``sampling``
    # strategy on the backbone's features before a label is read; instead of shots/fractions
    budgets: Optional[list[int]] = None
    sampling: list[str] = field(default_factory=lambda: ["random"])
    seeds: list[int] = field(default_factory=lambda: [1])
    lrs: Optional[Union[list[float], dict[str, list[float]]]] = None  # None: base.optim.lr
    base: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source_path: Optional[str] = field(default=None, compare=False)
    # combinations left out of the grid, e.g. [{backbone: "timm:resnet50", method: lora}]
    exclude: list[dict[str, str]] = field(default_factory=list)
    # image-tower LoRA runs trained together on one backbone (cytotune.training.group): 1 runs
    # them one by one; results are the same either way, only the speed differs
    pack_size: int = 1
    # perturbations every finished run is evaluated under (.robustness_phase); not part of a
    # run's identity: evaluation only
    robustness: Optional[list[str]] = None
    # more settings crossed with the grid: dotted TrainConfig field -> values (variants)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    # data sets left out because their environment variables are unset: name -> why
    skipped_datasets: dict[str, str] = field(default_factory=dict, compare=False)

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, environ: Optional[Mapping[str, str]] = None,
                  check_models: bool = True) -> "SweepConfig":
        return _parse_sweep(values, environ, check_models)

    @classmethod
    def from_yaml(cls, path: str | Path, *, environ: Optional[Mapping[str, str]] = None,
                  check_models: bool = True) -> "SweepConfig":
        path = Path(path)
        values = load_yaml_file(path) or {}
        try:
            sweep = _parse_sweep(values, environ, check_models)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        sweep.source_path = str(path)
        return sweep

    def to_dict(self) -> dict[str, Any]:
        """The sweep as written (data sources unexpanded), loadable again with ``from_dict``."""
        datasets = {}
        for name, spec in self.datasets.items():
            entry = {k: v for k, v in dataclasses.asdict(spec).items()
                     if k != "resolved_source" and v not in (None, {})}
            if entry.get("generate") and entry["generate"].get("classes") is not None:
                entry["generate"]["classes"] = list(entry["generate"]["classes"])
            datasets[name] = entry
        out: dict[str, Any] = {"name": self.name, "datasets": datasets,
                               "backbones": list(self.backbones), "method": list(self.method)}
        if self.shots is not None:
            out["shots"] = ["all" if s is None else s for s in self.shots]
        if self.fractions is not None:
            out["fractions"] = list(self.fractions)
        if self.budgets is not None:
            out["budgets"], out["sampling"] = list(self.budgets), list(self.sampling)
        out["seeds"] = list(self.seeds)
        if self.lrs is not None:
            out["lrs"] = copy.deepcopy(self.lrs)
        out["base"] = copy.deepcopy(self.base)
        if self.description:
            out["description"] = self.description
        if self.exclude:
            out["exclude"] = copy.deepcopy(self.exclude)
        if self.pack_size != 1:
            out["pack_size"] = self.pack_size
        if self.robustness:
            out["robustness"] = list(self.robustness)
        if self.grid:
            out["grid"] = copy.deepcopy(self.grid)
        return out

    def excluded(self, dataset: str, backbone: str, method: str) -> bool:
        """Whether an ``exclude`` entry matches this combination (every key it gives agrees;
        a data set name also matches its ``.heldout-<domain>`` entries)."""
        values = {"dataset": dataset, "backbone": backbone, "method": method}
        return any(all(values[k] == v or (k == "dataset" and dataset.startswith(v + HELD_OUT))
                       for k, v in entry.items()) for entry in self.exclude)

    # ---- expansion ----------------------------------------------------------------------------
    def samples(self) -> list[Sample]:
        """(shots, fraction, budget, sampling) in order; all None is all of the training split."""
        if self.budgets is not None:
            return [Sample(budget=b, sampling=s) for b in self.budgets for s in self.sampling]
        if self.fractions is not None:
            return [Sample(fraction=f) for f in self.fractions]
        if self.shots is not None:
            return [Sample(shots=s) for s in self.shots]
        return [Sample()]

    def lrs_for(self, method: str) -> list[float]:
        if self.lrs is None or (isinstance(self.lrs, dict) and method not in self.lrs):
            return [float(TrainConfig.from_dict(self.base).optim.lr)]
        if isinstance(self.lrs, dict):
            return list(self.lrs[method])
        return list(self.lrs)

    def grid_for(self, method: str) -> tuple[list[Sample], list[int], list[float]]:
        """(samples, seeds, learning rates) of one method. A training-free method (zero-shot)
        learns nothing from the training split, so neither the sample size, the seed nor the
        learning rate changes its test result: it runs once, on the whole split with the first
        seed and learning rate (the report draws it as the 0-shot point). A feature probe
        (prototype, knn, logreg) takes no learning rate: one run per sample and seed."""
        from cytotune.training.method_registry import FEATURE_PROBES, TRAINING_FREE

        if method in TRAINING_FREE:
            return [Sample()], list(self.seeds[:1]), self.lrs_for(method)[:1]
        if method in FEATURE_PROBES:
            return self.samples(), list(self.seeds), self.lrs_for(method)[:1]
        return self.samples(), list(self.seeds), self.lrs_for(method)

    def runs(self) -> list[PlannedRun]:
        """Every run of the sweep, in execution order, each with its resolved TrainConfig."""
        out_pattern = self.base.get("out")
        runs: list[PlannedRun] = []
        seen: dict[str, str] = {}
        for dataset_name, spec in self.datasets.items():
            for backbone in self.backbones:
                for method in self.method:
                    if self.excluded(dataset_name, backbone, method):
                        continue
                    samples, seeds, lrs = self.grid_for(method)
                    for combo in self.combinations():
                        template = self._template(dataset_name, spec, backbone, method, combo)
                        for sample, seed, lr in itertools.product(samples, seeds, lrs):
                            run = self._plan(template, dataset_name, spec, sample, seed, lr,
                                             out_pattern)
                            if run.run_id in seen:
                                raise ConfigError(f"runs {seen[run.run_id]} and "
                                                  f"{run.describe()} are the same run "
                                                  f"(repeated values in the grid?)")
                            seen[run.run_id] = run.describe()
                            runs.append(run)
        return runs

    def combinations(self) -> list[dict[str, Any]]:
        """Every combination of the ``grid`` values ([{}] without a grid), in order."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def _template(self, dataset_name: str, spec: DatasetSpec, backbone: str,
                  method: str, combo: Optional[Mapping[str, Any]] = None) -> TrainConfig:
        """The TrainConfig shared by the runs of one (data set, backbone, method, grid
        combination)."""
        values = copy.deepcopy(self.base)
        values.pop("out", None)
        for key, value in (combo or {}).items():
            set_dotted(values, key, copy.deepcopy(value), "grid option")
        values["data"] = {**values.get("data", {}), **spec.data_overrides()}
        values["model"] = {**values.get("model", {}), "name": backbone}
        values["method"] = method
        try:
            template = TrainConfig.from_dict(values)
            # checked even where ``lrs`` replaces it: a NaN here is a mistake, not a no-op
            check_lr("base.optim.lr", template.optim.lr)
        except ConfigError as err:
            raise ConfigError(f"run {dataset_name}/{backbone}/{method}: {err}") from None
        return template

    def _plan(self, template: TrainConfig, dataset_name: str, spec: DatasetSpec,
              sample: Sample, seed: int, lr: float, out_pattern: Optional[str]) -> PlannedRun:
        config = copy.deepcopy(template)  # the grid values below are already type-checked
        shots, frac = sample.shots, sample.fraction
        config.shots, config.fraction, config.seed = shots, frac, int(seed)
        if sample.budget is not None:
            config.budget, config.sampling = sample.budget, sample.sampling or "random"
        config.optim.lr = float(lr)
        try:
            config.validate()
        except ConfigError as err:
            raise ConfigError(f"run {dataset_name}/{config.model.name}/{config.method}: "
                              f"{err}") from None
        run_id = compute_run_id(self.name, dataset_name, spec, config)
        run = PlannedRun(run_id=run_id, sweep=self.name, dataset=dataset_name,
                         backbone=config.model.name, method=config.method, shots=shots,
                         fraction=frac, seed=int(seed), lr=float(lr), config=config)
        if out_pattern:
            config.out = format_out(out_pattern, run)
            config.overwrite = True  # a directory left by a run the store lacks is stale
        return run


_DEFAULTS: Optional[dict[str, Any]] = None


def _default_values() -> dict[str, Any]:
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = TrainConfig().to_dict()
    return _DEFAULTS


def compute_run_id(sweep: str, dataset: str, spec: DatasetSpec, config: TrainConfig) -> str:
    """Stable id of a run (see the module docstring for what it covers)."""
    values = config.to_dict()
    for name in EXECUTION_FIELDS:
        values.pop(name, None)
    if values["optim"].get("linear_epochs") == DEFAULT_LINEAR_EPOCHS:
        # linear_epochs' default became None (meaning DEFAULT_LINEAR_EPOCHS); an explicit
        # default keeps the id it had when the default was written out
        values["optim"]["linear_epochs"] = None
    defaults = _default_values()
    identity = {"sweep": sweep, "dataset": dataset, "config": _prune_defaults(values, defaults)}
    if spec.generate is not None:
        identity["generate"] = dataclasses.asdict(spec.generate)
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _prune_defaults(values: Any, defaults: Any) -> Any:
    if isinstance(values, dict) and isinstance(defaults, dict):
        out = {}
        for key, value in values.items():
            if key in defaults:
                if isinstance(value, dict) and isinstance(defaults[key], dict) and value:
                    pruned = _prune_defaults(value, defaults[key])
                    if pruned:
                        out[key] = pruned
                    continue
                if value == defaults[key]:
                    continue
            out[key] = value
        return out
    return values


def format_out(pattern: str, run: PlannedRun) -> str:
    """``base.out`` with its ``{placeholders}`` filled for ``run``."""
    values = {"sweep": run.sweep, "run_id": run.run_id, "dataset": run.dataset,
              "backbone": run.backbone.replace(":", "_").replace("/", "_"), "method": run.method,
              "sample": run.sample, "shots": "all" if run.shots is None else run.shots,
              "fraction": "" if run.fraction is None else f"{run.fraction:g}", "seed": run.seed,
              "lr": f"{run.lr:g}"}
    return OUT_PLACEHOLDER_PATTERN.sub(lambda m: str(values[m.group(1)]), pattern)


# ---- parsing --------------------------------------------------------------------------------
_SWEEP_KEYS = ("name", "description", "datasets", "backbones", "method", "shots", "fractions",
               "budgets", "sampling", "seeds", "lrs", "base", "exclude", "pack_size",
               "robustness", "grid")


def _parse_sweep(values: Any, environ, check_models: bool) -> SweepConfig:
    if not isinstance(values, Mapping):
        raise ConfigError(f"a sweep is a mapping at the top level, got {type(values).__name__}")
    unknown = sorted(set(values) - set(_SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(_SWEEP_KEYS))}")
    for required in ("name", "datasets", "backbones"):
        if values.get(required) in (None, "", [], {}):
            raise ConfigError(f"{required} is required")
    name = coerce_value(str, values["name"], "name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"name: {name!r} must be letters, digits, '_', '.' or '-'")
    description = coerce_value(str, values.get("description") or "", "description")
    datasets = parse_datasets(values["datasets"], environ)
    backbones = string_list(values["backbones"], "backbones")
    methods = parse_methods(values.get("method", "linear"))
    shots = parse_shots(values["shots"]) if values.get("shots") is not None else None
    fractions = (parse_fractions(values["fractions"]) if values.get("fractions") is not None
                 else None)
    if shots is not None and fractions is not None:
        raise ConfigError("give either shots or fractions, not both")
    budgets = parse_budgets(values["budgets"]) if values.get("budgets") is not None else None
    if budgets is not None and (shots is not None or fractions is not None):
        raise ConfigError(f"budgets choose the training images themselves; give budgets or "
                          f"{'shots' if shots is not None else 'fractions'}, not both")
    if values.get("sampling") is not None and budgets is None:
        raise ConfigError("sampling chooses the images of a label budget: give budgets too")
    sampling = parse_sampling(values.get("sampling") or ["random"])
    seeds = coerce_value(list[int], values.get("seeds", [1]), "seeds")
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    no_repeats(seeds, "seeds")
    base = parse_base(values.get("base") or {}, environ)
    lrs = parse_lrs(values.get("lrs"), methods)
    if check_models:
        check_model_names(backbones)
    exclude = parse_exclude(values.get("exclude") or [])
    pack_size = coerce_value(int, values.get("pack_size", 1), "pack_size")
    if pack_size < 1:
        raise ConfigError(f"pack_size must be >= 1, got {pack_size}")
    grid = parse_grid(values["grid"], environ) if values.get("grid") is not None else {}
    robustness = (parse_robustness(values["robustness"], base)
                  if values.get("robustness") is not None else None)
    sweep = SweepConfig(name=name, datasets=datasets, backbones=backbones, method=methods,
                        shots=shots, fractions=fractions, budgets=budgets, sampling=sampling,
                        seeds=seeds, lrs=lrs, base=base,
                        description=description, exclude=exclude, pack_size=pack_size,
                        robustness=robustness, grid=grid)
    if not sweep.runs():  # every run must be a valid TrainConfig: fail at load, not mid-sweep
        raise ConfigError("exclude leaves no run in the grid")
    warn_unused_length(sweep)
    warn_unused_lr(sweep)
    return sweep


def load_sweep(sweep: "SweepConfig | Mapping[str, Any] | str | Path", *,
               overrides: Optional[Mapping[str, Any]] = None,
               environ: Optional[Mapping[str, str]] = None,
               check_models: bool = True, datasets: Optional[Sequence[str]] = None,
               skip_unset_datasets: bool = False) -> SweepConfig:
    """A sweep from a SweepConfig, a dict, a YAML path, or the name of a shipped experiment
    (see :func:`cytotune.experiments.list_experiments`).

    ``overrides`` maps dotted option paths to values applied before validation, e.g.
    ``{"base.optim.steps": 10, "seeds": [1]}``. ``datasets``: run only these data sets;
    ``skip_unset_datasets``: leave out the data sets whose environment variables are unset
    (listed in ``skipped_datasets``) instead of failing, unless none is left.
    """
    from cytotune.experiments.catalog import experiment_path, list_experiments

    source_path = None
    narrowed = bool(datasets) or skip_unset_datasets
    if isinstance(sweep, SweepConfig):
        if not overrides and not narrowed:
            return sweep
        values: Any = sweep.to_dict()
        source_path = sweep.source_path
    elif isinstance(sweep, Mapping):
        values = copy.deepcopy(dict(sweep))
    elif isinstance(sweep, (str, Path)):
        path = Path(sweep)
        if not path.exists() and isinstance(sweep, str) and sweep in list_experiments():
            path = experiment_path(sweep)
        if not path.exists():
            raise ConfigError(f"sweep {str(sweep)!r} is neither a file nor a shipped experiment "
                              f"({', '.join(list_experiments())})")
        if not overrides and not narrowed:
            return SweepConfig.from_yaml(path, environ=environ, check_models=check_models)
        values = load_yaml_file(path) or {}
        source_path = str(path)
    else:
        raise ConfigError(f"a sweep is a SweepConfig, dict, YAML path or experiment name, got "
                          f"{type(sweep).__name__}")
    for key, value in (overrides or {}).items():
        apply_override(values, key, value)
    skipped: dict[str, str] = {}
    try:
        refuse_ignored_lr(values, overrides or {})
        if narrowed and isinstance(values, dict):
            skipped = select_datasets(values, datasets, os.environ if environ is None else environ,
                                      skip_unset_datasets)
        result = SweepConfig.from_dict(values, environ=environ, check_models=check_models)
    except ConfigError as err:
        raise ConfigError(f"{source_path}: {err}" if source_path else str(err)) from None
    result.source_path = source_path
    result.skipped_datasets = skipped
    return result


def apply_override(values: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted option ``key`` (e.g. ``base.optim.steps``) in a sweep dict."""
    set_dotted(values, key, value, label="override")
