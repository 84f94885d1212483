"""The report's figures of data-fraction sweeps (the study's Fig. 2 and a sweep's methods
compared vs training data) and the figure of the results on no curve (settings run on all
training data only, or zero-shot only), so that every result of the tables is in a figure.
Shared parts (colours, styles, intervals, baselines) are in :mod:`.report_figure_parts`; the
shots figures and the report's list of figures in :mod:`.report_figures`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from cytotune.experiments.report_figure_parts import (DEFAULT_SOTA_LABEL, Painter, Sizes,
                                                      colour_map, dodge, label_maker,
                                                      label_panel, metric_words, new_figure,
                                                      save, style, style_map, variants_of)
from cytotune.experiments.report_tables import ZERO_SHOT, first_seen

FRACTION_LABEL = "training data used (%)"
OOD_STYLE = ":"  # out-of-domain results: the in-domain line's colour and marker, open, dotted


def _fraction_axis(ax, fractions: Sequence[float]) -> None:
    """Log-scale percentage axis with a tick at each fraction run."""
    ticks = sorted(set(float(f) for f in fractions))
    ax.set_xscale("log")
    ax.minorticks_off()
    if len(ticks) <= 20:
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=7 if len(ticks) > 10 else None)


def _keys(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(method, backbone, variant) of each line, a method's lines side by side."""
    keys = first_seen(list(zip(frame["method"], frame["backbone"], variants_of(frame))))
    order = first_seen(frame["method"])
    return sorted(keys, key=lambda k: order.index(k[0]))


def _rows(frame: pd.DataFrame, dataset: str, key: tuple[str, str, str]) -> pd.DataFrame:
    method, backbone, variant = key
    return frame[(frame["dataset"] == dataset) & (frame["method"] == method)
                 & (frame["backbone"] == backbone) & (variants_of(frame) == variant)]


def draw_fractions(summary: pd.DataFrame, sweep: str, method: str, metric: str,
                   sota: Optional[Mapping[str, float]] = None,
                   sota_label: str = DEFAULT_SOTA_LABEL,
                   classes: Optional[Mapping[str, Sizes]] = None):
    """The figure of :func:`fractions_figure`, not saved (a Figure, or None)."""
    part = summary[(summary["sweep"] == sweep) & (summary["method"] == method)
                   & (summary["metric"] == metric) & summary["fraction"].notna()]
    if part.empty:
        return None
    with style():
        keys = _keys(part)
        by_backbone = len({k[1] for k in keys}) > 1
        colours = (colour_map(first_seen(summary["backbone"])) if by_backbone
                   else colour_map(first_seen(summary["method"])))
        styles = style_map(k[2] for k in keys)
        label = label_maker(keys)
        datasets = first_seen(part["dataset"])
        fig, axes = new_figure(len(datasets))
        painter = Painter(metric)
        for ax, dataset in zip(axes, datasets):
            for i, key in enumerate(keys):
                rows = _rows(part, dataset, key).sort_values("fraction")
                if rows.empty:
                    continue
                ls, marker = styles[key[2]]
                x = dodge(rows["fraction"].to_numpy(), i, len(keys))
                painter.points(ax, rows, x, colour=colours[key[1] if by_backbone else method],
                               ls=ls, marker=marker, label=label(*key))
            if sota and metric == "accuracy" and dataset in sota:
                value = float(sota[dataset])
                ax.axhline(value, color="black", lw=1.3, label=f"{sota_label}: {value:.1f}")
            painter.baseline(ax, dataset, (classes or {}).get(dataset))
            _fraction_axis(ax, part[part["dataset"] == dataset]["fraction"])
            label_panel(ax, dataset, f"test {metric_words(metric)} (%)", xlabel=FRACTION_LABEL)
        return painter.finish(fig, axes, f"{sweep}: {method}, test {metric_words(metric)} vs "
                                         f"training data used")


def fractions_figure(summary: pd.DataFrame, sweep: str, method: str, metric: str, path: Path,
                     sota: Optional[Mapping[str, float]] = None,
                     sota_label: str = DEFAULT_SOTA_LABEL,
                     classes: Optional[Mapping[str, Sizes]] = None) -> Optional[Path]:
    """Metric vs percentage of the training split (the study's Fig. 2): one line per backbone
    and variant, error bars, the metric's baseline, and a state-of-the-art line per data set
    when ``sota`` gives one (accuracy). Saved as PNG, SVG and CSV; returns the PNG."""
    fig = draw_fractions(summary, sweep, method, metric, sota, sota_label, classes)
    return None if fig is None else save(fig, path)[0]


