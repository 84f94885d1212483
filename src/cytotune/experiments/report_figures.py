"""Figures of a report (see :mod:`cytotune.experiments.report`): the study's Fig. 1 (metric vs
shots), Fig. 2 (metric vs training data used) and the methods-compared figures (vs shots or vs
training data). Every shots figure of a data set shares one y range (:func:`shots_ylims`).

One line per backbone **and variant** (:mod:`.report_variants`): runs of other settings are
drawn as lines of their own, labelled with the settings that differ, never averaged into one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import pandas as pd

from cytotune.experiments.report_tables import (METRIC_LABELS, ZERO_SHOT, chance_level,
                                                first_seen)
from cytotune.experiments.report_variants import VARIANT

DEFAULT_SOTA_LABEL = "HierSwin (state of the art)"
Line = tuple[str, str]  # (backbone, variant)
Where = tuple[str, str, str]  # (dataset, backbone, variant)


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


def _variants(frame: pd.DataFrame) -> pd.Series:
    if VARIANT in frame:
        return frame[VARIANT].fillna("").astype(str)
    return pd.Series([""] * len(frame), index=frame.index, dtype=object)


def line_label(name: str, variant: str) -> str:
    """A curve's legend entry: the backbone (or method and backbone), then its variant."""
    return f"{name} [{variant}]" if variant else name


def _references(part: pd.DataFrame, sweep: str, wanted: Iterable[Where],
                value: Callable[[Any], Any]) -> dict[Where, Any]:
    """The reference point of each wanted (data set, backbone, variant), from the rows of
    ``part``: the same sweep's row of the same variant first; else, sweep by sweep (the same one
    first), the only row of that (data set, backbone). A sweep with several variants and none
    matching gives none: which one to draw would be a guess."""
    variants = _variants(part)
    sweeps = [sweep] + [s for s in first_seen(part["sweep"]) if s != sweep]
    out: dict[Where, Any] = {}
    for dataset, backbone, variant in wanted:
        mine = part[(part["dataset"] == dataset) & (part["backbone"] == backbone)]
        for s in sweeps:
            rows = mine[mine["sweep"] == s]
            exact = rows[variants[rows.index] == variant] if s == sweep else rows.iloc[0:0]
            pick = exact if len(exact) == 1 else (rows if len(rows) == 1 else None)
            if pick is not None:
                out[(dataset, backbone, variant)] = value(next(pick.itertuples()))
                break
    return out


def _wanted(summary: pd.DataFrame) -> list[Where]:
    return list(dict.fromkeys(zip(summary["dataset"], summary["backbone"], _variants(summary))))


def _linear_baselines(summary: pd.DataFrame, metric: str, sweep: str,
                      wanted: Optional[Iterable[Where]] = None) -> dict[Where, float]:
    """(dataset, backbone, variant) -> mean test metric of the linear probe on all training data
    (see :func:`_references`); ``wanted`` defaults to the baselines' own lines of ``sweep``."""
    part = summary[(summary["metric"] == metric) & (summary["method"] == "linear")
                   & summary["shots"].isna() & summary["fraction"].isna()]
    if wanted is None:
        wanted = _wanted(part[part["sweep"] == sweep]) or _wanted(part)
    return _references(part, sweep, wanted, lambda r: r.mean)


def zero_shot_points(summary: pd.DataFrame, metric: str, sweep: str,
                     wanted: Optional[Iterable[Where]] = None) -> dict[Where, tuple[float, float]]:
    """(dataset, backbone, variant) -> (mean, std) of the zero-shot runs: the 0-shot point of
    Fig. 1 (see :func:`_references`)."""
    part = summary[(summary["metric"] == metric) & (summary["method"] == ZERO_SHOT)]
    if wanted is None:
        wanted = _wanted(part[part["sweep"] == sweep]) or _wanted(part)
    return _references(part, sweep, wanted, lambda r: (r.mean, r.std))


