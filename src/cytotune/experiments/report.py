"""Tables and figures of a result store, selected the way the reference study selects.

Selection (study, section 4): for every (sweep, data set, backbone, method, shots or fraction)
and every seed, the learning rate with the best **validation** accuracy is chosen (ties: lower
validation loss where recorded, then the smaller learning rate), and the **test** metric of that
run is reported. Then mean ± standard deviation over the seeds (population std, ``ddof=0``, by
default; one seed gives ±0). Values are percentages.

Outputs, in ``out_dir``:

- ``report.html``: one self-contained page (figures embedded as base64 PNG) with everything below;
- ``tables/<sweep>__<method>__<sample>__<metric>.csv`` and ``.md``: Table 1 layout, data sets as
  rows, backbones as columns, "mean±std" cells and an "Average" row (mean over data sets);
  ``tables.md`` gathers them;
- ``summary.csv`` (long form: mean, std, seeds, chosen lrs per setting and metric),
  ``selected.csv`` (the chosen run of each seed), ``runs.csv`` (every run, ``selected`` marked),
  ``timings.csv`` (feature extraction, training and total seconds, sums and means),
  ``failures.csv`` (failed attempts);
- ``figures/shots__<sweep>__<method>__<metric>.png``: metric vs shots per class, one subplot per
  data set, one line per backbone, and each backbone's linear probe on all data (from any sweep
  in the same store) as a dashed line in its colour (the study's Fig. 1); a backbone's zero-shot
  run (method ``zero-shot``, same sweep first, else any sweep) is its 0-shot point (a star at 0);
- ``figures/fractions__<sweep>__<method>__<metric>.png``: metric vs percentage of the training
  data (the study's Fig. 2), with a state-of-the-art reference line per data set when given.

The state-of-the-art line: the study compares its Exp. 3 with HierSwin (Cai et al.) on HiCervix
level 3, but its text does not print HierSwin's accuracy (only a figure), so there is no built-in
value: pass ``sota={"hicervix": <accuracy in %>}`` (CLI: ``--sota hicervix=<acc>``) with the
number from the HierSwin paper; without it the line is left out.
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from cytotune.experiments.store import ResultStore

REPORT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "average_precision")
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
                 "macro_f1": "macro F1", "auroc": "AUROC", "ece": "ECE",
                 "average_precision": "average precision"}
ZERO_SHOT = "zero-shot"  # drawn as the 0-shot point of every shots figure of its sweep
SETTING = ["sweep", "dataset", "backbone", "method", "shots", "fraction"]
DEFAULT_SOTA_LABEL = "HierSwin (state of the art)"


@dataclass
class Report:
    """What :func:`make_report` wrote, with the frames it computed."""

    out_dir: Path
    html: Path
    summary: pd.DataFrame  # long form, one row per setting and metric
    selected: pd.DataFrame  # one row per setting and seed: the chosen run
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # file stem -> Table 1 layout
    figures: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


# ---- selection ------------------------------------------------------------------------------
def select_best(records: pd.DataFrame, select_by: str = "accuracy") -> pd.DataFrame:
    """The chosen run of every (setting, seed): best validation ``select_by`` (higher is better),
    ties broken by lower validation loss (when recorded), then by the smaller learning rate."""
    if records.empty:
        return records.copy()
    column = f"val_{select_by}"
    if column not in records:
        raise ValueError(f"records have no {column} column")
    frame = records.copy()
    frame["_score"] = frame[column].astype(float)
    frame["_loss"] = frame["val_loss"].astype(float) if "val_loss" in frame else np.nan
    ordered = frame.sort_values(["_score", "_loss", "lr"], ascending=[False, True, True],
                                na_position="last", kind="mergesort")
    best = ordered.groupby(SETTING + ["seed"], dropna=False, sort=False).head(1)
    best = best.drop(columns=["_score", "_loss"])
    return best.sort_index().reset_index(drop=True)


def summarize(selected: pd.DataFrame, metrics: Sequence[str] = ("accuracy",),
              ddof: int = 0) -> pd.DataFrame:
    """Mean and std over seeds (in percent) of the chosen runs' test metrics, per setting."""
    rows = []
    if selected.empty:
        return pd.DataFrame(columns=SETTING + ["metric", "mean", "std", "seeds", "lrs"])
    for key, group in selected.groupby(SETTING, dropna=False, sort=False):
        for metric in metrics:
            values = group[f"test_{metric}"].astype(float).dropna().to_numpy() * 100.0
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=ddof)) if len(values) > ddof else (0.0 if len(values) else math.nan)
            lrs = ",".join(f"{lr:g}" for lr in group.sort_values("seed")["lr"])
            rows.append({**dict(zip(SETTING, key)), "metric": metric, "mean": mean, "std": std,
                         "seeds": int(len(values)), "lrs": lrs})
    frame = pd.DataFrame(rows)
    frame["shots"] = frame["shots"].astype("Int64")
    frame["fraction"] = frame["fraction"].astype(float)
    return frame


