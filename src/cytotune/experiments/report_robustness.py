"""The report's robustness section: how much each setting loses under perturbation.

Rows come from a sweep's robustness phase (:mod:`.robustness_phase`): each selected run (the
learning rate chosen per seed on validation, as everywhere in the report) evaluated on its test
split under each perturbation at severities 1-5, with the same perturbed pixels for every run.
Per report cell (setting and variant) and perturbation this section gives:

- **clean**: the test metric of the unperturbed images (mean over seeds, %);
- **drop** per kind: clean minus perturbed, in points, averaged over severities and seeds;
- **mean drop**: averaged over every kind and severity (as ImageNet-C's mean corruption error
  averages over corruptions and severities);
- **worst-case drop**: the largest per-kind drop, and which kind gives it, with its interval
  over seeds (a one-level bootstrap of the per-seed values, :func:`cytotune.analysis.seed_interval`;
  a single seed shows the paired image-bootstrap interval its run recorded).

One figure per (sweep, data set): the drop against severity, one panel per perturbation, one
line per setting (method, backbone, training size, variant).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from cytotune.analysis import BootstrapSpec, seed_interval
from cytotune.experiments.report_tables import sample_label, slug
from cytotune.experiments.report_variants import CELL, VARIANT

SETTING_COLUMNS = ["sweep", "dataset", "backbone", "method", "shots", "fraction", VARIANT]
DROP_METRICS = ("balanced_accuracy", "accuracy")


def joined_rows(selected: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The stored perturbation rows of the selected runs, joined with their cell and seed."""
    if rows.empty or selected.empty:
        return pd.DataFrame()
    keys = selected[[c for c in CELL if c in selected] + ["seed", "run_id"]]
    return rows.merge(keys, on="run_id", how="inner")


def _label(r: Any) -> str:
    text = f"{r['method']} · {r['backbone']} · {sample_label(r['shots'], r['fraction'])}"
    return text + (f" [{r[VARIANT]}]" if r.get(VARIANT) else "")