def _curve_setup(summary: pd.DataFrame, sweep: str, method: str, metric: str, column: str):
    """The rows of one curve figure (x = ``column``), pyplot, the data sets, and a colour per
    line (backbone, variant) in first-seen order; None when there is nothing to draw."""
    part = summary[(summary["sweep"] == sweep) & (summary["method"] == method)
                   & (summary["metric"] == metric) & summary[column].notna()]
    if part.empty:
        return None
    plt = _pyplot()
    lines: list[Line] = first_seen(list(zip(part["backbone"], _variants(part))))
    colours = {line: plt.get_cmap("tab10")(i % 10) for i, line in enumerate(lines)}
    return part, plt, first_seen(part["dataset"]), lines, colours


def shots_points(summary: pd.DataFrame, sweep: str, method: str, metric: str) -> pd.DataFrame:
    """The points of one shots figure: dataset, backbone, variant, shots, mean, std. A backbone's
    zero-shot run (:func:`zero_shot_points`) is its point at 0 shots, for the (data set,
    backbone, variant) lines that have a curve."""
    columns = ["dataset", "backbone", VARIANT, "shots", "mean", "std"]
    part = summary[(summary["sweep"] == sweep) & (summary["method"] == method)
                   & (summary["metric"] == metric) & summary["shots"].notna()]
    if part.empty:
        return pd.DataFrame(columns=columns)
    points = part.assign(**{VARIANT: _variants(part)})[columns].copy()
    points["shots"] = points["shots"].astype(int)
    lines = list(dict.fromkeys(zip(points["dataset"], points["backbone"], points[VARIANT])))
    zero = [{"dataset": d, "backbone": b, VARIANT: v, "shots": 0, "mean": mean, "std": std}
            for (d, b, v), (mean, std) in zero_shot_points(summary, metric, sweep, lines).items()
            if not pd.isna(mean)]
    if zero:
        points = pd.concat([points, pd.DataFrame(zero)], ignore_index=True)
    return points.sort_values(["dataset", "backbone", VARIANT, "shots"], kind="stable")


def shots_ylims(summary: pd.DataFrame, metric: str,
                classes: Optional[Mapping[str, int]] = None) -> dict[str, tuple[float, float]]:
    """Data set -> (bottom, top) of the y axis shared by every shots figure of ``metric`` (each
    method's, and the methods-compared one), so figures of one data set can be compared by eye:
    it spans every method's mean ± std at every number of shots, the zero-shot points, the linear
    probes on all data and the chance level, with a margin, within [0, 100]."""
    part = summary[summary["metric"] == metric]
    curves = part[part["shots"].notna()]
    out: dict[str, tuple[float, float]] = {}
    for dataset in first_seen(curves["dataset"]):
        mine = part[part["dataset"] == dataset]
        refs = mine[(mine["method"] == ZERO_SHOT)
                    | ((mine["method"] == "linear") & mine["shots"].isna()
                       & mine["fraction"].isna())]
        rows = pd.concat([mine[mine["shots"].notna()], refs])
        rows = rows[rows["mean"].notna()]
        if rows.empty:
            continue
        std = rows["std"].fillna(0.0).astype(float)
        low = float((rows["mean"] - std).min())
        high = float((rows["mean"] + std).max())
        chance = chance_level(metric, (classes or {}).get(dataset))
        if chance is not None:
            low, high = min(low, chance), max(high, chance)
        margin = max(1.0, 0.06 * (high - low))
        out[dataset] = (max(0.0, low - margin), min(100.0, high + margin))
    return out


def _shots_axis(ax, shots: Iterable[int], zero: bool) -> None:
    """Log-scale shots axis; with a 0-shot point, linear between 0 and 1 and log above."""
    ticks = ([0] if zero else []) + sorted(set(int(s) for s in shots))
    if zero:
        ax.set_xscale("symlog", base=2, linthresh=1)
    else:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("shots per class")


def _label_panel(ax, dataset: str, metric: str, xlabel: Optional[str] = None) -> None:
    """One data set's panel: its name, the metric on the y axis, a light grid."""
    ax.set_title(dataset)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {METRIC_LABELS.get(metric, metric)} (%)")
    ax.grid(alpha=0.3)