def sample_label(shots: Any, fraction: Any) -> str:
    if shots is not None and not pd.isna(shots):
        return f"{int(shots)}shot"
    if fraction is not None and not pd.isna(fraction):
        return f"frac{float(fraction):g}"
    return "all"


def _first_seen(values: pd.Series) -> list:
    return list(dict.fromkeys(values.tolist()))


def _fmt(mean: float, std: float) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.2f}±{0.0 if pd.isna(std) else std:.2f}"


def table1(summary: pd.DataFrame, metric: str = "accuracy",
           datasets: Optional[Sequence[str]] = None,
           backbones: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Table 1 layout of one (sweep, method, sample) slice of ``summary``: data sets as rows,
    backbones as columns, "mean±std" strings, and an "Average" row (mean over data sets)."""
    part = summary[summary["metric"] == metric]
    datasets = list(datasets or _first_seen(part["dataset"]))
    backbones = list(backbones or _first_seen(part["backbone"]))
    cells = {(r.dataset, r.backbone): (r.mean, r.std) for r in part.itertuples()}
    table = pd.DataFrame(index=pd.Index(datasets, name="dataset"), columns=backbones, dtype=object)
    for d in datasets:
        for b in backbones:
            mean, std = cells.get((d, b), (math.nan, math.nan))
            table.loc[d, b] = _fmt(mean, std)
    averages = {}
    for b in backbones:
        means = [cells[(d, b)][0] for d in datasets if (d, b) in cells and not pd.isna(cells[(d, b)][0])]
        averages[b] = f"{np.mean(means):.2f}" if means else ""
    table.loc["Average"] = pd.Series(averages)
    return table


def _markdown(table: pd.DataFrame, title: str) -> str:
    header = ["dataset", *map(str, table.columns)]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] + ["---:"] * len(table.columns)) + " |"]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index), *(str(v) for v in row.tolist())]) + " |")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


# ---- figures ----------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int):
    plt = _pyplot()
    cols = min(4, max(1, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.0, 4.2 * cols), 3.4 * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _title(fig, text: str) -> None:
    import textwrap

    width = max(40, int(fig.get_figwidth() * 11))
    fig.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=10)


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _linear_baselines(summary: pd.DataFrame, metric: str, sweep: str) -> dict[tuple[str, str], float]:
    """(dataset, backbone) -> mean test metric of the linear probe on all training data; the
    same sweep's value first, else the first sweep in the store that has one."""
    part = summary[(summary["metric"] == metric) & (summary["method"] == "linear")
                   & summary["shots"].isna() & summary["fraction"].isna()]
    out: dict[tuple[str, str], float] = {}
    for preferred in (True, False):
        for r in part.itertuples():
            if (r.sweep == sweep) == preferred and (r.dataset, r.backbone) not in out:
                out[(r.dataset, r.backbone)] = r.mean
    return out


def zero_shot_points(summary: pd.DataFrame, metric: str,
                      sweep: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(dataset, backbone) -> (mean, std) of the zero-shot runs: the 0-shot point of Fig. 1; the
    same sweep's value first, else the first sweep in the store that has one."""
    part = summary[(summary["metric"] == metric) & (summary["method"] == ZERO_SHOT)]
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for preferred in (True, False):
        for r in part.itertuples():
            if (r.sweep == sweep) == preferred and (r.dataset, r.backbone) not in out:
                out[(r.dataset, r.backbone)] = (r.mean, r.std)
    return out


def _curve_setup(summary: pd.DataFrame, sweep: str, method: str, metric: str, column: str):
    """The rows of one curve figure (x = ``column``), pyplot, and the data sets, backbones and
    a colour per backbone in first-seen order; None when there is nothing to draw."""
    part = summary[(summary["sweep"] == sweep) & (summary["method"] == method)
                   & (summary["metric"] == metric) & summary[column].notna()]
    if part.empty:
        return None
    plt = _pyplot()
    backbones = _first_seen(part["backbone"])
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backbones)}
    return part, plt, _first_seen(part["dataset"]), backbones, colours


