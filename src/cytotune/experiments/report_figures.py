"""Figures of a report (see :mod:`cytotune.experiments.report`): the study's Fig. 1 (metric vs
shots), Fig. 2 (metric vs training data used), the methods-compared figures, and a figure of the
results on no curve, so that every result of the tables is in a figure.

- One line per backbone **and variant** (:mod:`.report_variants`): runs of other settings are
  drawn as lines of their own, never averaged into one. A method has one colour (a colour-blind
  safe palette); its variants (and backbones, in a methods-compared figure) differ in line
  style and marker. A per-method figure with several backbones colours by backbone instead.
- All-data runs are a point of their own at an "all" tick after a gap on the shots axis;
  zero-shot runs are stars at 0 shots.
- Error bars are the summary's interval (``ci_low``/``ci_high``) where it has one, else mean ±
  std over seeds; the legend and title say which.
- Each figure draws the baseline of its metric, its value written on it
  (:func:`~.report_figure_parts.baseline`).
- Legend entries are the drawn artists themselves, so colour, dash and marker always match.

Every figure carries ``fig.drawn`` (:class:`~.report_figure_parts.Drawn`); :func:`write_figures`
saves each as PNG (200 dpi), SVG and the CSV of its points. Colours, styles, intervals,
baselines and axes are in :mod:`.report_figure_parts`; the figures of data fractions and of the
results on no curve in :mod:`.report_figure_other`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from cytotune.experiments.report_figure_other import (draw_fraction_comparison,  # noqa: F401
                                                      draw_fractions, draw_leftovers,
                                                      fractions_figure)  # re-exported
from cytotune.experiments.report_figure_parts import (DEFAULT_SOTA_LABEL, REFERENCE_STYLE,
                                                      STAR_FILLS, Painter, Sizes, all_position,
                                                      baseline, colour_map, dodge,
                                                      interval_extent, label_maker, label_panel,
                                                      metric_words, new_figure, save, shots_axis,
                                                      style, style_map, variants_of)
from cytotune.experiments.report_tables import ZERO_SHOT, first_seen, slug
from cytotune.experiments.report_variants import VARIANT

Line = tuple[str, str]  # (backbone, variant)
Where = tuple[str, str, str]  # (dataset, backbone, variant)
Key = tuple[str, str, str]  # (method, backbone, variant): one line of a figure
_variants = variants_of


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
                out[(dataset, backbone, variant)] = value(pick.iloc[0])
                break
    return out


def _wanted(summary: pd.DataFrame) -> list[Where]:
    return list(dict.fromkeys(zip(summary["dataset"], summary["backbone"], _variants(summary))))


def _all_data(frame: pd.DataFrame) -> pd.Series:
    return frame["shots"].isna() & frame["fraction"].isna()


def _linear_rows(summary: pd.DataFrame, metric: str, sweep: str,
                 wanted: Optional[Iterable[Where]] = None) -> dict[Where, pd.Series]:
    part = summary[(summary["metric"] == metric) & (summary["method"] == "linear")
                   & _all_data(summary)]
    if wanted is None:
        wanted = _wanted(part[part["sweep"] == sweep]) or _wanted(part)
    return _references(part, sweep, wanted, lambda r: r)


def _linear_baselines(summary: pd.DataFrame, metric: str, sweep: str,
                      wanted: Optional[Iterable[Where]] = None) -> dict[Where, float]:
    """(dataset, backbone, variant) -> mean test metric of the linear probe on all training data
    (see :func:`_references`); ``wanted`` defaults to the baselines' own lines of ``sweep``."""
    return {k: float(r["mean"]) for k, r in _linear_rows(summary, metric, sweep, wanted).items()}


def _zero_rows(summary: pd.DataFrame, metric: str, sweep: str,
               wanted: Optional[Iterable[Where]] = None) -> dict[Where, pd.Series]:
    part = summary[(summary["metric"] == metric) & (summary["method"] == ZERO_SHOT)]
    if wanted is None:
        wanted = _wanted(part[part["sweep"] == sweep]) or _wanted(part)
    return _references(part, sweep, wanted, lambda r: r)


