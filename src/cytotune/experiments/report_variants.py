"""Which runs of a result store may be pooled into one report cell, and what tells the others apart.

A report cell (one "mean ± std" number) pools the runs of one setting (sweep, data set, backbone,
method, shots or fraction) over seeds, with the learning rate chosen per seed on validation.
Runs of the same setting whose configurations differ in anything else (the same sweep run twice
into one store, once with ``--set base.model.image_size=224`` or ``--set base.precision=bf16``)
are different experiments: pooling them would give a number nobody ran, and choosing the
learning rate among them would pick, per seed, whichever configuration happened to validate
best. Each run therefore gets a **variant**: the values of the settings that differ between runs
of a cell, as a label such as ``model.image_size=224, precision=bf16`` (empty where a cell has
only one configuration). Selection and summaries group by setting *and* variant, tables and
figures show one row or line per variant, and :func:`split_notes` says which cells were split.

What is compared is the run's resolved TrainConfig (``config_json`` in the store, filled with
TrainConfig's defaults for fields an older record lacks), every field of it **except** the ones
in :data:`POOLED_FIELDS` (each with the reason it may differ inside a cell), plus:

- the resolved precision: ``precision: auto`` means bf16 on CUDA and fp32 on a CPU, so the same
  config run on two kinds of device is two experiments (taken from the run's recorded
  environment when the store has one, else derived from its device);
- the fingerprints of the starting weights and of the test data (``metrics_json["fingerprints"]``,
  recorded by every run since they were added), so two checkpoints under one model name or two
  versions of a data set (or of its split) are never pooled;
- the run's recorded environment (``metrics_json["environment"]``) when a store records one:
  cytotune version, weights and data fingerprints and any other entry, except the machine details
  in :data:`POOLED_ENVIRONMENT`.

A new config field therefore splits cells by default; pooling it has to be argued here.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

SETTING = ["sweep", "dataset", "backbone", "method", "shots", "fraction"]
VARIANT = "variant"
CELL = SETTING + [VARIANT]  # what one report cell pools over seeds

# Config fields (dotted paths) that may differ between runs of one cell, and why.
POOLED_FIELDS: dict[str, str] = {
    "seed": "a cell is the mean ± std over seeds",
    "optim.lr": "the learning rate is chosen per seed on validation",
    "shots": "already a column of the setting (the sample size)",
    "fraction": "already a column of the setting (the sample size)",
    "method": "already a column of the setting",
    "model.name": "already a column of the setting (the backbone)",
    # where and how a run executes, not what it computes; also left out of the run id
    # (cytotune.experiments.sweep.EXECUTION_FIELDS), so a run is stored once whatever these are
    "out": "the run directory, different for every run",
    "device": "which device a worker was given; its effect on precision is compared as "
              "'resolved precision'",
    "cache_dir": "where decoded images and features are cached",
    "num_workers": "image decoding threads",
    "overwrite": "whether an old run directory may be replaced",
}
# Entries of a recorded environment that describe the machine, not the experiment.
POOLED_ENVIRONMENT: dict[str, str] = {
    "torch": "library version of the machine (float noise, not a setting)",
    "python": "interpreter version of the machine",
    "device": "the device name a worker was given",
    "hostname": "the machine",
}
RESOLVED_PRECISION = "resolved precision"
UNSET = "(unset)"


def _default_settings() -> dict[str, Any]:
    from cytotune.training.config import TrainConfig

    return _flatten(TrainConfig().to_dict())


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a nested mapping's leaves (an empty mapping has none: ``{}`` and an absent
    section compare equal)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def value_text(value: Any) -> str:
    """A setting's value as shown in a label: 1 and 1.0 read alike, lists as [a,b]."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    return str(value)


def _resolved_precision(config: Mapping[str, Any], device: Optional[str]) -> str:
    """What ``precision`` meant for a run (as cytotune.training.features.resolve_precision),
    from the device the store recorded for it where that is explicit, else its config's."""
    precision = str(config.get("precision") or "auto")
    if precision != "auto":
        return precision
    if not device or device == "auto":
        device = config.get("device") or "auto"
    device = str(device)
    if device == "auto":
        return "unknown: device auto"
    return "bf16" if device.startswith("cuda") else "fp32"


def _effective_linear_length(values: dict[str, Any], method: str) -> None:
    """Compare what a run trained for, not how it was spelled: ``optim.linear_epochs`` None
    means :data:`DEFAULT_LINEAR_EPOCHS` (older records wrote the number), and it has no effect
    on a run that is not a linear probe or whose ``optim.steps`` is set (see
    ``OptimConfig.linear_steps``)."""
    from cytotune.training.config import DEFAULT_LINEAR_EPOCHS

    key = "optim.linear_epochs"
    if method != "linear" or values.get("optim.steps") is not None:
        values.pop(key, None)
    elif values.get(key) is None:
        values[key] = DEFAULT_LINEAR_EPOCHS