def shots_points(summary: pd.DataFrame, sweep: str, method: str, metric: str) -> pd.DataFrame:
    """The points of one shots figure: dataset, backbone, shots, mean, std. A backbone's zero-shot
    run (:func:`zero_shot_points`) is its point at 0 shots, for the (data set, backbone) pairs
    that have a curve."""
    columns = ["dataset", "backbone", "shots", "mean", "std"]
    part = summary[(summary["sweep"] == sweep) & (summary["method"] == method)
                   & (summary["metric"] == metric) & summary["shots"].notna()]
    if part.empty:
        return pd.DataFrame(columns=columns)
    points = part[columns].copy()
    points["shots"] = points["shots"].astype(int)
    pairs = set(zip(points["dataset"], points["backbone"]))
    zero = [{"dataset": d, "backbone": b, "shots": 0, "mean": mean, "std": std}
            for (d, b), (mean, std) in zero_shot_points(summary, metric, sweep).items()
            if (d, b) in pairs and not pd.isna(mean)]
    if zero:
        points = pd.concat([points, pd.DataFrame(zero)], ignore_index=True)
    return points.sort_values(["dataset", "backbone", "shots"], kind="stable")


def shots_figure(summary: pd.DataFrame, sweep: str, method: str, metric: str,
                 path: Path) -> Optional[Path]:
    """Metric vs shots per class (the study's Fig. 1); zero-shot runs are the 0-shot points."""
    setup = _curve_setup(summary, sweep, method, metric, "shots")
    if setup is None:
        return None
    part, plt, datasets, backbones, colours = setup
    baselines = _linear_baselines(summary, metric, sweep)
    points = shots_points(summary, sweep, method, metric)
    fig, axes = _grid(len(datasets))
    shots_all = sorted(int(s) for s in part["shots"].unique())
    drew_baseline = drew_zero = False
    for ax, dataset in zip(axes, datasets):
        zero_here = False
        for backbone in backbones:
            mine = points[(points["dataset"] == dataset) & (points["backbone"] == backbone)]
            rows, zero = mine[mine["shots"] > 0], mine[mine["shots"] == 0]
            if not rows.empty:
                ax.errorbar(rows["shots"], rows["mean"], yerr=rows["std"],
                            marker="o", ms=4, capsize=3, color=colours[backbone], label=backbone)
            base = baselines.get((dataset, backbone))
            if base is not None and not pd.isna(base):
                ax.axhline(base, ls="--", lw=1.2, color=colours[backbone])
                drew_baseline = True
            if not zero.empty:
                ax.errorbar(zero["shots"], zero["mean"], yerr=zero["std"].fillna(0.0),
                            marker="*", ms=9, capsize=3, ls="none", color=colours[backbone])
                zero_here = drew_zero = True
        ticks = ([0] if zero_here else []) + shots_all
        if zero_here:  # 0 has no place on a log axis: linear between 0 and 1, log above
            ax.set_xscale("symlog", base=2, linthresh=1)
        else:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(s) for s in ticks])
        ax.set_title(dataset)
        ax.set_xlabel("shots per class")
        ax.set_ylabel(f"test {METRIC_LABELS.get(metric, metric)} (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if drew_baseline:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], ls="--", color="0.3"))
        labels.append("linear probe, all data")
    if drew_zero:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="*", ms=9, ls="none", color="0.3"))
        labels.append("zero-shot (0 shots)")
    _title(fig, f"{sweep}: {method}, test {METRIC_LABELS.get(metric, metric)} vs shots per "
                f"class (mean ± std over seeds)")
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def fractions_figure(summary: pd.DataFrame, sweep: str, method: str, metric: str, path: Path,
                     sota: Optional[Mapping[str, float]] = None,
                     sota_label: str = DEFAULT_SOTA_LABEL) -> Optional[Path]:
    """Metric vs percentage of the training split (the study's Fig. 2)."""
    setup = _curve_setup(summary, sweep, method, metric, "fraction")
    if setup is None:
        return None
    part, plt, datasets, backbones, colours = setup
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets):
        for backbone in backbones:
            rows = part[(part["dataset"] == dataset) & (part["backbone"] == backbone)]
            rows = rows.sort_values("fraction")
            if rows.empty:
                continue
            x, y, s = rows["fraction"].to_numpy(), rows["mean"].to_numpy(), rows["std"].fillna(0).to_numpy()
            ax.plot(x, y, marker="o", ms=4, color=colours[backbone], label=f"{backbone} ({method})")
            ax.fill_between(x, y - s, y + s, color=colours[backbone], alpha=0.15)
        ticks = sorted(part[part["dataset"] == dataset]["fraction"].unique())
        if len(ticks) <= 20:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=7 if len(ticks) > 10 else None)
        if sota and metric == "accuracy" and dataset in sota:
            ax.axhline(float(sota[dataset]), color="black", lw=1.5, label=sota_label)
        ax.set_title(dataset)
        ax.set_xlabel("training data (%)")
        ax.set_ylabel(f"test {METRIC_LABELS.get(metric, metric)} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    _title(fig, f"{sweep}: test {METRIC_LABELS.get(metric, metric)} vs training data used "
                f"(mean ± std over seeds)")
    return _save(fig, path)


