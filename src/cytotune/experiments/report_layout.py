"""Which tables a report writes for each sweep, and what their cells say.

One layout per sweep (the same for every metric), chosen so that no table is a pile of one-row
tables (issue 30, item 8):

- **methods compared** (the sweep runs two or more methods, zero-shot counting as one): one
  table per data set and backbone, the methods (and their variants, e.g. ``select_on=val`` vs
  ``train-cv``) as rows, the training sizes as columns (``zero-shot``, ``1 shot``, ``2 shots``
  ..., ``10%`` ..., ``all``), after a ``trainable parameters`` column; data sets with held-out
  test domains add an ``(out of domain)`` column after each size. Stem
  ``<sweep>__<dataset>__<backbone>__<metric>``.
- **learning curve** (one method, several training sizes: the study's Exp. 2 and 3): one table
  for the sweep, (data set, backbone) as rows, the training sizes as columns, and, with two or
  more data sets, an ``Average`` row per backbone. Stem ``<sweep>__<method>__<metric>``.
- **Table 1** (one method, one training size: the study's Exp. 1): data sets as rows,
  backbones as columns and, with two or more data sets, an ``Average`` row. Stem
  ``<sweep>__<method>__<sample>__<metric>``.

``Average`` is the mean over data sets of the cells' means, shown only where every data set of
the table has the cell (an average over a different set of data sets per column would compare
nothing). Variants get their own rows (a ``setting`` index level) and Average rows.

A cell is ``mean [low, high]`` where the summary has an interval for it (``ci_low``,
``ci_high`` in percent, :mod:`cytotune.experiments.report_stats`), else ``mean±std`` over
seeds; :func:`cell_words` says which in each heading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from cytotune.experiments.report_tables import (METRIC_LABELS, SETTING_LEVEL, ZERO_SHOT,
                                                first_seen, fmt_cell, has_intervals,
                                                has_variants, sample_key, sample_label,
                                                sample_words, slug)
from cytotune.experiments.report_variants import VARIANT

PARAMS_COLUMN = "trainable parameters"
OOD_SUFFIX = " (out of domain)"
AVERAGE = "Average"
LAYOUT_METHODS, LAYOUT_CURVE, LAYOUT_TABLE1 = "methods", "learning curve", "table 1"
_NAN4 = (math.nan, math.nan, math.nan, math.nan)


@dataclass
class TableOut:
    """One table to write: its file stem, the frame and its heading."""

    stem: str
    table: pd.DataFrame
    heading: str


def sample_column(method: Any, shots: Any, fraction: Any) -> str:
    """A training size as a short column header: ``zero-shot``, ``1 shot``, ``4 shots``,
    ``10%``, ``all`` (all training data)."""
    if method == ZERO_SHOT:
        return "zero-shot"
    if shots is not None and not pd.isna(shots):
        return f"{int(shots)} shot" if int(shots) == 1 else f"{int(shots)} shots"
    if fraction is not None and not pd.isna(fraction):
        return f"{float(fraction):g}%"
    return "all"


def cell_words(part: pd.DataFrame) -> str:
    """What the cells of a table built from ``part`` (summary rows) hold, for its heading:
    ``mean [95 % interval: <basis>]`` where rows have intervals (``ci_level``, when the summary
    carries one, names the level), else ``mean±std over seeds``."""
    if not has_intervals(part):
        return "mean±std over seeds"
    level = ""
    if "ci_level" in part and part["ci_level"].notna().any():
        value = float(part["ci_level"].dropna().iloc[0])
        level = f"{value * 100 if value <= 1 else value:g} % "
    bases = [b for b in first_seen(part.get("ci_basis", pd.Series(dtype=object)).dropna())
             if str(b).strip()]
    text = f"mean [{level}interval" + (f": {'; '.join(map(str, bases))}]" if bases else "]")
    if (part["ci_low"].isna() | part["ci_high"].isna()).any():
        text += ", mean±std over seeds where a cell has no interval"
    return text


def _split_words(part: pd.DataFrame) -> str:
    return (f"; runs of different settings are not pooled: one row per '{SETTING_LEVEL}'"
            if has_variants(part) else "")


def _variant(row: Any) -> str:
    value = getattr(row, VARIANT, "")
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _cell(row: Any) -> tuple[float, float, float, float]:
    return (row.mean, row.std, getattr(row, "ci_low", math.nan), getattr(row, "ci_high", math.nan))


def sweep_layout(summary: pd.DataFrame, sweep: str) -> str:
    """The layout of ``sweep``'s tables (module docstring)."""
    part = summary[summary["sweep"] == sweep]
    if part["method"].nunique() >= 2:
        return LAYOUT_METHODS
    samples = {sample_key(r.method, r.shots, r.fraction) for r in part.itertuples()}
    return LAYOUT_TABLE1 if len(samples) == 1 else LAYOUT_CURVE