def zero_shot_points(summary: pd.DataFrame, metric: str, sweep: str,
                     wanted: Optional[Iterable[Where]] = None) -> dict[Where, tuple[float, float]]:
    """(dataset, backbone, variant) -> (mean, std) of the zero-shot runs: the 0-shot point of
    Fig. 1 (see :func:`_references`)."""
    return {k: (r["mean"], r["std"]) for k, r in _zero_rows(summary, metric, sweep, wanted).items()}


def shots_points(summary: pd.DataFrame, sweep: str, method: str, metric: str) -> pd.DataFrame:
    """The points of one shots figure's curves: dataset, backbone, variant, shots, mean, std. A
    backbone's zero-shot run (:func:`zero_shot_points`) is its point at 0 shots, for the (data
    set, backbone, variant) lines that have a curve."""
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
                classes: Optional[Mapping[str, Sizes]] = None) -> dict[str, tuple[float, float]]:
    """Data set -> (bottom, top) of the y axis shared by every shots figure of ``metric`` (each
    method's, and the methods-compared one), so figures of one data set can be compared by eye:
    it spans every error bar at every number of shots, the zero-shot and all-data points and the
    metric's baseline, with a margin, within [0, 100]."""
    part = summary[summary["metric"] == metric]
    curves = part[part["shots"].notna()]
    out: dict[str, tuple[float, float]] = {}
    for dataset in first_seen(curves["dataset"]):
        mine = part[part["dataset"] == dataset]
        rows = mine[mine["shots"].notna() | _all_data(mine)]
        low, high = interval_extent(rows[rows["mean"].notna()])
        if np.isnan(low):
            continue
        found = baseline(metric, (classes or {}).get(dataset))
        if found is not None:
            low, high = min(low, found[0]), max(high, found[0])
        margin = max(1.0, 0.06 * (high - low))
        out[dataset] = (max(0.0, low - margin), min(100.0, high + margin))
    return out