# ---- methods compared: linear probe vs LoRA vs full fine-tuning, in and out of domain ---------
def out_of_domain_summary(selected: pd.DataFrame, metrics: Sequence[str], ddof: int = 0) -> pd.DataFrame:
    """:func:`summarize` of the chosen runs' out-of-domain test metrics (``ood_<metric>``): the
    same runs (lr chosen on in-domain validation), scored on the held-out domains."""
    present = [m for m in metrics if f"ood_{m}" in selected and selected[f"ood_{m}"].notna().any()]
    if selected.empty or not present:
        return summarize(selected.iloc[0:0], metrics, ddof)
    swapped = selected.copy()
    for m in present:
        swapped[f"test_{m}"] = swapped[f"ood_{m}"]
    return summarize(swapped[swapped[f"ood_{present[0]}"].notna()], present, ddof)


def comparison_table(summary: pd.DataFrame, ood: pd.DataFrame, selected: pd.DataFrame,
                     sweep: str, metric: str) -> Optional[pd.DataFrame]:
    """One sweep's methods side by side: a row per (data set, backbone, method) with the
    trainable parameters, then a "mean±std" cell per sample (1 %, 10 %, 100 % ...) of the test
    metric and, for runs with test domains, the out-of-domain value next to it. None unless
    the sweep runs more than one method."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    if part["method"].nunique() < 2:
        return None
    ood_part = ood[(ood["sweep"] == sweep) & (ood["metric"] == metric)] if not ood.empty else ood
    ood_cells = {(r.dataset, r.backbone, r.method, sample_label(r.shots, r.fraction)): (r.mean, r.std)
                 for r in ood_part.itertuples()}
    samples = _first_seen(pd.Series([sample_label(r.shots, r.fraction) for r in part.itertuples()]))
    chosen = selected[selected["sweep"] == sweep]
    rows = {}
    for r in part.itertuples():
        key = (r.dataset, r.backbone, r.method)
        row = rows.setdefault(key, {})
        params = chosen[(chosen["dataset"] == r.dataset) & (chosen["backbone"] == r.backbone)
                        & (chosen["method"] == r.method)]["trainable_params"].dropna()
        row["trainable parameters"] = f"{int(params.median()):,}" if len(params) else ""
        sample = sample_label(r.shots, r.fraction)
        row[_sample_words(sample)] = _fmt(r.mean, r.std)
        if ood_cells:
            row[f"{_sample_words(sample)}, out of domain"] = _fmt(*ood_cells.get(
                (*key, sample), (math.nan, math.nan)))
    columns = ["trainable parameters"]
    for sample in samples:
        columns.append(_sample_words(sample))
        if ood_cells:
            columns.append(f"{_sample_words(sample)}, out of domain")
    index = pd.Index([" / ".join(k) for k in rows], name="dataset / backbone / method")
    return pd.DataFrame([[row.get(c, "") for c in columns] for row in rows.values()], index=index,
                        columns=columns)


def comparison_figure(summary: pd.DataFrame, ood: pd.DataFrame, sweep: str, metric: str,
                      path: Path) -> Optional[Path]:
    """Test metric vs percentage of the training data, one line per (method, backbone), one
    subplot per data set; out-of-domain results dashed in the same colour."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)
                   & summary["fraction"].notna()]
    if part.empty or part["method"].nunique() < 2:
        return None
    plt = _pyplot()
    ood_part = ood[(ood["sweep"] == sweep) & (ood["metric"] == metric)] if not ood.empty else ood
    lines = _first_seen(pd.Series(list(zip(part["method"], part["backbone"]))))
    colours = {key: plt.get_cmap("tab10")(i % 10) for i, key in enumerate(lines)}
    datasets = _first_seen(part["dataset"])
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets):
        for (method, backbone), colour in colours.items():
            for frame, style, suffix in ((part, "-", ""), (ood_part, "--", ", out of domain")):
                if frame.empty:
                    continue
                rows = frame[(frame["dataset"] == dataset) & (frame["method"] == method)
                             & (frame["backbone"] == backbone) & frame["fraction"].notna()]
                rows = rows.sort_values("fraction")
                if rows.empty:
                    continue
                ax.errorbar(rows["fraction"], rows["mean"], yerr=rows["std"].fillna(0), ls=style,
                            marker="o", ms=4, capsize=3, color=colour,
                            label=f"{method} {backbone}{suffix}")
        ax.set_xscale("log")
        ticks = sorted(part[part["dataset"] == dataset]["fraction"].unique())
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_title(dataset)
        ax.set_xlabel("training data (%)")
        ax.set_ylabel(f"test {METRIC_LABELS.get(metric, metric)} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    _title(fig, f"{sweep}: methods compared, test {METRIC_LABELS.get(metric, metric)} vs "
                f"training data (mean ± std over seeds; dashed: out of domain)")
    return _save(fig, path)