def draw_fraction_comparison(summary: pd.DataFrame, ood: pd.DataFrame, sweep: str, metric: str,
                             classes: Optional[Mapping[str, Sizes]] = None):
    """A data-fraction sweep's methods vs the percentage of training data, one panel per data
    set: a colour per method, a line style and marker per backbone and variant, error bars,
    out-of-domain results dotted with open markers in the same colour. None unless the sweep
    runs more than one method."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)
                   & summary["fraction"].notna()]
    if part.empty or part["method"].nunique() < 2:
        return None
    ood_part = ood[(ood["sweep"] == sweep) & (ood["metric"] == metric)
                   & ood["fraction"].notna()] if not ood.empty else ood
    with style():
        keys = _keys(part)
        colours = colour_map(first_seen(summary["method"]))
        styles = style_map((b, v) for _, b, v in keys)
        label = label_maker(keys)
        datasets = first_seen(part["dataset"])
        fig, axes = new_figure(len(datasets))
        painter = Painter(metric)
        for ax, dataset in zip(axes, datasets):
            for i, key in enumerate(keys):
                ls, marker = styles[key[1:]]
                rows = _rows(part, dataset, key).sort_values("fraction")
                if not rows.empty:
                    painter.points(ax, rows, dodge(rows["fraction"].to_numpy(), i, len(keys)),
                                   colour=colours[key[0]], ls=ls, marker=marker,
                                   label=label(*key))
                other = _rows(ood_part, dataset, key).sort_values("fraction") \
                    if not ood_part.empty else ood_part
                if not other.empty:
                    painter.points(ax, other, dodge(other["fraction"].to_numpy(), i, len(keys)),
                                   colour=colours[key[0]], ls=OOD_STYLE, marker=marker,
                                   fill="none", label=label(*key) + ", out of domain",
                                   record=False)
            painter.baseline(ax, dataset, (classes or {}).get(dataset))
            _fraction_axis(ax, part[part["dataset"] == dataset]["fraction"])
            label_panel(ax, dataset, f"test {metric_words(metric)} (%)", xlabel=FRACTION_LABEL)
        return painter.finish(fig, axes, f"{sweep}: methods compared, test "
                                         f"{metric_words(metric)} vs training data used")


def _sample_words(rows: pd.DataFrame) -> str:
    words = []
    if (rows["method"] != ZERO_SHOT).any():
        words.append("all training data")
    if (rows["method"] == ZERO_SHOT).any():
        words.append("zero-shot: no training images")
    return "; ".join(words)


def draw_leftovers(rows: pd.DataFrame, sweep: str, metric: str,
                   classes: Optional[Mapping[str, Sizes]] = None,
                   methods: Optional[Sequence[str]] = None):
    """The results of one sweep and metric that are on no curve (``rows``: summary rows, e.g.
    a linear probe run on all training data only, or zero-shot only): one panel per data set,
    backbones along x, one marker per method and variant (a star for zero-shot) with its error
    bar, and the metric's baseline. ``methods`` orders the colours (default: as in ``rows``).
    None when there is nothing to draw."""
    rows = rows[rows["mean"].notna()]
    if rows.empty:
        return None
    with style():
        keys = [(m, v) for m, _, v in dict.fromkeys((m, "", v) for m, _, v in _keys(rows))]
        colours = colour_map(list(methods or []) + first_seen(rows["method"]))
        styles = style_map(v for _, v in keys)
        label = label_maker([(m, "", v) for m, v in keys])
        backbones = first_seen(rows["backbone"])
        datasets = first_seen(rows["dataset"])
        fig, axes = new_figure(len(datasets))
        painter = Painter(metric)
        for ax, dataset in zip(axes, datasets):
            for i, (method, variant) in enumerate(keys):
                mine = rows[(rows["dataset"] == dataset) & (rows["method"] == method)
                            & (variants_of(rows) == variant)]
                if mine.empty:
                    continue
                x = np.array([backbones.index(b) for b in mine["backbone"]], dtype=float)
                x = x + (i - (len(keys) - 1) / 2) * min(0.15, 0.7 / len(keys))
                _, marker = styles[variant]
                star = method == ZERO_SHOT
                painter.points(ax, mine, x, colour=colours[method], ls="none",
                               marker="*" if star else marker, ms=10 if star else 6,
                               label=label(method, "", variant))
            painter.baseline(ax, dataset, (classes or {}).get(dataset))
            ax.set_xticks(range(len(backbones)))
            long = sum(len(b) for b in backbones) > 40
            ax.set_xticklabels(backbones, rotation=25 if long else 0,
                               ha="right" if long else "center")
            ax.set_xlim(-0.6, len(backbones) - 0.4)
            label_panel(ax, dataset, f"test {metric_words(metric)} (%)", xlabel="backbone")
        return painter.finish(fig, axes, f"{sweep}: test {metric_words(metric)}, "
                                         f"{_sample_words(rows)}")