def _draw_shots(summary: pd.DataFrame, sweep: str, metric: str, method: Optional[str],
                ylims: Optional[Mapping[str, tuple[float, float]]],
                classes: Optional[Mapping[str, Sizes]]):
    """A shots figure: one method's (``method``) or, with None, every method's lines."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    trained = part[part["method"] != ZERO_SHOT]
    if method is not None:
        trained = trained[trained["method"] == method]
    curves = trained[trained["shots"].notna()]
    if curves.empty:
        return None
    alldata = trained[_all_data(trained)]
    shown = pd.concat([curves, alldata])
    keys: list[Key] = first_seen(list(zip(shown["method"], shown["backbone"], _variants(shown))))
    order = first_seen(shown["method"])
    keys.sort(key=lambda k: order.index(k[0]))  # a method's variants side by side in the legend
    datasets = first_seen(shown["dataset"])
    method_colour = colour_map(first_seen(summary["method"]))
    backbone_colour = colour_map(first_seen(summary["backbone"]))
    by_backbone = method is not None and len({k[1] for k in keys}) > 1

    def colour(m: str, b: str) -> Any:
        return backbone_colour[b] if by_backbone else method_colour[m]

    styles = style_map([(k[2],) if by_backbone else (k[1], k[2]) for k in keys])

    def style_of(k: Key) -> tuple[Any, str]:
        return styles[(k[2],) if by_backbone else (k[1], k[2])]

    label = label_maker(keys)
    wanted = list(dict.fromkeys((d, b, v) for d in datasets for _, b, v in keys))
    zero = _zero_rows(summary, metric, sweep, wanted)
    if method is None:  # every zero-shot result of the sweep is in its comparison
        own = part[part["method"] == ZERO_SHOT]
        for (d, b, v), row in zip(zip(own["dataset"], own["backbone"], _variants(own)),
                                  (r for _, r in own.iterrows())):
            zero.setdefault((d, b, v), row)
    refs = _linear_rows(summary, metric, sweep, wanted) if method is not None else {}
    star_keys = first_seen([(r["backbone"], r.get(VARIANT, "") or "") for r in zero.values()])
    shots_all = sorted(int(s) for s in curves["shots"].unique())
    all_x = all_position(shots_all) if not alldata.empty else None
    fig, axes = new_figure(len(datasets))
    painter = Painter(metric)
    for ax, dataset in zip(axes, datasets):
        zero_here = False
        for i, key in enumerate(keys):
            m, b, v = key
            mine = trained[(trained["dataset"] == dataset) & (trained["method"] == m)
                           & (trained["backbone"] == b) & (_variants(trained) == v)]
            ls, marker = style_of(key)
            curve = mine[mine["shots"].notna()].sort_values("shots")
            line = None
            if not curve.empty:
                x = dodge(curve["shots"].astype(int).to_numpy(), i, len(keys))
                line = painter.points(ax, curve, x, colour=colour(m, b), ls=ls, marker=marker,
                                      label=label(m, b, v))
            whole = mine[_all_data(mine)]
            if not whole.empty and all_x is not None:
                x = dodge(np.array([all_x] * len(whole)), i, len(keys))
                painter.points(ax, whole, x, colour=colour(m, b), ls="none", marker=marker,
                               ms=5.5, label=label(m, b, v) if line is None else "_all")
        drawn_refs = set()
        for (d, b, v), row in refs.items():
            ref_key = (b, row.get(VARIANT, "") or "")
            if d != dataset or ref_key in drawn_refs or pd.isna(row["mean"]):
                continue
            if method == "linear" and row["sweep"] == sweep:
                continue  # drawn as the linear probe's own "all" point
            drawn_refs.add(ref_key)
            name = line_label("linear probe, all data" + (f" · {b}" if by_backbone else ""),
                              ref_key[1])
            ax.axhline(float(row["mean"]), ls=REFERENCE_STYLE, lw=1.3,
                       color=colour("linear", b), label=name, zorder=1)
        drawn_stars = set()
        for (d, b, v), row in zero.items():
            star = (b, row.get(VARIANT, "") or "")
            if d != dataset or star in drawn_stars or pd.isna(row["mean"]):
                continue
            drawn_stars.add(star)
            colour_here = method_colour[ZERO_SHOT] if method is None else colour(method, b)
            fill = STAR_FILLS[star_keys.index(star) % len(STAR_FILLS)] if method is None else "full"
            text = line_label(f"{ZERO_SHOT} · {b}" if len(star_keys) > 1 or method is None
                              else ZERO_SHOT, star[1]) + " (0 shots)"
            painter.points(ax, row.to_frame().T, np.array([0.0]), colour=colour_here, ls="none",
                           marker="*", ms=10, fill=fill, label=text)
            zero_here = True
        painter.baseline(ax, dataset, (classes or {}).get(dataset))
        shots_axis(ax, shots_all, zero_here, all_x)
        if ylims and dataset in ylims:
            ax.set_ylim(*ylims[dataset])
        label_panel(ax, dataset, f"test {metric_words(metric)} (%)")
    what = f"{method}" if method is not None else "methods compared"
    constant = ""
    if len({k[1] for k in keys}) == 1:
        constant = f" ({keys[0][1]})"
    return painter.finish(fig, axes, f"{sweep}: {what}{constant}, test {metric_words(metric)} "
                                     f"vs training images per class")


def draw_shots_figure(summary: pd.DataFrame, sweep: str, method: str, metric: str,
                      ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                      classes: Optional[Mapping[str, Sizes]] = None):
    """The figure of :func:`shots_figure`, not saved (a matplotlib Figure, or None)."""
    with style():
        return _draw_shots(summary, sweep, metric, method, ylims, classes)


def shots_figure(summary: pd.DataFrame, sweep: str, method: str, metric: str, path: Path,
                 ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                 classes: Optional[Mapping[str, Sizes]] = None) -> Optional[Path]:
    """Metric vs shots per class (the study's Fig. 1), one subplot per data set, one line per
    backbone and variant, the method's all-data runs at "all"; zero-shot runs are the 0-shot
    stars, each backbone's linear probe on all data (any sweep) a dotted line in its colour, the
    metric's baseline a grey dashed line (``classes``: data set -> test images per class, or
    the number of classes). ``ylims`` (:func:`shots_ylims`) gives each data set the y range
    shared by all its shots figures. Saved as PNG, SVG and CSV; returns the PNG."""
    fig = draw_shots_figure(summary, sweep, method, metric, ylims, classes)
    return None if fig is None else save(fig, path)[0]


def draw_shots_comparison(summary: pd.DataFrame, sweep: str, metric: str,
                          ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                          classes: Optional[Mapping[str, Sizes]] = None):
    """The figure of :func:`shots_comparison_figure`, not saved (a Figure, or None)."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    if part["method"].nunique() < 2:
        return None
    with style():
        return _draw_shots(summary, sweep, metric, None, ylims, classes)


