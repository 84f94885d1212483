"""Parts shared by the report's figures (:mod:`.report_figures`): colours and line styles,
intervals, the baseline of each metric, the shots axis with its "all" point, legends, and
saving (PNG at :data:`PNG_DPI`, SVG, and the drawn points as CSV).

Every figure function attaches a :class:`Drawn` to the Figure it returns (``fig.drawn``): the
summary cells it drew (with the matplotlib line of each), the baselines and the interval note, so
tests and the report can check that every table's results are in a figure.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd

from cytotune.experiments.report_tables import METRIC_LABELS, class_sizes  # noqa: F401 (re-exported)
from cytotune.experiments.report_variants import VARIANT

DEFAULT_SOTA_LABEL = "HierSwin (state of the art)"
PNG_DPI = 200  # raster copy for the page; the SVG beside it is the one for a paper
# Okabe & Ito's colour-blind-safe qualitative palette (yellow last: faint on white), then a few
# darker Tableau colours for figures with more than eight methods or backbones
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#8C564B", "#7F7F7F", "#BCBD22", "#F0E442")
# one (line style, marker) per variant (and backbone, where colour is the method); named dash
# styles first so they read back from matplotlib as such; ':' is kept for reference lines
LINE_STYLES: tuple[tuple[Any, str], ...] = (
    ("-", "o"), ("--", "s"), ("-.", "^"), ((0, (3, 1, 1, 1, 1, 1)), "D"), ((0, (8, 2)), "v"),
    ((0, (1, 1, 4, 1)), "P"), ((0, (2, 2)), "X"), ((0, (6, 1, 1, 1)), "<"))
STAR_FILLS = ("full", "none", "left", "bottom")  # zero-shot stars of several backbones
REFERENCE_STYLE = ":"  # the linear probe on all data, a horizontal line
BASELINE_STYLE = dict(ls=(0, (5, 3)), lw=1.0, color="0.35", zorder=1)
RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8.5,
      "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "lines.linewidth": 1.6,
      "svg.fonttype": "none", "svg.hashsalt": "cytotune", "axes.spines.top": False,
      "axes.spines.right": False}
Sizes = Union[int, Sequence[int]]  # a data set's number of classes, or its test images per class


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def style() -> Iterator[Any]:
    """pyplot with the report's figure settings (fonts, SVG text kept as text, no top/right
    spines) for drawing and saving."""
    plt = pyplot()
    with plt.rc_context(RC):
        yield plt


@dataclass
class Drawn:
    """What a figure shows: one entry per summary cell drawn (``points``: the cell's keys,
    ``x``, ``mean``, ``low``, ``high``, ``interval`` and its matplotlib ``line``), the baseline
    of each data set (value, label, line) and the note on what the error bars are."""

    points: list[dict[str, Any]] = field(default_factory=list)
    baselines: dict[str, tuple[float, str, Any]] = field(default_factory=dict)
    note: str = ""

    def frame(self) -> pd.DataFrame:
        """The drawn points as a table (no matplotlib objects): the figure's source data."""
        columns = ["sweep", "dataset", "backbone", "method", VARIANT, "shots", "fraction",
                   "metric", "x", "mean", "low", "high", "interval"]
        rows = [{k: p.get(k) for k in columns} for p in self.points]
        frame = pd.DataFrame(rows, columns=columns)
        frame["baseline"] = [self.baselines.get(d, (math.nan,))[0] for d in frame["dataset"]]
        return frame