def _chance_line(ax, metric: str, classes: Optional[int]) -> bool:
    level = chance_level(metric, classes)
    if level is None:
        return False
    ax.axhline(level, ls=(0, (5, 3)), lw=1.0, color="0.45", zorder=1)
    return True


def _chance_handle(metric: str):
    from matplotlib.lines import Line2D

    what = "50%" if metric == "auroc" else "1/C"
    return Line2D([], [], ls=(0, (5, 3)), lw=1.0, color="0.45"), f"chance ({what})"


def _legend_below(fig, axes, extra: list[tuple[Any, str]]) -> None:
    """One legend under the subplots: every labelled line once, then ``extra`` entries."""
    handles, labels = [], []
    for ax in axes:  # a line may be missing from the first data set
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    fig.tight_layout()
    longest = max((len(label) for label in labels), default=0)
    columns = 1 if longest > 60 else (2 if longest > 30 else 4)  # variant labels can be long
    if labels:
        fig.legend(handles, labels, loc="upper center", ncol=min(columns, len(labels)),
                   frameon=False, bbox_to_anchor=(0.5, 0.0))


def _save_below(fig, path: Path) -> Path:
    """Save a figure whose legend hangs below it (no tight_layout after the legend)."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def draw_shots_figure(summary: pd.DataFrame, sweep: str, method: str, metric: str,
                      ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                      classes: Optional[Mapping[str, int]] = None):
    """The figure of :func:`shots_figure`, not saved (a matplotlib Figure, or None)."""
    setup = _curve_setup(summary, sweep, method, metric, "shots")
    if setup is None:
        return None
    part, plt, datasets, lines, colours = setup
    wanted = [(d, b, v) for d in datasets for b, v in lines]
    baselines = _linear_baselines(summary, metric, sweep, wanted)
    points = shots_points(summary, sweep, method, metric)
    fig, axes = _grid(len(datasets))
    shots_all = sorted(int(s) for s in part["shots"].unique())
    drew_baseline = drew_zero = drew_chance = False
    for ax, dataset in zip(axes, datasets):
        zero_here = False
        for line in lines:
            backbone, variant = line
            mine = points[(points["dataset"] == dataset) & (points["backbone"] == backbone)
                          & (points[VARIANT] == variant)]
            rows, zero = mine[mine["shots"] > 0], mine[mine["shots"] == 0]
            if not rows.empty:
                ax.errorbar(rows["shots"], rows["mean"], yerr=rows["std"], marker="o", ms=4,
                            capsize=3, color=colours[line], label=line_label(backbone, variant))
            base = baselines.get((dataset, backbone, variant))
            if base is not None and not pd.isna(base) and not rows.empty:
                ax.axhline(base, ls="--", lw=1.2, color=colours[line])
                drew_baseline = True
            if not zero.empty:
                ax.errorbar(zero["shots"], zero["mean"], yerr=zero["std"].fillna(0.0),
                            marker="*", ms=9, capsize=3, ls="none", color=colours[line])
                zero_here = drew_zero = True
        drew_chance |= _chance_line(ax, metric, (classes or {}).get(dataset))
        _shots_axis(ax, shots_all, zero_here)
        if ylims and dataset in ylims:
            ax.set_ylim(*ylims[dataset])
        _label_panel(ax, dataset, metric)
    from matplotlib.lines import Line2D

    extra = []
    if drew_baseline:
        extra.append((Line2D([], [], ls="--", color="0.3"), "linear probe, all data"))
    if drew_zero:
        extra.append((Line2D([], [], marker="*", ms=9, ls="none", color="0.3"),
                      "zero-shot (0 shots)"))
    if drew_chance:
        extra.append(_chance_handle(metric))
    _title(fig, f"{sweep}: {method}, test {METRIC_LABELS.get(metric, metric)} vs shots per "
                f"class (mean ± std over seeds)")
    _legend_below(fig, axes, extra)
    return fig


def shots_figure(summary: pd.DataFrame, sweep: str, method: str, metric: str, path: Path,
                 ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                 classes: Optional[Mapping[str, int]] = None) -> Optional[Path]:
    """Metric vs shots per class (the study's Fig. 1), one subplot per data set, one line per
    backbone; zero-shot runs are the 0-shot points, each backbone's linear probe on all data a
    dashed line, chance a grey dashed line (``classes``: data set -> number of classes).
    ``ylims`` (:func:`shots_ylims`) gives each data set the y range shared by all its shots
    figures."""
    fig = draw_shots_figure(summary, sweep, method, metric, ylims, classes)
    return None if fig is None else _save_below(fig, path)


def draw_shots_comparison(summary: pd.DataFrame, sweep: str, metric: str,
                          ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                          classes: Optional[Mapping[str, int]] = None):
    """The figure of :func:`shots_comparison_figure`, not saved (a Figure, or None)."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    curves = part[part["shots"].notna() & (part["method"] != ZERO_SHOT)]
    if curves.empty or part["method"].nunique() < 2:
        return None
    plt = _pyplot()
    lines = first_seen(list(zip(curves["method"], curves["backbone"], _variants(curves))))
    datasets = first_seen(curves["dataset"])
    wanted = list(dict.fromkeys((d, b, v) for d in datasets for _, b, v in lines))
    zero = zero_shot_points(summary, metric, sweep, wanted)
    stars = first_seen([(b, v) for (_, b, v) in zero])
    keys = lines + [(ZERO_SHOT, b, v) for b, v in stars]
    colours = {key: plt.get_cmap("tab10")(i % 10) for i, key in enumerate(keys)}
    markers = {m: "osD^v<>p"[i % 8] for i, m in enumerate(first_seen([m for m, _, _ in lines]))}
    fig, axes = _grid(len(datasets))
    shots_all = sorted(int(s) for s in curves["shots"].unique())
    drew_chance = False
    variants = _variants(curves)
    for ax, dataset in zip(axes, datasets):
        zero_here = False
        for key in lines:
            method, backbone, variant = key
            rows = curves[(curves["dataset"] == dataset) & (curves["method"] == method)
                          & (curves["backbone"] == backbone) & (variants == variant)]
            rows = rows.sort_values("shots")
            if rows.empty:
                continue
            x = rows["shots"].astype(int).to_numpy()
            y = rows["mean"].astype(float).to_numpy()
            s = rows["std"].fillna(0.0).astype(float).to_numpy()
            ax.plot(x, y, marker=markers[method], ms=4, lw=1.5, color=colours[key],
                    label=line_label(f"{method} · {backbone}", variant))
            ax.fill_between(x, y - s, y + s, color=colours[key], alpha=0.15, lw=0)
        for backbone, variant in stars:
            point = zero.get((dataset, backbone, variant))
            if point is None or pd.isna(point[0]):
                continue
            mean, std = point
            ax.errorbar([0], [mean], yerr=[0.0 if pd.isna(std) else std], marker="*", ms=11,
                        capsize=3, ls="none", color=colours[(ZERO_SHOT, backbone, variant)],
                        label=line_label(f"{ZERO_SHOT} · {backbone}", variant) + " (0 shots)")
            zero_here = True
        drew_chance |= _chance_line(ax, metric, (classes or {}).get(dataset))
        _shots_axis(ax, shots_all, zero_here)
        if ylims and dataset in ylims:
            ax.set_ylim(*ylims[dataset])
        _label_panel(ax, dataset, metric)
    _title(fig, f"{sweep}: methods compared, test {METRIC_LABELS.get(metric, metric)} vs shots "
                f"per class (mean, shaded ± std over seeds)")
    _legend_below(fig, axes, [_chance_handle(metric)] if drew_chance else [])
    return fig


def shots_comparison_figure(summary: pd.DataFrame, sweep: str, metric: str, path: Path,
                            ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                            classes: Optional[Mapping[str, int]] = None) -> Optional[Path]:
    """A shots sweep's methods on one axis per data set: test metric vs shots per class (log
    scale), one line per (method, backbone, variant) with a mean ± std band, each backbone's
    zero-shot run as a star at 0 and chance as a grey dashed line (accuracy-like metrics, from
    ``classes``). None unless the sweep holds more than one method (zero-shot counts)."""
    fig = draw_shots_comparison(summary, sweep, metric, ylims, classes)
    return None if fig is None else _save_below(fig, path)


def fractions_figure(summary: pd.DataFrame, sweep: str, method: str, metric: str, path: Path,
                     sota: Optional[Mapping[str, float]] = None,
                     sota_label: str = DEFAULT_SOTA_LABEL) -> Optional[Path]:
    """Metric vs percentage of the training split (the study's Fig. 2)."""
    setup = _curve_setup(summary, sweep, method, metric, "fraction")
    if setup is None:
        return None
    part, plt, datasets, lines, colours = setup
    variants = _variants(part)
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets):
        for line in lines:
            backbone, variant = line
            rows = part[(part["dataset"] == dataset) & (part["backbone"] == backbone)
                        & (variants == variant)]
            rows = rows.sort_values("fraction")
            if rows.empty:
                continue
            x, y, s = rows["fraction"].to_numpy(), rows["mean"].to_numpy(), rows["std"].fillna(0).to_numpy()
            ax.plot(x, y, marker="o", ms=4, color=colours[line],
                    label=line_label(f"{backbone} ({method})", variant))
            ax.fill_between(x, y - s, y + s, color=colours[line], alpha=0.15)
        ticks = sorted(part[part["dataset"] == dataset]["fraction"].unique())
        if len(ticks) <= 20:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=7 if len(ticks) > 10 else None)
        if sota and metric == "accuracy" and dataset in sota:
            ax.axhline(float(sota[dataset]), color="black", lw=1.5, label=sota_label)
        _label_panel(ax, dataset, metric, xlabel="training data (%)")
        ax.legend(fontsize=8, loc="lower right")
    _title(fig, f"{sweep}: test {METRIC_LABELS.get(metric, metric)} vs training data used "
                f"(mean ± std over seeds)")
    return _save(fig, path)


