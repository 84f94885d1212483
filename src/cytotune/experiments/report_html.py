"""The self-contained HTML page of a report (see :mod:`cytotune.experiments.report`)."""
from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from cytotune.experiments.report_tables import (CHOSEN_ON, CV_SCORE, HYPERPARAMETER_PREFIX,
                                                LOWER_IS_BETTER, METRIC_LABELS)
from cytotune.experiments.report_variants import VARIANT

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#555;font-size:.9em}
.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:.4em .8em}
.best{background:#f4f8ff;border:1px solid #cfdcf3;padding:.2em 1em 1em;margin:1em 0}
.best table{background:#fff}.best td:nth-child(-n+3),.best td:nth-child(6){text-align:left}
nav{margin:1em 0}nav a{margin-right:1.2em}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
"""

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


def _frame_html(frame: pd.DataFrame, index: bool = False, float_format: str = "{:.2f}") -> str:
    if frame is None or frame.empty:
        return "<p class='note'>none</p>"
    return frame.to_html(index=index, border=0, na_rep="",
                         float_format=lambda v: float_format.format(v), escape=True)


def _table_html(frame: pd.DataFrame, name: str) -> str:
    """A table of the page, marked ``data-table='name'``."""
    text = frame.to_html(index=False, border=0, escape=True, na_rep="")
    return text.replace("<table", f"<table data-table='{html.escape(name)}'", 1)


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


def html_page(title: str, store, records: pd.DataFrame, failures: pd.DataFrame,
              summary: pd.DataFrame, selected: pd.DataFrame, tables: Mapping[str, pd.DataFrame],
              titles: Mapping[str, str], figures: Sequence[Path], timings: pd.DataFrame,
              metrics: Sequence[str], sota: Optional[Mapping[str, float]],
              notes: Sequence[str] = (),
              best: Optional[Mapping[str, pd.DataFrame]] = None) -> str:
    """The whole page: the best method per data set and training data first (``best``: metric
    -> :func:`~cytotune.experiments.report_tables.best_table`), notes on split settings, figures,
    tables, then the long lists. Every table carries ``data-table`` (its file stem, or
    ``best__<metric>``) and every figure ``data-figure`` (its file name), for checks."""
    e = html.escape
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             f"<p class='note'>Store <code>{e(str(store.path))}</code>, generated {generated}. "
             f"{len(records)} finished runs in {records['sweep'].nunique() if not records.empty else 0} "
             f"sweep(s); {int((~failures['resolved']).sum()) if not failures.empty else 0} runs "
             f"failed and not finished since.</p>"]
    for metric, table in (best or {}).items():
        if table.empty:
            continue
        label = METRIC_LABELS.get(metric, metric)
        rank = "lowest" if metric in LOWER_IS_BETTER else "highest"
        parts.append(f"<section class='best'><h2>Best method per data set and training data: "
                     f"test {e(label)}</h2>"
                     f"<p class='note'>Over every sweep, method and backbone in the store: the "
                     f"{rank} mean test {e(label)} "
                     f"over seeds, in percent; ± is the standard deviation over seeds (the "
                     f"spread). <i>lead</i> is the gap to the runner-up in points: a lead "
                     f"smaller than the spreads is no clear win.</p>")
        parts.append(_table_html(table.reset_index(), f"best__{metric}"))
        parts.append("</section>")
    parts.append(f"<nav><a href='#figures'>Figures ({len(figures)})</a>"
                 f"<a href='#tables'>Tables ({len(tables)})</a><a href='#summary'>Summary "
                 f"(long form)</a><a href='#time'>Time spent</a><a href='#runs'>All runs</a></nav>")
    parts += ["<p class='note'>Selection as in the study: for each setting and seed, the learning "
             "rate with the best <b>validation</b> accuracy (ties: lower validation loss, then "
             "smaller learning rate); the <b>test</b> metric of that run is reported as mean±std "
             "over seeds, in percent. A cell pools only runs that differ in seed and learning "
             "rate; runs whose settings differ otherwise get rows of their own, labelled in the "
             "<i>setting</i> column.</p>"]
    for note in notes:
        parts.append(f"<p class='warn'>{e(note)}</p>")
    if records.empty:
        parts.append("<p>The store holds no finished runs yet.</p>")
    parts.append("<h2 id='figures'>Figures</h2>")
    if not figures:
        parts.append("<p class='note'>No few-shot or data-fraction settings in the store.</p>")
    if sota is None and any(p.name.startswith("fractions__") for p in figures):
        parts.append("<p class='note'>No state-of-the-art reference given (the study's text does "
                     "not print HierSwin's accuracy); pass <code>sota</code> to draw it.</p>")
    for path in figures:
        caption = figure_caption(path)
        parts.append(f"<figure id='figure-{e(path.stem)}'><figcaption>{e(caption)} "
                     f"(<code>figures/{e(path.name)}</code>)</figcaption>"
                     f"<img alt='{e(caption)}' data-figure='{e(path.name)}' "
                     f"src='data:image/png;base64,{_png_data(path)}'></figure>")
    parts.append("<h2 id='tables'>Tables</h2>")
    for stem, table in tables.items():
        parts.append(f"<h3 id='table-{e(stem)}'>{e(titles[stem])}</h3>")
        parts.append(_table_html(table.reset_index(), stem))
    parts.append("<h2 id='summary'>Summary (long form)</h2>")
    parts.append(_frame_html(summary))
    parts.append("<h2 id='time'>Time spent</h2>")
    if not records.empty:
        total_fe = records.get("feature_extraction_s", pd.Series(dtype=float)).sum()
        total_tr = records.get("training_s", pd.Series(dtype=float)).sum()
        total = records.get("total_s", pd.Series(dtype=float)).sum()
        parts.append(f"<p>Over all {len(records)} runs: feature extraction {total_fe:.1f} s, "
                     f"training {total_tr:.1f} s, whole runs {total:.1f} s "
                     f"(feature extraction is 0 when the feature cache served it).</p>")
    parts.append(_frame_html(timings))
    parts.append("<h2>Chosen runs (one per setting and seed)</h2>")
    keep = _with_variant(["sweep", "dataset", "backbone", "method", "shots", "fraction", "seed",
                          "lr", "val_accuracy", "val_loss", *choice_columns(selected),
                          *[f"test_{m}" for m in metrics], "run_id"], selected)
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
    parts.append("<h2 id='runs'>All runs</h2>")
    cols = _with_variant(["sweep", "dataset", "backbone", "method", "shots", "fraction", "seed",
                          "lr", "val_accuracy", *choice_columns(records), "test_accuracy",
                          "trainable_params", "total_s", "run_id"], records)
    parts.append(_frame_html(records[cols] if not records.empty else records,
                             float_format="{:.4g}"))
    parts.append("</body></html>")
    return "\n".join(parts)