# ---- timings ----------------------------------------------------------------------------------
def timing_summary(records: pd.DataFrame) -> pd.DataFrame:
    """Seconds spent per (sweep, method, backbone, data set): feature extraction, training, total
    (sums and means over runs)."""
    if records.empty:
        return pd.DataFrame()
    columns = [c for c in ("feature_extraction_s", "training_s", "total_s") if c in records]
    grouped = records.groupby(["sweep", "method", "backbone", "dataset"], sort=False)
    out = grouped.size().rename("runs").to_frame()
    for c in columns:
        out[f"{c[:-2]}_sum_s"] = grouped[c].sum(min_count=1)
        out[f"{c[:-2]}_mean_s"] = grouped[c].mean()
    return out.reset_index()


# ---- the report -------------------------------------------------------------------------------
def make_report(store_path: str | Path | ResultStore, out_dir: str | Path,
                metrics: Sequence[str] = ("accuracy",), *, sweeps: Optional[Sequence[str]] = None,
                sota: Optional[Mapping[str, float]] = None,
                sota_label: str = DEFAULT_SOTA_LABEL, select_by: str = "accuracy",
                ddof: int = 0, title: str = "cytotune experiments") -> Report:
    """Write tables, figures, CSV files and one self-contained HTML page for a result store.

    ``metrics``: test metrics to report (accuracy, balanced_accuracy, macro_f1, auroc, ece);
    the learning rate is always chosen on validation ``select_by`` (accuracy, as in the study).
    ``sweeps``: restrict to these sweeps. ``sota``: data set -> state-of-the-art accuracy in %,
    drawn as a horizontal line on the fraction figures (no default; see the module docstring).
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in REPORT_METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; known: "
                         f"{', '.join(REPORT_METRICS)}")
    store = store_path if isinstance(store_path, ResultStore) else _open_existing(store_path)
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    records = store.records()
    failures = store.failures()
    if sweeps:
        records = records[records["sweep"].isin(list(sweeps))].reset_index(drop=True)
        failures = failures[failures["sweep"].isin(list(sweeps))].reset_index(drop=True)

    selected = select_best(records, select_by)
    summary = summarize(selected, metrics, ddof=ddof)
    files: list[Path] = []

    runs = records.copy()
    runs["selected"] = runs["run_id"].isin(set(selected["run_id"])) if not runs.empty else []
    for name, frame in (("runs.csv", runs), ("selected.csv", selected), ("summary.csv", summary),
                        ("timings.csv", timing_summary(records)), ("failures.csv", failures)):
        frame.to_csv(out / name, index=False)
        files.append(out / name)

    tables: dict[str, pd.DataFrame] = {}
    titles: dict[str, str] = {}
    markdown = [f"# {title}\n"]
    datasets_order = _first_seen(records["dataset"]) if not records.empty else []
    backbones_order = _first_seen(records["backbone"]) if not records.empty else []
    if not summary.empty:
        slices = summary[summary["metric"] == metrics[0]][["sweep", "method", "shots", "fraction"]]
        slices = slices.drop_duplicates()
        for s in slices.itertuples(index=False):
            sample = sample_label(s.shots, s.fraction)
            mask = ((summary["sweep"] == s.sweep) & (summary["method"] == s.method)
                    & _same(summary["shots"], s.shots) & _same(summary["fraction"], s.fraction))
            part = summary[mask]
            for metric in metrics:
                present = set(part["dataset"])
                table = table1(part, metric,
                               datasets=[d for d in datasets_order if d in present],
                               backbones=[b for b in backbones_order if b in set(part["backbone"])])
                stem = "__".join(_slug(x) for x in (s.sweep, s.method, sample, metric))
                words = ("no training images" if s.method == ZERO_SHOT
                         else _sample_words(sample))
                heading = (f"{s.sweep}: {s.method}, {words}: test "
                           f"{METRIC_LABELS.get(metric, metric)} (%), mean±std over seeds")
                tables[stem], titles[stem] = table, heading
                table.to_csv(out / "tables" / f"{stem}.csv")
                text = _markdown(table, heading)
                (out / "tables" / f"{stem}.md").write_text(text, encoding="utf-8")
                markdown.append(text)
                files += [out / "tables" / f"{stem}.csv", out / "tables" / f"{stem}.md"]
    ood = out_of_domain_summary(selected, metrics, ddof=ddof)
    if not ood.empty:
        ood.to_csv(out / "summary_out_of_domain.csv", index=False)
        files.append(out / "summary_out_of_domain.csv")
    compared = _first_seen(summary["sweep"]) if not summary.empty else []
    for sweep in compared:
        for metric in metrics:
            table = comparison_table(summary, ood, selected, sweep, metric)
            if table is None:
                continue
            stem = "__".join(_slug(x) for x in ("comparison", sweep, metric))
            heading = (f"{sweep}: methods compared, test {METRIC_LABELS.get(metric, metric)} (%), "
                       f"mean±std over seeds")
            tables[stem], titles[stem] = table, heading
            table.to_csv(out / "tables" / f"{stem}.csv")
            text = _markdown(table, heading)
            (out / "tables" / f"{stem}.md").write_text(text, encoding="utf-8")
            markdown.append(text)
            files += [out / "tables" / f"{stem}.csv", out / "tables" / f"{stem}.md"]
    (out / "tables.md").write_text("\n".join(markdown), encoding="utf-8")
    files.append(out / "tables.md")

    figures: list[Path] = []
    for sweep in compared:
        for metric in metrics:
            made = comparison_figure(summary, ood, sweep, metric, out / "figures" /
                                     f"comparison__{_slug(sweep)}__{_slug(metric)}.png")
            if made:
                figures.append(made)
    if not summary.empty:
        pairs = summary[["sweep", "method"]].drop_duplicates().itertuples(index=False)
        for sweep, method in pairs:
            for metric in metrics:
                stem = "__".join(_slug(x) for x in (sweep, method, metric))
                made = shots_figure(summary, sweep, method, metric,
                                    out / "figures" / f"shots__{stem}.png")
                if made:
                    figures.append(made)
                made = fractions_figure(summary, sweep, method, metric,
                                        out / "figures" / f"fractions__{stem}.png", sota,
                                        sota_label)
                if made:
                    figures.append(made)

    page = _html_page(title, store, records, failures, summary, selected, tables, titles, figures,
                      timing_summary(records), metrics, sota)
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return Report(out_dir=out, html=html_path, summary=summary, selected=selected, tables=tables,
                  figures=figures, files=files + figures + [html_path])


def _open_existing(path: str | Path) -> ResultStore:
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"no result store at {path}")
    return ResultStore(path)


def _same(column: pd.Series, value: Any) -> pd.Series:
    if value is None or pd.isna(value):
        return column.isna()
    return column == value


def _sample_words(sample: str) -> str:
    if sample == "all":
        return "all training data"
    if sample.endswith("shot"):
        return f"{sample[:-4]} shots per class"
    return f"{sample[4:]}% of the training data"


def _png_data(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#555;font-size:.9em}
"""


