"""The report's label-budget section: score against the number of labelled images per strategy.

Budget runs (``budgets`` and ``sampling`` in a sweep, issue 34) train on N images chosen without
labels by a strategy. For each (sweep, data set, backbone, method) this section gives, per budget
and strategy, the mean test metric over seeds with its interval, and each strategy's difference
from ``random`` **paired by seed** (the same seed's split, validation images and probe; only the
chosen training images differ), with a paired hierarchical bootstrap interval over seeds and
test images (:func:`cytotune.analysis.paired_intervals`), the Wilcoxon signed-rank p over seeds
and Holm's adjustment within the table. One figure per (sweep, data set, backbone): the metric
against the budget (log2 axis), one panel per method, one line per strategy.

Runs are those :func:`~.report_tables.select_best` chose (the learning rate per seed on
validation), so a budget cell is scored exactly as every other cell of the report.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from cytotune.analysis import BootstrapSpec, Outcome, holm, paired_interval, wilcoxon_p
from cytotune.analysis.outcomes import COUNT_METRICS
from cytotune.experiments.report_tables import slug
from cytotune.experiments.report_variants import VARIANT

BASELINE = "random"
PANEL = ["sweep", "dataset", "backbone"]


def budget_runs(selected: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """The selected runs that are budget runs, with ``budget`` and ``sampling`` columns (read
    from each run's stored config); empty when the store has none."""
    if selected.empty or "config_json" not in full:
        return selected.iloc[0:0].assign(budget=pd.Series(dtype="Int64"),
                                         sampling=pd.Series(dtype=object))
    configs = full.set_index("run_id")["config_json"]
    budget, sampling = [], []
    for run_id in selected["run_id"]:
        config = json.loads(configs.get(run_id) or "{}")
        budget.append(config.get("budget"))
        sampling.append(config.get("sampling") if config.get("budget") is not None else None)
    out = selected.assign(budget=pd.array(budget, dtype="Int64"), sampling=sampling)
    return out[out["budget"].notna()].reset_index(drop=True)


def budget_table(runs: pd.DataFrame, outcomes: Mapping[str, Outcome], metric: str,
                 spec: BootstrapSpec, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (sweep, data set, backbone, method, budget, sampling): mean over seeds (%)
    and its interval, read from the report's ``summary`` (each budget and strategy is a variant
    cell there, so both tables show one interval), and (not for random) the paired difference
    from random with its interval, the seeds paired, the Wilcoxon p and Holm's p over the
    table's comparisons."""
    if metric not in COUNT_METRICS:
        raise ValueError(f"the label-budget section needs a metric of the test predictions "
                         f"({', '.join(COUNT_METRICS)}), got {metric!r}")
    column = f"test_{metric}"
    cells = (summary[summary["metric"] == metric]
             .set_index(["sweep", "dataset", "backbone", "method", VARIANT]))
    rows: list[dict[str, Any]] = []
    keys = PANEL + ["method", "budget"]
    for key, cell in runs.groupby(keys, sort=False, dropna=False):
        by_sampling = {s: part.set_index("seed") for s, part in cell.groupby("sampling", sort=False)}
        base = by_sampling.get(BASELINE)
        for sampling, part in by_sampling.items():
            label = "|".join(map(str, key)) + f"|{sampling}"
            cell_row = cells.loc[(*key[:4], part[VARIANT].iloc[0])]
            row = dict(zip(keys, key), sampling=sampling, metric=metric, seeds=len(part),
                       mean=float(cell_row["mean"]),
                       ci_low=float(cell_row.get("ci_low", math.nan)),
                       ci_high=float(cell_row.get("ci_high", math.nan)))
            if base is not None and sampling != BASELINE:
                row.update(_paired(part, base, outcomes, column, metric, spec, label))
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if "wilcoxon_p" in table:
        table["holm_p"] = holm(list(table["wilcoxon_p"].where(table["wilcoxon_p"].notna(), None)))
    return table


def _paired(part: pd.DataFrame, base: pd.DataFrame, outcomes: Mapping[str, Outcome],
            column: str, metric: str, spec: BootstrapSpec, label: str) -> dict[str, Any]:
    seeds = [s for s in part.index if s in base.index]
    if not seeds:
        return {}
    diffs = [(float(part.loc[s, column]) - float(base.loc[s, column])) * 100 for s in seeds]
    out: dict[str, Any] = {"vs_random": float(np.mean(diffs)), "paired_seeds": len(seeds),
                           "wilcoxon_p": wilcoxon_p(diffs), "vs_random_low": math.nan,
                           "vs_random_high": math.nan}
    a = [outcomes.get(part.loc[s, "run_id"]) for s in seeds]
    b = [outcomes.get(base.loc[s, "run_id"]) for s in seeds]
    if all(o is not None for o in a + b):
        interval = paired_interval(a, b, metric, spec, key=label + "|vs")
        out.update(vs_random_low=interval.low * 100, vs_random_high=interval.high * 100)
    return out


def _panel_rows(table: pd.DataFrame, panel: Sequence[Any]) -> pd.DataFrame:
    """The rows of one (sweep, data set, backbone)."""
    return table[(table[PANEL] == pd.Series(dict(zip(PANEL, panel)))).all(axis=1)]


def display_table(table: pd.DataFrame, panel: Sequence[Any]) -> pd.DataFrame:
    """The rows of one (sweep, data set, backbone) as text: budget x strategy per method."""
    part = _panel_rows(table, panel)

    def cell(r) -> str:
        text = f"{r['mean']:.1f}"
        if not math.isnan(r["ci_low"]):
            text += f" [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
        if r["sampling"] != BASELINE and not pd.isna(r.get("vs_random")):
            text += f"; {r['vs_random']:+.1f}"
            if not pd.isna(r.get("vs_random_low")):
                text += f" [{r['vs_random_low']:+.1f}, {r['vs_random_high']:+.1f}]"
            if not pd.isna(r.get("holm_p")):
                text += f" p={r['holm_p']:.2g}"
        return text
    shown = part.assign(text=[cell(r) for _, r in part.iterrows()])
    return shown.pivot_table(index=["method", "budget"], columns="sampling", values="text",
                             aggfunc="first", sort=False)


def budget_figure(table: pd.DataFrame, panel: Sequence[Any], metric: str, png: Path) -> list[Path]:
    """Metric against budget (log2) per strategy, one panel per method, intervals as bands;
    saved as PNG, SVG and the points' CSV (the report's :func:`save`)."""
    from cytotune.experiments.report_figure_parts import Drawn, new_figure, save

    part = _panel_rows(table, panel)
    methods = list(dict.fromkeys(part["method"]))
    fig, axes = new_figure(len(methods))
    drawn = Drawn()
    for ax, method in zip(axes, methods):
        rows = part[part["method"] == method]
        for sampling, line in rows.groupby("sampling", sort=False):
            line = line.sort_values("budget")
            x = line["budget"].astype(float).to_numpy()
            ax.plot(x, line["mean"], marker="o", label=sampling,
                    linestyle="--" if sampling == BASELINE else "-")
            if line["ci_low"].notna().all():
                ax.fill_between(x, line["ci_low"], line["ci_high"], alpha=0.15)
            for _, r in line.iterrows():
                drawn.points.append({"sweep": panel[0], "dataset": panel[1],
                                     "backbone": panel[2], "method": method,
                                     "variant": f"sampling={sampling}", "metric": metric,
                                     "x": float(r["budget"]), "mean": r["mean"],
                                     "low": r["ci_low"], "high": r["ci_high"],
                                     "interval": "seeds and test images"})
        ax.set_xscale("log", base=2)
        budgets = sorted(set(int(b) for b in rows["budget"]))
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("labelled training images (budget)")
        ax.set_ylabel(f"test {metric.replace('_', ' ')} (%)")
        ax.set_title(method)
        ax.legend(fontsize="small")
    fig.suptitle(f"{panel[1]} · {panel[2]}: label budget", y=1.03)
    fig.drawn = drawn
    return save(fig, png)


def budget_section(selected: pd.DataFrame, full: pd.DataFrame, summary: pd.DataFrame,
                   outcomes: Mapping[str, Outcome], metric: str, spec: Optional[BootstrapSpec],
                   folder: Path) -> tuple[pd.DataFrame, list[tuple[str, pd.DataFrame, str]],
                                          list[list[Path]]]:
    """(the whole table, [(stem, display table, heading)], figures' paths) of a store's budget
    runs; all empty without any."""
    runs = budget_runs(selected, full)
    if runs.empty:
        return pd.DataFrame(), [], []
    table = budget_table(runs, outcomes, metric, spec or BootstrapSpec(), summary)
    tables, figures = [], []
    for panel in table[PANEL].drop_duplicates().itertuples(index=False):
        stem = "__".join(slug(x) for x in ("label_budget", *panel, metric))
        heading = (f"Label budget, {panel[1]} · {panel[2]} ({panel[0]}): test "
                   f"{metric.replace('_', ' ')} (%), mean [interval] over seeds; for each "
                   f"strategy, its difference from random paired by seed [paired interval] and "
                   f"Holm-adjusted Wilcoxon p")
        tables.append((stem, display_table(table, tuple(panel)), heading))
        figures.append(budget_figure(table, tuple(panel), metric, folder / f"{stem}.png"))
    return table, tables, figures