# ---- colours and styles -------------------------------------------------------------------
def colour_map(names: Iterable[str]) -> dict[str, str]:
    """A distinct palette colour per name, in the order given."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def style_map(keys: Iterable[Any]) -> dict[Any, tuple[Any, str]]:
    """(line style, marker) per key (a variant, or a backbone and variant), first-seen order."""
    return {key: LINE_STYLES[i % len(LINE_STYLES)] for i, key in enumerate(dict.fromkeys(keys))}


def metric_words(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def variants_of(frame: pd.DataFrame) -> pd.Series:
    if VARIANT in frame:
        return frame[VARIANT].fillna("").astype(str)
    return pd.Series([""] * len(frame), index=frame.index, dtype=object)


# ---- intervals ----------------------------------------------------------------------------
class Intervals:
    """The error bars of a figure: the summary's interval (``ci_low``/``ci_high``, in percent)
    where present and finite, else mean ± std over seeds; counts which was used, for the note."""

    def __init__(self) -> None:
        self.with_ci = 0
        self.with_std = 0
        self.bases: list[str] = []

    def of(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """mean, low, high and what each interval is ("ci" or "std") for ``rows``."""
        mean = rows["mean"].astype(float).to_numpy()
        std = rows["std"].astype(float).fillna(0.0).to_numpy() if "std" in rows else 0 * mean
        low, high = mean - std, mean + std
        kind = np.array(["std"] * len(rows), dtype=object)
        if "ci_low" in rows and "ci_high" in rows:
            ci_low = rows["ci_low"].astype(float).to_numpy()
            ci_high = rows["ci_high"].astype(float).to_numpy()
            ok = np.isfinite(ci_low) & np.isfinite(ci_high)
            low, high = np.where(ok, ci_low, low), np.where(ok, ci_high, high)
            kind[ok] = "ci"
            if "ci_basis" in rows:
                for text in rows["ci_basis"][ok]:
                    if isinstance(text, str) and text.strip() and text.strip() not in self.bases:
                        self.bases.append(text.strip())
        shown = np.isfinite(mean)
        self.with_ci += int(((kind == "ci") & shown).sum())
        self.with_std += int(((kind == "std") & shown).sum())
        return mean, low, high, list(kind)

    def note(self) -> str:
        """What the error bars are, for the legend and the title."""
        ci = "; ".join(self.bases) if self.bases else "interval [ci_low, ci_high]"
        if self.with_ci and not self.with_std:
            return f"bars: {ci}"
        if self.with_ci:
            return f"bars: {ci} where computed, else mean ± std over seeds"
        return "bars: mean ± std over seeds"


def interval_extent(rows: pd.DataFrame) -> tuple[float, float]:
    """The lowest and highest end of ``rows``' error bars (NaN, NaN when none)."""
    if rows.empty:
        return math.nan, math.nan
    _, low, high, _ = Intervals().of(rows)
    values = np.concatenate([low, high])
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if len(values) else (math.nan, math.nan)


# ---- baselines -----------------------------------------------------------------------------
def majority_rate(sizes: Sequence[int]) -> float:
    """Accuracy (%) of always answering the largest class of the test set."""
    return 100.0 * max(sizes) / sum(sizes)


def baseline(metric: str, sizes: Optional[Sizes]) -> Optional[tuple[float, str]]:
    """The trivial classifier's score (%) a figure of ``metric`` draws, and its name:

    - accuracy: the majority-class rate (always answering the largest class), which needs the
      test images per class (``sizes`` a sequence); with only the class count there is none;
    - balanced accuracy and macro-F1: 100/C. Balanced accuracy of any constant or random
      answer is 1/C; a guess drawn at random in the classes' proportions has expected per-class
      precision and recall p_c, so F1 p_c, and macro-F1 the mean of p_c: 1/C;
    - AUROC: 50 (a score that ignores the image); ECE and others: none."""
    if sizes is None:
        return None
    classes = sizes if isinstance(sizes, int) else len(sizes)
    if classes < 2:
        return None
    if metric == "accuracy":
        if isinstance(sizes, int):
            return None
        return majority_rate(sizes), "majority class"
    if metric in ("balanced_accuracy", "macro_f1"):
        return 100.0 / classes, "chance (1/C)"
    if metric == "auroc":
        return 50.0, "chance"
    return None


def draw_baseline(ax, metric: str, sizes: Optional[Sizes]) -> Optional[tuple[float, str, Any]]:
    """The metric's baseline (:func:`baseline`) as a grey dashed line, its value written on it."""
    found = baseline(metric, sizes)
    if found is None:
        return None
    value, name = found
    line = ax.axhline(value, **BASELINE_STYLE, label="_baseline")
    ax.annotate(f"{name}: {value:.1f}", xy=(0.99, value), xycoords=("axes fraction", "data"),
                xytext=(-2, 2), textcoords="offset points", fontsize=7.5, color="0.3",
                va="bottom", ha="right")
    return value, name, line