def run_settings(config: Mapping[str, Any], metrics: Optional[Mapping[str, Any]] = None,
                 device: Optional[str] = None,
                 defaults: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
    """Everything that makes a run's result what it is, as ``{dotted name: value text}``:
    its config (defaults filled in) without :data:`POOLED_FIELDS`, its resolved precision and
    its recorded environment without :data:`POOLED_ENVIRONMENT`."""
    values = dict(_default_settings() if defaults is None else defaults)
    values.update(_flatten(config))
    _effective_linear_length(values, str(config.get("method") or values.get("method")))
    settings = {name: value_text(value) for name, value in values.items()
                if name not in POOLED_FIELDS}
    settings[RESOLVED_PRECISION] = _resolved_precision(config, device)
    fingerprints = (metrics or {}).get("fingerprints") or {}
    if isinstance(fingerprints, Mapping):
        # the starting weights and the test data (training.runner.assemble_result)
        for name, value in fingerprints.items():
            settings[f"{name} fingerprint"] = value_text(value)
    environment = (metrics or {}).get("environment") or {}
    if isinstance(environment, Mapping):
        for name, value in _flatten(environment).items():
            if name in POOLED_ENVIRONMENT:
                continue
            if name == "precision":
                settings[RESOLVED_PRECISION] = value_text(value)
            elif name == "cytotune":
                settings["cytotune version"] = value_text(value)
            else:
                settings[f"environment.{name}"] = value_text(value)
    return settings


def _records_settings(records: pd.DataFrame) -> list[dict[str, str]]:
    if "config_json" not in records:
        raise ValueError("records have no config_json column, so runs with different settings "
                         "cannot be told apart: pass ResultStore.records(full=True) (or add a "
                         f"'{VARIANT}' column yourself)")
    metrics = records["metrics_json"] if "metrics_json" in records else [None] * len(records)
    devices = records["device"] if "device" in records else [None] * len(records)
    rows = tuple(zip(records["config_json"], metrics, devices))
    try:
        return list(_settings_of(rows))
    except TypeError:  # configs given as dicts (unhashable): no memo
        return _parse_settings(rows)


@functools.lru_cache(maxsize=2)
def _settings_of(rows: tuple) -> tuple[dict[str, str], ...]:
    """:func:`_parse_settings`, memoised: a report reads every run's settings twice (variants,
    then the notes on split cells), which costs seconds for 10,000 runs. Callers only read the
    dicts."""
    return tuple(_parse_settings(rows))


def _parse_settings(rows) -> list[dict[str, str]]:
    defaults = _default_settings()
    out = []
    for config, metric, device in rows:
        config = json.loads(config) if isinstance(config, str) else (config or {})
        metric = json.loads(metric) if isinstance(metric, str) else (metric or {})
        out.append(run_settings(config, metric, None if pd.isna(device) else device, defaults))
    return out


def differing_fields(settings: Iterable[Mapping[str, str]]) -> list[str]:
    """The names whose values are not the same in all of ``settings`` (missing counts as a
    value of its own), in first-seen order."""
    settings = list(settings)
    names = list(dict.fromkeys(name for s in settings for name in s))
    return [n for n in names if len({s.get(n, UNSET) for s in settings}) > 1]


def _without_implied_precision(names: list[str], settings: list[Mapping[str, str]]) -> list[str]:
    """``names`` without the resolved precision where the asked-for precision already tells it
    (``precision=bf16`` needs no ``resolved precision=bf16`` beside it); it stays where it is the
    only difference (``auto`` on a CPU and on CUDA) or where one asked-for value resolved to
    two."""
    if RESOLVED_PRECISION not in names or "precision" not in names:
        return names
    resolved: dict[str, set[str]] = {}
    for s in settings:
        resolved.setdefault(s.get("precision", UNSET), set()).add(s.get(RESOLVED_PRECISION, UNSET))
    if all(len(values) == 1 for values in resolved.values()):
        return [n for n in names if n != RESOLVED_PRECISION]
    return names


TEST_DATA_FINGERPRINT = "test_data fingerprint"


def _without_implied(names: list[str], settings: list[Mapping[str, str]], implied: str) -> list[str]:
    """``names`` without ``implied`` where the other names' values already tell it (a stain
    normalisation changes the test pixels, hence their fingerprint: ``data.stain_norm=macenko``
    says it); it stays where runs with the same other values differ in it."""
    if implied not in names or len(names) == 1:
        return names
    others = [n for n in names if n != implied]
    seen: dict[tuple[str, ...], str] = {}
    for s in settings:
        key = tuple(s.get(n, UNSET) for n in others)
        if seen.setdefault(key, s.get(implied, UNSET)) != s.get(implied, UNSET):
            return names
    return others


def _shown(name: str, settings: Mapping[str, str], names: list[str]) -> str:
    """A setting's value in a label; an asked-for precision whose resolved value is not shown on
    its own carries it: ``precision=auto (fp32)``."""
    value = settings.get(name, UNSET)
    if name == "precision" and RESOLVED_PRECISION not in names:
        resolved = settings.get(RESOLVED_PRECISION, UNSET)
        if resolved != value:
            return f"{value} ({resolved})"
    return value


def _cells(frame: pd.DataFrame) -> list[list[int]]:
    """Positional row numbers of each setting (cell before variants), first-seen order."""
    groups = frame.reset_index(drop=True).groupby(SETTING, dropna=False, sort=False).indices
    return [list(rows) for rows in groups.values()]


def add_variants(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` (with ``config_json``) plus a ``variant`` column: the label of the settings in
    which the run differs from other runs of its cell ("" where a cell has one configuration).

    The label names the same fields for every run of a sweep (all fields that differ inside any
    of its cells), so a variant's rows and curves line up across data sets, backbones and sample
    sizes. A frame that already has a ``variant`` column is returned as it is."""
    if VARIANT in records:
        return records
    frame = records.reset_index(drop=True).copy()
    if frame.empty:
        frame[VARIANT] = pd.Series(dtype=object)
        return frame
    settings = _records_settings(frame)
    labels = [""] * len(frame)
    for _, rows in frame.groupby("sweep", sort=False).indices.items():
        part = frame.iloc[rows]
        varying: list[str] = []
        for cell in _cells(part):
            for name in differing_fields(settings[rows[i]] for i in cell):
                if name not in varying:
                    varying.append(name)
        varying = _without_implied_precision(varying, [settings[r] for r in rows])
        varying = _without_implied(varying, [settings[r] for r in rows], TEST_DATA_FINGERPRINT)
        if not varying:
            continue
        order = {name: i for i, name in enumerate(settings[rows[0]])}
        varying.sort(key=lambda n: (order.get(n, len(order)), n))
        for row in rows:
            labels[row] = ", ".join(f"{n}={_shown(n, settings[row], varying)}" for n in varying)
    frame[VARIANT] = labels
    return frame


def cell_words(sweep: Any, dataset: Any, backbone: Any, method: Any, shots: Any,
               fraction: Any) -> str:
    """A cell named for a person: ``bcfc / clip / lora / 4 shots``."""
    if shots is not None and not pd.isna(shots):
        sample = f"{int(shots)} shot{'s' if int(shots) != 1 else ''}"
    elif fraction is not None and not pd.isna(fraction):
        sample = f"{float(fraction):g} %"
    else:
        sample = "all data"
    return f"{dataset} / {backbone} / {method} / {sample}"


def split_notes(records: pd.DataFrame, max_cells: int = 4) -> list[str]:
    """One line per sweep and set of differing settings whose cells were split into variants
    (naming the settings, their values and the cells), and one per sweep with several runs of
    identical settings for one seed and learning rate. Empty when nothing was split."""
    if records.empty:
        return []
    frame = records.reset_index(drop=True)
    settings = _records_settings(frame)
    splits: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for cell in _cells(frame):
        cell_settings = [settings[i] for i in cell]
        fields = tuple(_without_implied_precision(differing_fields(cell_settings), cell_settings))
        if not fields:
            continue
        first = frame.iloc[cell[0]]
        entry = splits.setdefault((first["sweep"], fields), {"cells": [], "values": {}})
        entry["cells"].append(cell_words(*(first[c] for c in SETTING)))
        for name in fields:
            values = entry["values"].setdefault(name, [])
            for i in cell:
                value = _shown(name, settings[i], list(fields))
                if value not in values:
                    values.append(value)
    notes = []
    for (sweep, fields), entry in splits.items():
        differ = "; ".join(f"{name} ({' vs '.join(entry['values'][name])})" for name in fields)
        cells = entry["cells"]
        shown = ", ".join(cells[:max_cells]) + (f" and {len(cells) - max_cells} more"
                                                 if len(cells) > max_cells else "")
        notes.append(f"sweep {sweep}: runs differ in {differ} in {len(cells)} "
                     f"cell{'s' if len(cells) != 1 else ''} ({shown}); they are not pooled: "
                     f"each setting is reported as its own row, labelled in the 'setting' column")
    notes += _duplicate_notes(add_variants(frame), max_cells)
    return notes


def _duplicate_notes(frame: pd.DataFrame, max_cells: int) -> list[str]:
    """Several runs with identical compared settings for one cell, seed and learning rate (e.g.
    a generated data set made with other options): selection keeps the best on validation."""
    notes = []
    if "lr" not in frame or "seed" not in frame:
        return notes
    for sweep, part in frame.groupby("sweep", sort=False):
        sizes = part.groupby(CELL + ["seed", "lr"], dropna=False, sort=False).size()
        repeated = sizes[sizes > 1]
        if repeated.empty:
            continue
        examples = [f"{cell_words(*key[:6])}, seed {key[7]}, lr {key[8]:g}"
                    for key in repeated.index[:max_cells]]
        notes.append(f"sweep {sweep}: {len(repeated)} (cell, seed, learning rate) "
                     f"combination{'s have' if len(repeated) != 1 else ' has'} more than one run "
                     f"with the same recorded settings ({'; '.join(examples)}); the run best on "
                     f"validation is used")
    return notes