def comparison_figure(summary: pd.DataFrame, ood: pd.DataFrame, sweep: str, metric: str,
                      path: Path, ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                      classes: Optional[Mapping[str, int]] = None) -> Optional[Path]:
    """The methods of a sweep compared in one figure, or None unless it runs more than one
    method: vs the percentage of the training data for a data-fraction sweep (one line per
    method, backbone and variant, one subplot per data set, out-of-domain results dashed in the
    same colour), vs shots per class for a shots sweep (:func:`shots_comparison_figure`)."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)
                   & summary["fraction"].notna()]
    if part.empty:
        return shots_comparison_figure(summary, sweep, metric, path, ylims, classes)
    if part["method"].nunique() < 2:
        return None
    plt = _pyplot()
    ood_part = ood[(ood["sweep"] == sweep) & (ood["metric"] == metric)] if not ood.empty else ood
    lines = first_seen(list(zip(part["method"], part["backbone"], _variants(part))))
    colours = {key: plt.get_cmap("tab10")(i % 10) for i, key in enumerate(lines)}
    datasets = first_seen(part["dataset"])
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets):
        for (method, backbone, variant), colour in colours.items():
            for frame, style, suffix in ((part, "-", ""), (ood_part, "--", ", out of domain")):
                if frame.empty:
                    continue
                rows = frame[(frame["dataset"] == dataset) & (frame["method"] == method)
                             & (frame["backbone"] == backbone) & (_variants(frame) == variant)
                             & frame["fraction"].notna()]
                rows = rows.sort_values("fraction")
                if rows.empty:
                    continue
                ax.errorbar(rows["fraction"], rows["mean"], yerr=rows["std"].fillna(0), ls=style,
                            marker="o", ms=4, capsize=3, color=colour,
                            label=line_label(f"{method} {backbone}", variant) + suffix)
        ax.set_xscale("log")
        ticks = sorted(part[part["dataset"] == dataset]["fraction"].unique())
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        _label_panel(ax, dataset, metric, xlabel="training data (%)")
        ax.legend(fontsize=7, loc="lower right")
    _title(fig, f"{sweep}: methods compared, test {METRIC_LABELS.get(metric, metric)} vs "
                f"training data (mean ± std over seeds; dashed: out of domain)")
    return _save(fig, path)