def _samples(part: pd.DataFrame) -> list[tuple[tuple, str]]:
    """(order key, column) of every training size in ``part``, zero-shot first, then shots,
    fractions and all data, ascending."""
    keys = {sample_key(r.method, r.shots, r.fraction): sample_column(r.method, r.shots,
                                                                     r.fraction)
            for r in part.itertuples()}
    return sorted(keys.items())


def _params(selected: pd.DataFrame, sweep: str) -> dict[tuple, str]:
    """(dataset, backbone, method, variant) -> median trainable parameters of its chosen runs."""
    chosen = selected[selected["sweep"] == sweep] if not selected.empty else selected
    if chosen.empty or "trainable_params" not in chosen:
        return {}
    keys = ["dataset", "backbone", "method"] + ([VARIANT] if VARIANT in chosen else [])
    out = {}
    for key, group in chosen.groupby(keys, dropna=False, sort=False):
        variant = key[3] if VARIANT in chosen else ""
        variant = "" if variant is None or pd.isna(variant) else str(variant)
        values = group["trainable_params"].dropna()
        out[(*key[:3], variant)] = f"{int(values.median()):,}" if len(values) else ""
    return out


def _grid(part: pd.DataFrame, ood: pd.DataFrame, row_of, rows: list[tuple],
          params: Optional[dict[tuple, str]]) -> tuple[pd.DataFrame, dict[tuple, dict]]:
    """A frame with one row per key in ``rows`` (``row_of(summary row)`` gives a row's key),
    a parameters column (when ``params`` is given and some row has a count), one column per training size and, where ``ood`` has values
    for the table's rows, an out-of-domain column after it. Also returns the raw cells
    (key -> column -> (mean, std, low, high)) for averages."""
    samples = _samples(part)
    cells: dict[tuple, dict[str, tuple]] = {}
    for r in part.itertuples():
        cells.setdefault(row_of(r), {})[sample_column(r.method, r.shots, r.fraction)] = _cell(r)
    ood_cells: dict[tuple, dict[str, tuple]] = {}
    for r in ood.itertuples():
        ood_cells.setdefault(row_of(r), {})[sample_column(r.method, r.shots, r.fraction)] = \
            _cell(r)
    ood_cells = {k: v for k, v in ood_cells.items() if k in set(rows)}
    columns = [PARAMS_COLUMN] if params is not None else []
    for _, column in samples:
        columns.append(column)
        if any(column in v for v in ood_cells.values()):
            columns.append(column + OOD_SUFFIX)
    table = pd.DataFrame("", index=range(len(rows)), columns=columns, dtype=object)
    for i, key in enumerate(rows):
        if params is not None:
            table.loc[i, PARAMS_COLUMN] = params.get(key, "")
        for column in columns:
            if column == PARAMS_COLUMN:
                continue
            if column.endswith(OOD_SUFFIX):
                value = ood_cells.get(key, {}).get(column[:-len(OOD_SUFFIX)], _NAN4)
            else:
                value = cells.get(key, {}).get(column, _NAN4)
            table.loc[i, column] = fmt_cell(*value)
    if params is not None and (table[PARAMS_COLUMN] == "").all():
        table = table.drop(columns=PARAMS_COLUMN)  # no run recorded its parameters
    return table, cells