def robustness_table(joined: pd.DataFrame, metric: str, spec: BootstrapSpec) -> pd.DataFrame:
    """One row per cell: clean score, per-kind drop, mean drop and the worst-case drop (points)."""
    drop = f"{metric}_drop"
    cells = [c for c in SETTING_COLUMNS if c in joined]
    out = []
    joined = joined.sort_values([c for c in ("dataset", "backbone", "method", "shots", "fraction",
                                              VARIANT) if c in joined], kind="mergesort")
    for key, part in joined.groupby(cells, sort=False, dropna=False):
        row = dict(zip(cells, key))
        clean = part[part["kind"] == "clean"]
        perturbed = part[part["kind"] != "clean"]
        row["setting"] = _label(row)
        row["seeds"] = int(part["seed"].nunique())
        row["clean"] = float(clean[metric].mean()) * 100 if len(clean) else math.nan
        per_kind = {}
        for kind, rows in perturbed.groupby("kind", sort=False):
            per_seed = rows.groupby("seed")[drop].mean() * 100  # over severities
            per_kind[kind] = per_seed
            row[f"drop {kind}"] = float(per_seed.mean())
        row["mean drop"] = (float(perturbed[drop].mean()) * 100 if len(perturbed) else math.nan)
        if per_kind:
            worst = max(per_kind, key=lambda k: per_kind[k].mean())
            interval = seed_interval(list(per_kind[worst]), spec, key="|".join(map(str, key)))
            low, high = interval.low, interval.high
            if math.isnan(low):  # one seed: the run's own paired image interval, over severities
                one = perturbed[perturbed["kind"] == worst]
                low, high = (float(one[f"{drop}_low"].mean()) * 100,
                             float(one[f"{drop}_high"].mean()) * 100)
            row.update({"worst kind": worst, "worst-case drop": float(per_kind[worst].mean()),
                        "worst low": low, "worst high": high})
        out.append(row)
    return pd.DataFrame(out)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells: clean, worst-case drop [interval] (kind), mean drop, per kind."""
    kinds = [c for c in table.columns if c.startswith("drop ")]
    shown = pd.DataFrame(index=pd.Index(table["setting"], name="setting"))
    shown["clean"] = [f"{v:.1f}" for v in table["clean"]]
    worst = []
    for _, r in table.iterrows():
        if pd.isna(r.get("worst-case drop")):
            worst.append("")
            continue
        text = f"{r['worst-case drop']:.1f}"
        if not math.isnan(r["worst low"]):
            text += f" [{r['worst low']:.1f}, {r['worst high']:.1f}]"
        worst.append(text + f" ({r['worst kind']})")
    shown["worst-case drop"] = worst
    shown["mean drop"] = [f"{v:.1f}" for v in table["mean drop"]]
    for column in kinds:
        shown[column] = [f"{v:.1f}" if not pd.isna(v) else "" for v in table[column]]
    return shown


def robustness_figure(joined: pd.DataFrame, sweep: str, dataset: str, metric: str,
                      png: Path) -> list[Path]:
    """Drop (points) against severity, one panel per perturbation, one line per setting."""
    from cytotune.experiments.report_figure_parts import Drawn, new_figure, save

    part = joined[(joined["sweep"] == sweep) & (joined["dataset"] == dataset)]
    part = part.sort_values([c for c in ("backbone", "method", "shots", "fraction", VARIANT)
                             if c in part], kind="mergesort")
    kinds = [k for k in dict.fromkeys(part["kind"]) if k != "clean"]
    fig, axes = new_figure(len(kinds))
    drawn = Drawn()
    drop = f"{metric}_drop"
    cells = [c for c in SETTING_COLUMNS if c in part]
    label = _short_labels(part, cells)
    # colour per setting without its variant, line style per variant: up to 4 x 4 tell apart
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf"]
    styles = ["-", "--", ":", "-."]
    plain = [c for c in cells if c != VARIANT]
    colours = {k: palette[i % len(palette)] for i, k in enumerate(
        dict.fromkeys(tuple(map(str, r)) for r in part[plain].itertuples(index=False)))}
    variants = {v: styles[i % len(styles)] for i, v in enumerate(
        dict.fromkeys(part[VARIANT].astype(str)))} if VARIANT in part else {}
    handles: dict[str, Any] = {}
    for ax, kind in zip(axes, kinds):
        rows = part[(part["kind"] == kind) | (part["kind"] == "clean")]
        for key, line in rows.groupby(cells, sort=False, dropna=False):
            setting = label(dict(zip(cells, key)))
            means = line.groupby("severity")[drop].mean().sort_index() * 100
            row = dict(zip(cells, key))
            (handle,) = ax.plot(means.index, means.values, marker="o", markersize=3,
                                label=setting,
                                color=colours[tuple(str(row[c]) for c in plain)],
                                linestyle=variants.get(str(row.get(VARIANT, "")), "-"))
            handles.setdefault(setting, handle)
            for severity, value in means.items():
                drawn.points.append({**dict(zip(cells, key)), "metric": metric,
                                     "x": float(severity), "mean": float(value), "low": math.nan,
                                     "high": math.nan, "interval": f"{kind} drop (points)"})
        ax.axhline(0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(kind)
        ax.set_xlabel("severity")
        ax.set_ylabel(f"{metric.replace('_', ' ')} drop (points)")
    fig.subplots_adjust(hspace=0.45)
    fig.legend(list(handles.values()), list(handles), loc="upper center", fontsize="small",
               ncol=2 if len(handles) > 4 else 1, bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.suptitle(f"{dataset} ({sweep}): drop under perturbation", y=1.03)
    fig.drawn = drawn
    return save(fig, png)


def _short_labels(part: pd.DataFrame, cells: list[str]):
    """A line's label naming only what varies between the figure's settings (method, backbone,
    training size, variant without its ``data.`` / ``optim.`` prefixes)."""
    varies = {c: part[c].astype(str).nunique() > 1 for c in cells}

    def label(row: dict) -> str:
        words = [str(row["method"])] if varies.get("method", True) else []
        if varies.get("backbone"):
            words.append(str(row["backbone"]))
        if varies.get("shots") or varies.get("fraction"):
            words.append(sample_label(row.get("shots"), row.get("fraction")))
        variant = str(row.get(VARIANT) or "")
        for prefix in ("data.", "optim.", "model."):
            variant = variant.replace(prefix, "")
        text = " ".join(words) or str(row["method"])
        return text + (f" [{variant}]" if variant else "")
    return label


def robustness_section(selected: pd.DataFrame, rows: pd.DataFrame, metric: str,
                       spec: BootstrapSpec, folder: Path
                       ) -> tuple[list[tuple[str, pd.DataFrame, str]], list[list[Path]]]:
    """[(stem, display table, heading)] per sweep and the figures' paths; empty without rows."""
    metric = metric if metric in DROP_METRICS else "balanced_accuracy"
    joined = joined_rows(selected, rows)
    if joined.empty:
        return [], []
    tables, figures = [], []
    for sweep, part in joined.groupby("sweep", sort=False):
        table = robustness_table(part, metric, spec)
        for dataset in dict.fromkeys(part["dataset"]):
            stem = "__".join(slug(x) for x in ("robustness", sweep, dataset, metric))
            heading = (f"Robustness, {dataset} ({sweep}): test {metric.replace('_', ' ')} (%) "
                       f"clean, and its drop in points under perturbation (worst case over "
                       f"kinds, averaged over severities 1-5 and seeds [interval over seeds])")
            tables.append((stem, display_table(table[table["dataset"] == dataset]), heading))
            figures.append(robustness_figure(part, sweep, dataset, metric,
                                             folder / f"{stem}.png"))
    return tables, figures


__all__: Sequence[str] = ("robustness_section", "robustness_table", "display_table")