def _frame_html(frame: pd.DataFrame, index: bool = False, float_format: str = "{:.2f}") -> str:
    if frame is None or frame.empty:
        return "<p class='note'>none</p>"
    return frame.to_html(index=index, border=0, na_rep="",
                         float_format=lambda v: float_format.format(v), escape=True)


def _html_page(title, store, records, failures, summary, selected, tables, titles, figures,
               timings, metrics, sota) -> str:
    e = html.escape
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             f"<p class='note'>Store <code>{e(str(store.path))}</code>, generated {generated}. "
             f"{len(records)} finished runs in {records['sweep'].nunique() if not records.empty else 0} "
             f"sweep(s); {int((~failures['resolved']).sum()) if not failures.empty else 0} runs "
             f"failed and not finished since.</p>",
             "<p class='note'>Selection as in the study: for each setting and seed, the learning "
             "rate with the best <b>validation</b> accuracy (ties: lower validation loss, then "
             "smaller learning rate); the <b>test</b> metric of that run is reported as mean±std "
             "over seeds, in percent.</p>"]
    if records.empty:
        parts.append("<p>The store holds no finished runs yet.</p>")
    parts.append("<h2>Tables</h2>")
    for stem, table in tables.items():
        parts.append(f"<h3>{e(titles[stem])}</h3>")
        parts.append(table.reset_index().to_html(index=False, border=0, escape=True, na_rep=""))
    parts.append("<h2>Figures</h2>")
    if not figures:
        parts.append("<p class='note'>No few-shot or data-fraction settings in the store.</p>")
    if sota is None and any(p.name.startswith("fractions__") for p in figures):
        parts.append("<p class='note'>No state-of-the-art reference given (the study's text does "
                     "not print HierSwin's accuracy); pass <code>sota</code> to draw it.</p>")
    for path in figures:
        parts.append(f"<h3>{e(path.stem)}</h3><img alt='{e(path.stem)}' "
                     f"src='data:image/png;base64,{_png_data(path)}'>")
    parts.append("<h2>Summary (long form)</h2>")
    parts.append(_frame_html(summary))
    parts.append("<h2>Time spent</h2>")
    if not records.empty:
        total_fe = records.get("feature_extraction_s", pd.Series(dtype=float)).sum()
        total_tr = records.get("training_s", pd.Series(dtype=float)).sum()
        total = records.get("total_s", pd.Series(dtype=float)).sum()
        parts.append(f"<p>Over all {len(records)} runs: feature extraction {total_fe:.1f} s, "
                     f"training {total_tr:.1f} s, whole runs {total:.1f} s "
                     f"(feature extraction is 0 when the feature cache served it).</p>")
    parts.append(_frame_html(timings))
    parts.append("<h2>Chosen runs (one per setting and seed)</h2>")
    keep = [c for c in ["sweep", "dataset", "backbone", "method", "shots", "fraction", "seed", "lr",
                        "val_accuracy", "val_loss", *[f"test_{m}" for m in metrics], "run_id"]
            if c in selected]
    parts.append(_frame_html(selected[keep] if not selected.empty else selected,
                             float_format="{:.4g}"))
    parts.append("<h2>Failed runs</h2>")
    if not failures.empty:
        open_failures = failures[~failures["resolved"]]
        parts.append(_frame_html(open_failures[["run_id", "sweep", "dataset", "backbone", "method",
                                                "shots", "fraction", "seed", "lr", "error",
                                                "failed_at"]]))
    else:
        parts.append("<p class='note'>none</p>")
    parts.append("<h2>All runs</h2>")
    cols = [c for c in ["sweep", "dataset", "backbone", "method", "shots", "fraction", "seed", "lr",
                        "val_accuracy", "test_accuracy", "trainable_params", "total_s", "run_id"]
            if c in records]
    parts.append(_frame_html(records[cols] if not records.empty else records,
                             float_format="{:.4g}"))
    parts.append("</body></html>")
    return "\n".join(parts)