def baseline_handle(metric: str, values: Iterable[float] = ()):
    """The legend entry of the baseline lines: the same grey dash as drawn, with the value when
    every panel has the same one."""
    from matplotlib.lines import Line2D

    name = {"accuracy": "majority class", "auroc": "chance"}.get(metric, "chance (1/C)")
    shown = sorted({f"{v:.1f}" for v in values})
    text = f"{name}: {shown[0]}" if len(shown) == 1 else f"{name}, value on each panel"
    return Line2D([], [], **{k: v for k, v in BASELINE_STYLE.items() if k != "zorder"}), text


# ---- axes ------------------------------------------------------------------------------------
def all_position(shots: Iterable[int]) -> float:
    """Where the all-data point goes on a log2 shots axis: one empty octave after the largest
    number of shots."""
    top = max([int(s) for s in shots] or [1])
    return float(2 ** (math.ceil(math.log2(max(top, 1))) + 2))


def shots_axis(ax, shots: Iterable[int], zero: bool, all_x: Optional[float]) -> None:
    """Log2 shots axis (symlog, linear between 0 and 1, with a 0-shot point), and an "all"
    tick after a gap marked by a thin vertical line when all-data points are drawn."""
    ticks: list[float] = ([0] if zero else []) + sorted(set(int(s) for s in shots))
    labels = [str(int(t)) for t in ticks]
    if zero:
        ax.set_xscale("symlog", base=2, linthresh=1)
    else:
        ax.set_xscale("log", base=2)
    if all_x is not None:
        ax.axvline(all_x / 2, color="0.75", lw=0.8, zorder=0)
        ticks.append(all_x)
        labels.append("all")
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels)
    ax.minorticks_off()
    ax.set_xlabel("training images per class (shots)")


def dodge(x: np.ndarray, index: int, count: int, log: bool = True) -> np.ndarray:
    """``x`` moved sideways so the error bars of ``count`` lines do not hide each other: by a
    fraction of an octave on a log axis (0 stays 0)."""
    if count <= 1:
        return x.astype(float)
    step = min(0.08, 0.5 / count)
    offset = (index - (count - 1) / 2) * step
    x = x.astype(float)
    return np.where(x > 0, x * 2.0 ** offset, x) if log else x + offset


def label_panel(ax, dataset: str, ylabel: str, xlabel: Optional[str] = None) -> None:
    ax.set_title(dataset)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.25, lw=0.6)