def shots_comparison_figure(summary: pd.DataFrame, sweep: str, metric: str, path: Path,
                            ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                            classes: Optional[Mapping[str, Sizes]] = None) -> Optional[Path]:
    """A shots sweep's methods on one axis per data set: test metric vs shots per class (log
    scale), one colour per method, a line style and marker per backbone and variant, error
    bars, every method's all-data runs at "all", every zero-shot run as a star at 0 and the
    metric's baseline. None unless the sweep holds more than one method (zero-shot counts)."""
    fig = draw_shots_comparison(summary, sweep, metric, ylims, classes)
    return None if fig is None else save(fig, path)[0]


def draw_comparison(summary: pd.DataFrame, ood: pd.DataFrame, sweep: str, metric: str,
                    ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                    classes: Optional[Mapping[str, Sizes]] = None):
    """The figure of :func:`comparison_figure`, not saved (a Figure, or None)."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
    if part["fraction"].notna().any():
        return draw_fraction_comparison(summary, ood, sweep, metric, classes)
    return draw_shots_comparison(summary, sweep, metric, ylims, classes)


def comparison_figure(summary: pd.DataFrame, ood: pd.DataFrame, sweep: str, metric: str,
                      path: Path, ylims: Optional[Mapping[str, tuple[float, float]]] = None,
                      classes: Optional[Mapping[str, Sizes]] = None) -> Optional[Path]:
    """The methods of a sweep compared in one figure, or None unless it runs more than one
    method: vs the percentage of the training data for a data-fraction sweep
    (:func:`~.report_figure_other.draw_fraction_comparison`), vs shots per class for a shots
    sweep (:func:`shots_comparison_figure`). Saved as PNG, SVG and CSV; returns the PNG."""
    fig = draw_comparison(summary, ood, sweep, metric, ylims, classes)
    return None if fig is None else save(fig, path)[0]


FILTER_OPTIONS = (("--methods", "method"), ("--backbones", "backbone"))


def check_filters(records: pd.DataFrame, methods: Optional[Sequence[str]] = None,
                  backbones: Optional[Sequence[str]] = None) -> None:
    """Refuse a figure filter naming a method or backbone that no run of ``records`` has: a
    ValueError naming the option, the unknown names and the known ones."""
    for (option, column), names in zip(FILTER_OPTIONS, (methods, backbones)):
        if not names:
            continue
        present = first_seen(records[column]) if column in records else []
        unknown = [n for n in dict.fromkeys(names) if n not in present]
        if unknown:
            raise ValueError(f"{option}: unknown {column}{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(str, unknown))}; known: "
                             f"{', '.join(map(str, present)) or '(no runs)'}")


def figure_rows(summary: pd.DataFrame, methods: Optional[Sequence[str]] = None,
                backbones: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The rows of ``summary`` (or an out-of-domain summary) the figures draw: only those of
    ``methods`` and ``backbones`` where given (every other figure element, the linear probe's
    reference line and the zero-shot stars included, follows the same filter)."""
    for (_, column), names in zip(FILTER_OPTIONS, (methods, backbones)):
        if names and column in summary:
            summary = summary[summary[column].isin(list(names))]
    return summary