def _average_rows(cells: dict[tuple, dict], datasets: Sequence[str], groups: Sequence[tuple],
                  columns: Sequence[str], key_of) -> list[dict[str, str]]:
    """One Average row per group (e.g. backbone and variant): per column the mean over
    ``datasets`` of ``cells[key_of(dataset, group)][column]``, or "" unless every data set has
    it."""
    out = []
    for group in groups:
        row = {}
        for column in columns:
            means = [cells.get(key_of(d, group), {}).get(column, _NAN4)[0] for d in datasets]
            complete = all(m is not None and not pd.isna(m) for m in means)
            row[column] = f"{np.mean(means):.2f}" if complete and means else ""
        out.append(row)
    return out


def methods_tables(summary: pd.DataFrame, ood: pd.DataFrame, selected: pd.DataFrame,
                   sweep: str, metric: str, datasets: Sequence[str],
                   backbones: Sequence[str]) -> list[TableOut]:
    """The methods-compared layout: one table per data set and backbone, methods as rows."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    ood_part = ood[(ood["sweep"] == sweep) & (ood["metric"] == metric)] if not ood.empty else ood
    params = _params(selected, sweep)
    label, words = METRIC_LABELS.get(metric, metric), cell_words(part)
    out = []
    for dataset in datasets:
        for backbone in backbones:
            here = part[(part["dataset"] == dataset) & (part["backbone"] == backbone)]
            if here.empty:
                continue
            ood_here = ood_part[(ood_part["dataset"] == dataset)
                                & (ood_part["backbone"] == backbone)] if not ood_part.empty \
                else ood_part
            methods = first_seen(here["method"])
            methods = [m for m in methods if m == ZERO_SHOT] + [m for m in methods
                                                                if m != ZERO_SHOT]
            rows = [(m, v) for m in methods
                    for v in first_seen(_variant(r) for r in here.itertuples() if r.method == m)]
            table, _ = _grid(here, ood_here, lambda r: (r.method, _variant(r)), rows,
                             {(m, v): params.get((dataset, backbone, m, v), "")
                              for m, v in rows})
            if has_variants(here):
                table.index = pd.MultiIndex.from_tuples(rows, names=["method", SETTING_LEVEL])
            else:
                table.index = pd.Index([m for m, _ in rows], name="method")
            heading = (f"{sweep} · {dataset} · {backbone}: methods by training data, test "
                       f"{label} (%), {words}{_split_words(here)}")
            out.append(TableOut("__".join(slug(x) for x in (sweep, dataset, backbone, metric)),
                                table, heading))
    return out


def curve_table(summary: pd.DataFrame, ood: pd.DataFrame, selected: pd.DataFrame, sweep: str,
                metric: str, datasets: Sequence[str], backbones: Sequence[str]) -> TableOut:
    """The learning-curve layout: one table, (data set, backbone) as rows, training sizes as
    columns, an Average row per backbone (and variant) over two or more data sets."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    ood_part = ood[(ood["sweep"] == sweep) & (ood["metric"] == metric)] if not ood.empty else ood
    (method,) = first_seen(part["method"])
    params = _params(selected, sweep)
    rows = [(d, b, v) for d in datasets for b in backbones
            for v in first_seen(_variant(r) for r in part.itertuples()
                                if r.dataset == d and r.backbone == b)]
    table, cells = _grid(part, ood_part, lambda r: (r.dataset, r.backbone, _variant(r)), rows,
                         {(d, b, v): params.get((d, b, method, v), "") for d, b, v in rows})
    labels = list(rows)
    used = first_seen(d for d, _, _ in rows)
    if len(used) >= 2:
        groups = first_seen((b, v) for _, b, v in rows)
        sizes = [c for c in table.columns if c != PARAMS_COLUMN and not c.endswith(OOD_SUFFIX)]
        averages = _average_rows(cells, used, groups, sizes, lambda d, g: (d, *g))
        table = pd.concat([table, pd.DataFrame(averages, columns=table.columns, dtype=object)
                           .fillna("")], ignore_index=True)
        labels += [(AVERAGE, b, v) for b, v in groups]
    if has_variants(part):
        table.index = pd.MultiIndex.from_tuples(labels, names=["dataset", "backbone",
                                                               SETTING_LEVEL])
    else:
        table.index = pd.MultiIndex.from_tuples([(d, b) for d, b, _ in labels],
                                                names=["dataset", "backbone"])
    average = "; Average: mean over data sets" if len(used) >= 2 else ""
    heading = (f"{sweep} · {method}: every data set and backbone by training data, test "
               f"{METRIC_LABELS.get(metric, metric)} (%), {cell_words(part)}{average}"
               f"{_split_words(part)}")
    return TableOut("__".join(slug(x) for x in (sweep, method, metric)), table, heading)