def grid(plt, n: int, width: float = 4.2, height: float = 3.2):
    """``n`` panels, up to three a row; the unused ones hidden."""
    cols = min(3, max(1, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.2, width * cols), height * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def title(fig, text: str, note: str = "") -> None:
    import textwrap

    width = max(50, int(fig.get_figwidth() * 12))
    lines = textwrap.wrap(text, width) + ([f"({note})"] if note else [])
    fig.suptitle("\n".join(lines), fontsize=9.5)


def legend_below(fig, axes, extra: Sequence[tuple[Any, str]] = ()) -> None:
    """One legend under the panels: each labelled artist once (the artist itself is the
    handle, so its entry has the drawn colour, dash and marker), then ``extra``."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    fig.tight_layout()
    if not labels:
        return
    longest = max(len(label) for label in labels)
    # about 0.065 in a character at the legend's font size, plus the handle and the gap
    columns = max(1, min(3, int(fig.get_figwidth() / (0.065 * longest + 0.6))))
    fig.legend(handles, labels, loc="upper center", ncol=min(columns, len(labels)),
               frameon=False, bbox_to_anchor=(0.5, 0.0), handlelength=3.2)


def note_handle(note: str):
    """A legend entry for the error bars: a grey bar, labelled with what it is."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="0.3", marker="|", ms=11, mew=1.2, ls="none"), note


def save(fig, png: Path) -> list[Path]:
    """Write ``fig`` as PNG (:data:`PNG_DPI`), SVG and its drawn points as CSV beside it; close
    it. Returns the three paths, PNG first."""
    plt = pyplot()
    png.parent.mkdir(parents=True, exist_ok=True)
    svg, data = png.with_suffix(".svg"), png.with_suffix(".csv")
    with plt.rc_context(RC):
        fig.savefig(png, dpi=PNG_DPI, bbox_inches="tight")
        fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    drawn = getattr(fig, "drawn", None)
    (drawn or Drawn()).frame().to_csv(data, index=False)
    plt.close(fig)
    return [png, svg, data]


def new_figure(n: int):
    """A figure of ``n`` panels drawn with the report's settings: (fig, axes)."""
    plt = pyplot()
    with plt.rc_context(RC):
        return grid(plt, n)


def label_maker(keys: Sequence[tuple[str, str, str]]):
    """A line's label from its (method, backbone, variant), naming only what varies between
    the figure's lines (the method when nothing does), then the variant in brackets."""
    methods = len({k[0] for k in keys}) > 1
    backbones = len({k[1] for k in keys}) > 1

    def label(method: str, backbone: str, variant: str) -> str:
        parts = [p for p, show in ((method, methods), (backbone, backbones)) if show]
        name = " · ".join(parts or [method])
        return f"{name} [{variant}]" if variant else name

    return label


class Painter:
    """Draws the points of one figure and records every summary cell it drew (``drawn``)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.bars = Intervals()
        self.drawn = Drawn()

    def points(self, ax, rows: pd.DataFrame, x: np.ndarray, *, colour: Any, ls: Any,
               marker: str, label: str, ms: float = 4.5, fill: str = "full",
               record: bool = True):
        """``rows`` (summary rows, one per x) as markers joined by a line (``ls`` 'none': not
        joined) with error bars (:class:`Intervals`); returns the Line2D. ``record`` False:
        not a cell of the summary (out-of-domain results)."""
        mean, low, high, kind = self.bars.of(rows)
        (line,) = ax.plot(x, mean, ls=ls, marker=marker, ms=ms, color=colour, label=label,
                          fillstyle=fill, markerfacecoloralt="white", zorder=3)
        ok = np.isfinite(mean)
        if ok.any():
            # a percentile interval can (rarely) sit beside its mean: bars never go negative
            ax.errorbar(x[ok], mean[ok], yerr=[np.maximum(mean[ok] - low[ok], 0.0),
                                               np.maximum(high[ok] - mean[ok], 0.0)],
                        fmt="none", ecolor=colour, elinewidth=1.0, capsize=2.5, alpha=0.85,
                        zorder=2)
        for (_, row), xi, m, lo, hi, k in zip(rows.iterrows(), x, mean, low, high, kind):
            if not record or not np.isfinite(m):
                continue
            self.drawn.points.append({
                "sweep": row["sweep"], "dataset": row["dataset"], "backbone": row["backbone"],
                "method": row["method"], VARIANT: row.get(VARIANT, "") or "",
                "shots": row["shots"], "fraction": row["fraction"], "metric": self.metric,
                "x": float(xi), "mean": float(m), "low": float(lo), "high": float(hi),
                "interval": k, "line": line})
        return line

    def baseline(self, ax, dataset: str, sizes: Optional[Sizes]) -> None:
        found = draw_baseline(ax, self.metric, sizes)
        if found is not None:
            self.drawn.baselines[dataset] = found

    def finish(self, fig, axes, heading: str, extra: Sequence[tuple[Any, str]] = ()):
        """Title, the legend below (drawn artists, then ``extra``, the baseline and the
        error-bar note) and ``fig.drawn``; returns ``fig``."""
        self.drawn.note = self.bars.note()
        extra = list(extra)
        if self.drawn.baselines:
            extra.append(baseline_handle(self.metric,
                                         [b[0] for b in self.drawn.baselines.values()]))
        title(fig, heading, f"points: mean over seeds; {self.drawn.note}")
        legend_below(fig, axes, extra + [note_handle(self.drawn.note)])
        fig.drawn = self.drawn
        return fig