def draw_figures(summary: pd.DataFrame, ood: pd.DataFrame, metrics: Sequence[str],
                 classes: Optional[Mapping[str, Sizes]] = None,
                 sota: Optional[Mapping[str, float]] = None,
                 sota_label: str = DEFAULT_SOTA_LABEL) -> Iterator[tuple[str, Any]]:
    """Every figure of a report as (file stem, Figure), in page order: the methods compared per
    sweep, each method's figure vs shots and vs data fraction, then per sweep the results on no
    curve (all-data-only or zero-shot-only settings), so every summary row is in a figure.
    Figures share one y range per data set and metric (:func:`shots_ylims`). The caller closes
    each figure (:func:`write_figures` saves and closes)."""
    if summary.empty:
        return
    ylims = {metric: shots_ylims(summary, metric, classes) for metric in metrics}
    covered: set[tuple] = set()

    def seen(fig) -> Any:
        for p in fig.drawn.points:
            covered.add(_cell(p))
        return fig

    sweeps = first_seen(summary["sweep"])
    for sweep in sweeps:
        for metric in metrics:
            fig = draw_comparison(summary, ood, sweep, metric, ylims[metric], classes)
            if fig is not None:
                yield "__".join(slug(x) for x in ("comparison", sweep, metric)), seen(fig)
    for sweep, method in summary[["sweep", "method"]].drop_duplicates().itertuples(index=False):
        for metric in metrics:
            stem = "__".join(slug(x) for x in (sweep, method, metric))
            fig = draw_shots_figure(summary, sweep, method, metric, ylims[metric], classes)
            if fig is not None:
                yield f"shots__{stem}", seen(fig)
            fig = draw_fractions(summary, sweep, method, metric, sota, sota_label, classes)
            if fig is not None:
                yield f"fractions__{stem}", seen(fig)
    for sweep in sweeps:
        for metric in metrics:
            part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)]
            left = part[[_cell(r) not in covered for _, r in part.iterrows()]]
            fig = draw_leftovers(left, sweep, metric, classes)
            if fig is not None:
                yield "__".join(slug(x) for x in ("results", sweep, metric)), seen(fig)


def _cell(row: Mapping[str, Any]) -> tuple:
    """A summary cell's identity (NA-safe), to tell which cells a figure drew."""
    def norm(v: Any) -> Any:
        if v is None or pd.isna(v):
            return None
        return float(v) if isinstance(v, (int, float, np.number)) else v

    return (row["sweep"], row["dataset"], row["backbone"], row["method"],
            row.get(VARIANT, "") or "", norm(row["shots"]), norm(row["fraction"]), row["metric"])


def write_figures(summary: pd.DataFrame, ood: pd.DataFrame, metrics: Sequence[str],
                  folder: Path, classes: Optional[Mapping[str, Sizes]] = None,
                  sota: Optional[Mapping[str, float]] = None,
                  sota_label: str = DEFAULT_SOTA_LABEL) -> list[list[Path]]:
    """Draw and save every figure of :func:`draw_figures` in ``folder``: per figure
    ``<stem>.png`` (200 dpi, embedded in the page), ``<stem>.svg`` (for a paper) and
    ``<stem>.csv`` (the points drawn). Returns [png, svg, csv] per figure."""
    return [save(fig, Path(folder) / f"{stem}.png")
            for stem, fig in draw_figures(summary, ood, metrics, classes, sota, sota_label)]
