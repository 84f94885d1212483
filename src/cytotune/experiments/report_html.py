"""The self-contained HTML page of a report (see :mod:`cytotune.experiments.report`).

Layout (issue 30, item 8): the summary (the best method per data set and training data, in the
headline metric: the report's first metric) comes first, then an index of every table by name,
the figures, the tables and the long lists (long-form summary, time spent, chosen, failed and
all runs). Figures and tables of the other metrics, and the long lists, are folded
(``<details>``; following a link into one opens it), which keeps the page short.

Nothing may make the page wider than a 1,366 px window: the body is at most 1,280 px wide,
tables use a compact font and wrap their headers and cells (the long lists may break a cell
anywhere, so they fit however many columns they have), and figures are shown at 5/4 of their
size in print (their PNG's dpi, read from the file), two to a row where they fit, never wider
than the body. ``scripts/check_report_html.py`` checks this in headless Chromium.
"""
from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from cytotune.experiments.report_tables import (CHOSEN_ON, CV_SCORE, HYPERPARAMETER_PREFIX,
                                                LOWER_IS_BETTER, METRIC_LABELS, display_shots,
                                                has_intervals, slug)
from cytotune.experiments.report_variants import VARIANT

WIDE_COLUMNS = 10  # a table with more columns gets a smaller font and may break cells anywhere
BODY_WIDTH_PX = 1280  # the page's widest content; fits a 1,366 px window with a scrollbar
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;
max-width:%dpx;color:#222;padding:0 1em;line-height:1.35}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.3em 0 1.1em;font-size:.85em;max-width:100%%}
th,td{border:1px solid #ddd;padding:.2em .45em;text-align:right;vertical-align:top;
overflow-wrap:break-word}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}
table[data-index='2'] td:nth-child(-n+2),table[data-index='3'] td:nth-child(-n+3),
table[data-index='2'] th:nth-child(-n+2),table[data-index='3'] th:nth-child(-n+3){text-align:left}
table.list,table.wide{font-size:.75em}
table.list th,table.list td,table.wide th,table.wide td{overflow-wrap:anywhere}
img{max-width:100%%;height:auto;border:1px solid #eee;margin:.3em 0;box-sizing:border-box}
figure{display:inline-block;vertical-align:top;margin:.6em .6em .6em 0;max-width:100%%}
figure.sized img{width:100%%}
.note{color:#555;font-size:.9em}
.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:.4em .8em}
.best{background:#f4f8ff;border:1px solid #cfdcf3;padding:.2em 1em 1em;margin:1em 0}
.best table{background:#fff}.best td,.best th{text-align:left}
nav{margin:1em 0;font-size:.9em}nav a{margin-right:1em}nav ul{margin:.3em 0;padding-left:1.2em}
nav li{margin:.15em 0}figcaption{color:#555;font-size:.85em}
details{margin:.6em 0}summary{cursor:pointer;color:#1a4d8f}
""" % BODY_WIDTH_PX
# following a link (the index, a figure's anchor) into a folded section opens it
_REVEAL = """<script>
function cytotuneReveal(){var id=decodeURIComponent(location.hash.slice(1));
var t=id&&document.getElementById(id);for(var e=t;e;e=e.parentElement){
if(e.tagName==='DETAILS'){e.open=true;}}if(t){t.scrollIntoView();}}
window.addEventListener('hashchange',cytotuneReveal);
window.addEventListener('load',function(){if(location.hash){cytotuneReveal();}});
</script>"""

_FIGURE_KINDS = {"shots": "vs shots per class", "fractions": "vs training data used",
                 "comparison": "methods compared"}


def figure_caption(path: Path) -> str:
    """A figure's file name for a person: ``exp2 · lora · accuracy vs shots per class``."""
    kind, *rest = path.stem.split("__")
    if kind not in _FIGURE_KINDS or not rest:
        return path.stem
    if kind == "comparison":
        return f"{rest[0]}: methods compared · {' · '.join(rest[1:])}"
    return f"{' · '.join(rest)} {_FIGURE_KINDS[kind]}"



def _png_data(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


FIGURE_PX_PER_INCH = 120  # 5/4 of print size (96 CSS px per inch): 8-pt text reads at ~13 px


def figure_width(path: Path) -> Optional[int]:
    """The width in CSS pixels at which the page shows ``path`` (a PNG): its size in inches,
    read from its dpi, at :data:`FIGURE_PX_PER_INCH`; None when the file records no dpi (the
    page then shows it at most as wide as the body). A 200 dpi PNG 1,023 px wide (5.1 inches)
    is shown 614 px wide: readable, not blown up to the page's width, two to a row."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            dpi = image.info.get("dpi")
            width = image.width
    except (ImportError, OSError):
        return None
    if not dpi or not dpi[0] or dpi[0] < 10:
        return None
    return int(round(width * FIGURE_PX_PER_INCH / float(dpi[0])))


def _frame_html(frame: pd.DataFrame, index: bool = False, float_format: str = "{:.2f}") -> str:
    """A long list (summary, runs ...) as a compact table; ``shots`` says ``all``, not ``<NA>``."""
    if frame is None or frame.empty:
        return "<p class='note'>none</p>"
    return display_shots(frame).to_html(index=index, border=0, na_rep="", classes="list",
                                        float_format=lambda v: float_format.format(v),
                                        escape=True)


def _table_html(frame: pd.DataFrame, name: str) -> str:
    """A table of the page (its index levels as the first, left-aligned columns), marked
    ``data-table='name'``; one of more than :data:`WIDE_COLUMNS` columns is marked ``wide``
    (smaller font, cells may break anywhere) so that it fits the body."""
    levels = min(frame.index.nlevels, 3) if frame.index.names != [None] else 0
    shown = frame.reset_index() if levels else frame
    text = shown.to_html(index=False, border=0, escape=True, na_rep="",
                         classes="wide" if shown.shape[1] > WIDE_COLUMNS else None)
    return text.replace("<table", f"<table data-table='{html.escape(name)}' "
                                  f"data-index='{max(levels, 1)}'", 1)


def choice_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of what runs chose and how (:func:`~.report_tables.add_run_choices`), for the
    per-run tables; the selection-mode columns only where some run left the study's protocol."""
    hp = [c for c in frame.columns if c.startswith(HYPERPARAMETER_PREFIX)]
    if HYPERPARAMETER_PREFIX + "select_on" in frame and \
            (frame[HYPERPARAMETER_PREFIX + "select_on"].fillna("val") == "val").all() and \
            HYPERPARAMETER_PREFIX + "select_on_requested" not in frame:
        hp = [c for c in hp if c != HYPERPARAMETER_PREFIX + "select_on"]
    return [*hp, *[c for c in (CV_SCORE, CHOSEN_ON) if c in frame]]


def _with_variant(columns: Sequence[str], frame: pd.DataFrame) -> list[str]:
    """``columns`` present in ``frame``, with the variant after the fraction where any run has
    one (runs of other settings must be told apart in the lists too)."""
    out = [c for c in columns if c in frame]
    if VARIANT in frame and (frame[VARIANT].fillna("") != "").any():
        at = out.index("fraction") + 1 if "fraction" in out else len(out)
        out.insert(at, VARIANT)
    return out


def metric_of(stem: str, metrics: Sequence[str]) -> Optional[str]:
    """The metric a table or figure stem ends with (``...__<metric>``), None if none."""
    for metric in sorted(metrics, key=len, reverse=True):
        if stem.endswith("__" + slug(metric)):
            return metric
    return None


def index_name(title: str) -> str:
    """A table's name in the index: its heading up to the first ``: ``."""
    return title.split(": ", 1)[0]


def _interval_words(part: pd.DataFrame) -> str:
    """How the cells' uncertainty is given, in a sentence for the notes."""
    if has_intervals(part):
        bases = [str(b) for b in dict.fromkeys(part.get("ci_basis", pd.Series(dtype=object))
                                               .dropna()) if str(b).strip()]
        basis = f" ({'; '.join(bases)})" if bases else ""
        return (f"[low, high] is the interval of the mean{basis}; cells without one show "
                f"mean±std over seeds")
    return "± is the standard deviation over seeds (the spread)"


def _best_section(metric: str, table: pd.DataFrame, summary: pd.DataFrame) -> str:
    e = html.escape
    label = METRIC_LABELS.get(metric, metric)
    rank = "lowest" if metric in LOWER_IS_BETTER else "highest"
    part = summary[summary["metric"] == metric] if "metric" in summary else summary
    spread = "" if has_intervals(part) else (" <i>lead</i> is the gap to the runner-up in "
                                             "points: a lead smaller than the spreads is no "
                                             "clear win.")
    return (f"<section class='best'><h2 id='best-{e(slug(metric))}'>Best method per data set "
            f"and training data: test {e(label)}</h2>"
            f"<p class='note'>Over every sweep, method and backbone in the store: the {rank} "
            f"mean test {e(label)} over seeds, in percent; {e(_interval_words(part))}.{spread}"
            f"</p>{_table_html(table, f'best__{metric}')}</section>")


def _figure_html(path: Path) -> str:
    e = html.escape
    caption = figure_caption(path)
    width = figure_width(path)
    sized = f" class='sized' style='width:{width}px'" if width else ""
    others = [p for p in (path.with_suffix(".svg"), path.with_suffix(".pdf")) if p.is_file()]
    links = "".join(f", <a href='figures/{e(p.name)}'>{p.suffix[1:].upper()}</a>" for p in others)
    return (f"<figure id='figure-{e(path.stem)}'{sized}><figcaption>{e(caption)} "
            f"(<code>figures/{e(path.name)}</code>{links})</figcaption>"
            f"<img alt='{e(caption)}' data-figure='{e(path.name)}' "
            f"src='data:image/png;base64,{_png_data(path)}'></figure>")


def _by_metric(stems: Sequence[str], metrics: Sequence[str]) -> dict[Optional[str], list[str]]:
    """``stems`` grouped by the metric they end with, in the order of ``metrics`` (None: no
    metric, shown with the headline metric)."""
    groups: dict[Optional[str], list[str]] = {m: [] for m in metrics}
    for stem in stems:
        groups.setdefault(metric_of(stem, metrics), []).append(stem)
    return groups


def _folded(metric: Optional[str], headline: Optional[str], kind: str, count: int, body: str,
            anchor: str) -> str:
    """``body`` as is for the headline metric, else folded under a one-line summary."""
    if metric is None or metric == headline:
        return body
    label = METRIC_LABELS.get(metric, metric)
    return (f"<details id='{html.escape(anchor)}'><summary>{kind} of test {html.escape(label)} "
            f"({count})</summary>{body}</details>")


def html_page(title: str, store, records: pd.DataFrame, failures: pd.DataFrame,
              summary: pd.DataFrame, selected: pd.DataFrame, tables: Mapping[str, pd.DataFrame],
              titles: Mapping[str, str], figures: Sequence[Path], timings: pd.DataFrame,
              metrics: Sequence[str], sota: Optional[Mapping[str, float]],
              notes: Sequence[str] = (),
              best: Optional[Mapping[str, pd.DataFrame]] = None,
              statistics: Sequence[str] = ()) -> str:
    """The whole page (module docstring): the best method per data set and training data in
    the headline metric (``metrics[0]``; ``best``: metric ->
    :func:`~cytotune.experiments.report_tables.best_table`) first, an index of the tables,
    notes on split settings, figures, tables, then the long lists. Every table carries
    ``data-table`` (its file stem, or ``best__<metric>``) and every figure ``data-figure`` (its
    file name), for checks."""
    e = html.escape
    headline = metrics[0] if metrics else None
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{e(title)}</title><style>{_CSS}</style>{_REVEAL}</head><body>",
             f"<h1>{e(title)}</h1>",
             f"<p class='note'>Store <code>{e(str(store.path))}</code>, generated {generated}. "
             f"{len(records)} finished runs in {records['sweep'].nunique() if not records.empty else 0} "
             f"sweep(s); {int((~failures['resolved']).sum()) if not failures.empty else 0} runs "
             f"failed and not finished since.</p>"]
    best = {m: t for m, t in (best or {}).items() if not t.empty}
    top = headline if headline in best else next(iter(best), None)
    if top is not None:
        parts.append(_best_section(top, best[top], summary))
    if statistics:  # how the intervals and tests were made, right under the claims they back
        parts.append(_details("How the intervals and tests are made",
                              "".join(f"<p class='note'>{e(line)}</p>" for line in statistics)))

    pngs = [p for p in figures if p.suffix == ".png"]
    table_groups = _by_metric(list(tables), metrics)
    figure_groups = _by_metric([p.stem for p in pngs], metrics)
    parts.append(f"<nav id='contents'><a href='#tables'>Tables ({len(tables)})</a>"
                 f"<a href='#figures'>Figures ({len(pngs)})</a><a href='#summary'>Summary "
                 f"(long form)</a><a href='#time'>Time spent</a><a href='#chosen'>Chosen runs"
                 f"</a><a href='#failed'>Failed runs</a><a href='#runs'>All runs</a>")
    index = []
    for metric, stems in table_groups.items():
        extra = [m for m in best if m == metric and m != top]
        if not stems and not extra:
            continue
        links = [f"<a href='#best-{e(slug(m))}'>Best method per data set and training data"
                 f"</a>" for m in extra]
        links += [f"<a href='#table-{e(stem)}'>{e(index_name(titles.get(stem, stem)))}</a>"
                  for stem in stems]
        label = METRIC_LABELS.get(metric, metric) if metric else "other"
        index.append(f"<li><b>{e(label)}</b>: {' · '.join(links)}</li>")
    if index:
        parts.append(f"<div><b>Tables by name</b><ul>{''.join(index)}</ul></div>")
    parts.append("</nav>")
    part = summary[summary["metric"] == headline] if "metric" in summary else summary
    parts.append("<p class='note'>Selection as in the study: for each setting and seed, the "
                 "learning rate with the best <b>validation</b> accuracy (ties: lower validation "
                 "loss, then smaller learning rate); the <b>test</b> metric of that run is "
                 f"reported as the mean over seeds, in percent; {e(_interval_words(part))}. A "
                 "cell pools only runs that differ in seed and learning rate; runs whose "
                 "settings differ otherwise get rows of their own, labelled in the "
                 "<i>setting</i> column.</p>")
    for note in notes:
        parts.append(f"<p class='warn'>{e(note)}</p>")
    if records.empty:
        parts.append("<p>The store holds no finished runs yet.</p>")

    parts.append("<h2 id='figures'>Figures</h2>")
    if not pngs:
        parts.append("<p class='note'>No few-shot or data-fraction settings in the store.</p>")
    if sota is None and any(p.name.startswith("fractions__") for p in pngs):
        parts.append("<p class='note'>No state-of-the-art reference given (the study's text does "
                     "not print HierSwin's accuracy); pass <code>sota</code> to draw it.</p>")
    by_stem = {p.stem: p for p in pngs}
    for metric, stems in figure_groups.items():
        if stems:
            body = "".join(_figure_html(by_stem[s]) for s in stems)
            parts.append(_folded(metric, headline, "Figures", len(stems), body,
                                 f"figures-{slug(metric or '')}"))

    parts.append("<h2 id='tables'>Tables</h2>")
    parts.append("<p class='note'>Columns are training sizes: <i>zero-shot</i> (no training "
                 "images), shots per class, percentages of the training data and <i>all</i> (all "
                 "training data). Each table is also a CSV and a Markdown file in "
                 "<code>tables/</code>; <code>tables.md</code> gathers them.</p>")
    for metric, stems in table_groups.items():
        body = []
        if metric is not None and metric != top and metric in best:
            body.append(_best_section(metric, best[metric], summary))
        for stem in stems:
            body.append(f"<h3 id='table-{e(stem)}'>{e(titles.get(stem, stem))}</h3>")
            body.append(_table_html(tables[stem], stem))
        if body:
            parts.append(_folded(metric, headline, "Tables", len(stems), "".join(body),
                                 f"tables-{slug(metric or '')}"))

    parts.append(f"<h2 id='summary'>Summary (long form)</h2>")
    long_form = summary
    if "ci_basis" in summary and summary["ci_basis"].fillna("").nunique() <= 1:
        basis = next(iter(summary["ci_basis"].fillna("")), "")
        if basis:
            parts.append(f"<p class='note'>Intervals: {e(str(basis))}.</p>")
        long_form = summary.drop(columns="ci_basis")
    parts.append(_details(f"{len(summary)} rows (<code>summary.csv</code>)",
                          _frame_html(long_form)))
    parts.append("<h2 id='time'>Time spent</h2>")
    if not records.empty:
        total_fe = records.get("feature_extraction_s", pd.Series(dtype=float)).sum()
        total_tr = records.get("training_s", pd.Series(dtype=float)).sum()
        total = records.get("total_s", pd.Series(dtype=float)).sum()
        parts.append(f"<p>Over all {len(records)} runs: feature extraction {total_fe:.1f} s, "
                     f"training {total_tr:.1f} s, whole runs {total:.1f} s "
                     f"(feature extraction is 0 when the feature cache served it).</p>")
    parts.append(_details(f"per sweep, method, backbone and data set ({len(timings)} rows, "
                          f"<code>timings.csv</code>)", _frame_html(timings)))
    parts.append("<h2 id='chosen'>Chosen runs (one per setting and seed)</h2>")
    keep = _with_variant(["sweep", "dataset", "backbone", "method", "shots", "fraction", "seed",
                          "lr", "val_accuracy", "val_loss", *choice_columns(selected),
                          *[f"test_{m}" for m in metrics], "run_id"], selected)
    parts.append(_details(f"{len(selected)} runs (<code>selected.csv</code>)",
                          _frame_html(selected[keep] if not selected.empty else selected,
                                      float_format="{:.4g}")))
    parts.append("<h2 id='failed'>Failed runs</h2>")
    open_failures = failures[~failures["resolved"]] if not failures.empty else failures
    if not open_failures.empty:
        parts.append(_frame_html(open_failures[["run_id", "sweep", "dataset", "backbone",
                                                "method", "shots", "fraction", "seed", "lr",
                                                "error", "failed_at"]]))
    else:
        parts.append("<p class='note'>none</p>")
    parts.append("<h2 id='runs'>All runs</h2>")
    cols = _with_variant(["sweep", "dataset", "backbone", "method", "shots", "fraction", "seed",
                          "lr", "val_accuracy", *choice_columns(records), "test_accuracy",
                          "trainable_params", "total_s", "run_id"], records)
    parts.append(_details(f"{len(records)} runs (<code>runs.csv</code>)",
                          _frame_html(records[cols] if not records.empty else records,
                                      float_format="{:.4g}")))
    parts.append("</body></html>")
    return "\n".join(parts)


def _details(summary: str, body: str) -> str:
    """A folded long list: ``summary`` (HTML) is the line shown, ``body`` opens on a click."""
    return f"<details><summary>{summary}</summary>{body}</details>"