def table1(summary: pd.DataFrame, metric: str = "accuracy",
           datasets: Optional[Sequence[str]] = None,
           backbones: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Table 1 layout of one (sweep, method, sample) slice of ``summary``: data sets as rows,
    backbones as columns, cells as :func:`~.report_tables.fmt_cell` writes them and, with two or
    more data sets, an "Average" row (mean over data sets, where every data set has the cell).

    When the slice holds variants (runs of other settings), the rows are (data set, setting)
    pairs and there is one "Average" row per setting: variants are never averaged together."""
    part = summary[summary["metric"] == metric]
    datasets = list(datasets or first_seen(part["dataset"]))
    backbones = list(backbones or first_seen(part["backbone"]))
    cells: dict[tuple, dict[str, tuple]] = {}
    for r in part.itertuples():
        cells.setdefault((r.dataset, _variant(r)), {})[r.backbone] = _cell(r)
    split = has_variants(part)
    rows = [(d, v) for d in datasets
            for v in first_seen(_variant(r) for r in part.itertuples() if r.dataset == d)]
    table = pd.DataFrame([[fmt_cell(*cells.get(key, {}).get(b, _NAN4)) for b in backbones]
                          for key in rows], columns=backbones, dtype=object)
    labels = list(rows)
    if len(datasets) >= 2:
        groups = first_seen((v,) for _, v in rows)
        averages = _average_rows(cells, datasets, groups, backbones, lambda d, g: (d, *g))
        table = pd.concat([table, pd.DataFrame(averages, columns=backbones, dtype=object)],
                          ignore_index=True)
        labels += [(AVERAGE, v) for (v,) in groups]
    if split:
        table.index = pd.MultiIndex.from_tuples(labels, names=["dataset", SETTING_LEVEL])
    else:
        table.index = pd.Index([d for d, _ in labels], name="dataset")
    return table


def table1_out(summary: pd.DataFrame, sweep: str, metric: str, datasets: Sequence[str],
               backbones: Sequence[str]) -> TableOut:
    """The Table 1 layout of a one-method, one-size sweep, with its stem and heading."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    first = part.iloc[0]
    sample = sample_label(first["shots"], first["fraction"])
    present = set(part["dataset"])
    table = table1(part, metric, datasets=[d for d in datasets if d in present],
                   backbones=[b for b in backbones if b in set(part["backbone"])])
    words = "no training images" if first["method"] == ZERO_SHOT else sample_words(sample)
    average = "; Average: mean over data sets" if len(present) >= 2 else ""
    heading = (f"{sweep} · {first['method']}, {words}: test {METRIC_LABELS.get(metric, metric)} "
               f"(%), data sets by backbone, {cell_words(part)}{average}{_split_words(part)}")
    return TableOut("__".join(slug(x) for x in (sweep, first["method"], sample, metric)),
                    table, heading)


def sweep_tables(summary: pd.DataFrame, ood: pd.DataFrame, selected: pd.DataFrame, sweep: str,
                 metric: str, datasets: Sequence[str], backbones: Sequence[str]) -> list[TableOut]:
    """Every table of ``sweep`` for ``metric``, in the sweep's layout (module docstring);
    ``datasets`` and ``backbones`` give the order of rows and columns."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    if part.empty:
        return []
    datasets = [d for d in datasets if d in set(part["dataset"])] + \
        [d for d in first_seen(part["dataset"]) if d not in datasets]
    backbones = [b for b in backbones if b in set(part["backbone"])] + \
        [b for b in first_seen(part["backbone"]) if b not in backbones]
    layout = sweep_layout(summary, sweep)
    if layout == LAYOUT_METHODS:
        return methods_tables(summary, ood, selected, sweep, metric, datasets, backbones)
    if layout == LAYOUT_CURVE:
        return [curve_table(summary, ood, selected, sweep, metric, datasets, backbones)]
    return [table1_out(summary, sweep, metric, datasets, backbones)]
