"""Tables and figures of a result store, selected the way the reference study selects.

Selection (study, section 4): for every (sweep, data set, backbone, method, shots or fraction)
and every seed, the learning rate with the best **validation** accuracy is chosen (ties: lower
validation loss where recorded, then the smaller learning rate), and the **test** metric of that
run is reported. Linear runs trained with ``select_on: train-cv`` (a departure from the study)
are chosen on their cross-validated accuracy on the training images instead, automatically
(their config says so, and they are a variant of their own); ``selected.csv`` says which in
``lr_chosen_on``. Then mean ± standard deviation over the seeds (population std, ``ddof=0``, by
default; one seed gives ±0). Values are percentages.

A cell pools only runs that differ in seed and learning rate. Runs of the same setting whose
configurations differ otherwise (image size, precision, steps, LoRA rank ..., see
:mod:`cytotune.experiments.report_variants`) are variants: each is selected and summarised on its
own, gets its own table rows (a ``setting`` column naming the differing values, present only
when a table holds variants) and its own figure lines, and the report logs one warning per group
of split cells (shown on screen by ``cytotune report``) and repeats it on the HTML page.

Modules: ``report_variants`` (what may be pooled), ``report_tables`` (selection, summaries,
tables), ``report_figures``, ``report_html``; this one writes the files.

Outputs, in ``out_dir``:

- ``report.html``: one self-contained page (figures embedded as base64 PNG) with everything below,
  opening with the best method per data set and training data;
- ``best__<metric>.csv`` and ``.md``: that summary (:func:`best_table`): per data set and training
  data (zero-shot, each number of shots, each fraction, all data), the best method and backbone
  over every sweep, mean±std over seeds, seeds, the runner-up and the lead in points;
- ``tables/<sweep>__<method>__<sample>__<metric>.csv`` and ``.md``: Table 1 layout, data sets as
  rows, backbones as columns, "mean±std" cells and an "Average" row (mean over data sets);
  ``tables.md`` gathers them;
- ``summary.csv`` (long form: mean, std, seeds, chosen lrs per setting, variant and metric),
  ``selected.csv`` (the chosen run of each seed), ``runs.csv`` (every run, ``selected`` marked,
  with what a probe chose: ``hp_k``, ``hp_C``, ``hp_alpha``, ``hp_beta``, ``hp_select_on``,
  ``hp_select_on_fallback`` ..., and a train-cv run's ``train_cv_accuracy``),
  ``timings.csv`` (feature extraction, training and total seconds, sums and means),
  ``failures.csv`` (failed attempts); each run's ``variant`` is a column of these files;
- ``figures/shots__<sweep>__<method>__<metric>.png``: metric vs shots per class, one subplot per
  data set, one line per backbone, and each backbone's linear probe on all data (from any sweep
  in the same store) as a dashed line in its colour (the study's Fig. 1); a backbone's zero-shot
  run (method ``zero-shot``, same sweep first, else any sweep) is its 0-shot point (a star at 0);
  chance is a grey dashed line (100/C for accuracy and balanced accuracy, C read off the runs'
  confusion matrices; 50 for AUROC). All shots figures of a data set share one y range
  (:func:`shots_ylims`), so the methods' figures can be compared by eye;
- ``figures/comparison__<sweep>__<metric>.png`` for every sweep with more than one method: a
  shots sweep's methods on one axis per data set (log-scale shots, a mean ± std band per method
  and backbone, zero-shot stars at 0, the chance line, the shared y range); a data-fraction
  sweep's methods vs the percentage of training data, out-of-domain results dashed;
- ``figures/fractions__<sweep>__<method>__<metric>.png``: metric vs percentage of the training
  data (the study's Fig. 2), with a state-of-the-art reference line per data set when given.

The state-of-the-art line: the study compares its Exp. 3 with HierSwin (Cai et al.) on HiCervix
level 3, but its text does not print HierSwin's accuracy (only a figure), so there is no built-in
value: pass ``sota={"hicervix": <accuracy in %>}`` (CLI: ``--sota hicervix=<acc>``) with the
number from the HierSwin paper; without it the line is left out.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from cytotune.experiments.report_figures import (DEFAULT_SOTA_LABEL, _linear_baselines,
                                                 comparison_figure, draw_shots_comparison,
                                                 draw_shots_figure, fractions_figure,
                                                 shots_comparison_figure, shots_figure,
                                                 shots_points, shots_ylims, zero_shot_points)
from cytotune.experiments.report_html import html_page
from cytotune.experiments.report_tables import (METRIC_LABELS, REPORT_METRICS, SETTING_LEVEL,
                                                ZERO_SHOT, add_run_choices, best_table,
                                                chance_level,
                                                class_counts, comparison_table, first_seen,
                                                has_variants, markdown_table,
                                                out_of_domain_summary, same_value, sample_label,
                                                sample_words, select_best, slug, summarize,
                                                table1, timing_summary)
from cytotune.experiments.report_variants import (CELL, POOLED_FIELDS, SETTING, VARIANT,
                                                  add_variants, split_notes)
from cytotune.experiments.store import ResultStore

log = logging.getLogger(__name__)

__all__ = [
    "CELL", "DEFAULT_SOTA_LABEL", "METRIC_LABELS", "POOLED_FIELDS", "REPORT_METRICS", "Report",
    "SETTING", "SETTING_LEVEL", "VARIANT", "ZERO_SHOT", "_linear_baselines", "add_variants",
    "best_table", "chance_level", "class_counts", "comparison_figure", "comparison_table",
    "draw_shots_comparison", "draw_shots_figure", "fractions_figure", "make_report",
    "out_of_domain_summary", "sample_label", "select_best", "shots_comparison_figure",
    "shots_figure", "shots_points", "shots_ylims", "split_notes", "summarize", "table1",
    "timing_summary", "zero_shot_points",
]
# the JSON columns of ResultStore.records(full=True): read for the variants, not written out
_JSON_COLUMNS = ("config_json", "metrics_json", "timings_json", "trainable_json")


@dataclass
class Report:
    """What :func:`make_report` wrote, with the frames it computed."""

    out_dir: Path
    html: Path
    summary: pd.DataFrame  # long form, one row per setting, variant and metric
    selected: pd.DataFrame  # one row per setting, variant and seed: the chosen run
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # file stem -> Table 1 layout
    figures: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    # one line per group of cells split into variants (runs whose settings differ), as logged
    notes: list[str] = field(default_factory=list)
    titles: dict[str, str] = field(default_factory=dict)  # file stem -> heading of each table
    # metric -> the best method per data set and training data (the page's opening summary)
    best: dict[str, pd.DataFrame] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Every file the report wrote, for the screen: the HTML page, then each table (its CSV,
        Markdown and heading), each figure and the remaining files, nothing left out."""
        out = [f"HTML page: {self.html}"]
        best = [p for p in self.files if p.name.startswith("best__") and p.suffix == ".csv"]
        if best:
            out.append("summary (best method per data set and training data): "
                       + ", ".join(str(p) for p in best))
        out.append(f"{len(self.tables)} table{'' if len(self.tables) == 1 else 's'} "
                   f"(CSV and Markdown; all of them in {self.out_dir / 'tables.md'}):")
        for stem in self.tables:
            csv = self.out_dir / "tables" / f"{stem}.csv"
            out.append(f"  {csv} (.md): {self.titles.get(stem, stem)}")
        out.append(f"{len(self.figures)} figure{'' if len(self.figures) == 1 else 's'}:")
        out += [f"  {path}" for path in self.figures]
        listed = {self.html, *self.figures, self.out_dir / "tables.md", *best}
        listed |= {self.out_dir / "tables" / f"{stem}{ext}" for stem in self.tables
                   for ext in (".csv", ".md")}
        rest = [p for p in self.files if p not in listed]
        if rest:
            out.append("other files: " + ", ".join(str(p) for p in rest))
        return out


def make_report(store_path: str | Path | ResultStore, out_dir: str | Path,
                metrics: Sequence[str] = ("accuracy",), *, sweeps: Optional[Sequence[str]] = None,
                sota: Optional[Mapping[str, float]] = None,
                sota_label: str = DEFAULT_SOTA_LABEL, select_by: str = "accuracy",
                ddof: int = 0, title: str = "cytotune experiments") -> Report:
    """Write tables, figures, CSV files and one self-contained HTML page for a result store.

    ``metrics``: test metrics to report (accuracy, balanced_accuracy, macro_f1, auroc, ece);
    the learning rate is chosen on validation ``select_by`` (accuracy, as in the study), or for
    ``select_on: train-cv`` linear runs on their CV score (:func:`select_best`).
    ``sweeps``: restrict to these sweeps. ``sota``: data set -> state-of-the-art accuracy in %,
    drawn as a horizontal line on the fraction figures (no default; see the module docstring).
    Cells whose runs differ in more than seed and learning rate are split (module docstring);
    each group of split cells is logged as a warning and listed in ``Report.notes``.
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
    full = store.records(full=True)
    failures = store.failures()
    if sweeps:
        full = full[full["sweep"].isin(list(sweeps))].reset_index(drop=True)
        failures = failures[failures["sweep"].isin(list(sweeps))].reset_index(drop=True)
    full = add_run_choices(add_variants(full))
    notes = split_notes(full)
    for note in notes:
        log.warning(note)
    records = full.drop(columns=[c for c in _JSON_COLUMNS if c in full])

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
    markdown += [f"> **Note:** {note}\n" for note in notes]

    def add_table(stem: str, table: pd.DataFrame, heading: str) -> None:
        tables[stem], titles[stem] = table, heading
        table.to_csv(out / "tables" / f"{stem}.csv")
        text = markdown_table(table, heading)
        (out / "tables" / f"{stem}.md").write_text(text, encoding="utf-8")
        markdown.append(text)
        files.extend([out / "tables" / f"{stem}.csv", out / "tables" / f"{stem}.md"])

    datasets_order = first_seen(records["dataset"]) if not records.empty else []
    best: dict[str, pd.DataFrame] = {}
    if not summary.empty:
        for metric in metrics:
            best[metric] = best_table(summary, metric, datasets_order)
            heading = (f"Best method per data set and training data: test "
                       f"{METRIC_LABELS.get(metric, metric)} (%), mean±std over seeds "
                       f"(over every sweep, method and backbone)")
            stem = f"best__{slug(metric)}"
            best[metric].to_csv(out / f"{stem}.csv")
            text = markdown_table(best[metric], heading)
            (out / f"{stem}.md").write_text(text, encoding="utf-8")
            markdown.append(text)
            files.extend([out / f"{stem}.csv", out / f"{stem}.md"])
    backbones_order = first_seen(records["backbone"]) if not records.empty else []
    if not summary.empty:
        slices = summary[summary["metric"] == metrics[0]][["sweep", "method", "shots", "fraction"]]
        slices = slices.drop_duplicates()
        for s in slices.itertuples(index=False):
            sample = sample_label(s.shots, s.fraction)
            mask = ((summary["sweep"] == s.sweep) & (summary["method"] == s.method)
                    & same_value(summary["shots"], s.shots)
                    & same_value(summary["fraction"], s.fraction))
            part = summary[mask]
            for metric in metrics:
                present = set(part["dataset"])
                table = table1(part, metric,
                               datasets=[d for d in datasets_order if d in present],
                               backbones=[b for b in backbones_order if b in set(part["backbone"])])
                words = "no training images" if s.method == ZERO_SHOT else sample_words(sample)
                heading = (f"{s.sweep}: {s.method}, {words}: test "
                           f"{METRIC_LABELS.get(metric, metric)} (%), mean±std over seeds"
                           f"{_split_words(part)}")
                add_table("__".join(slug(x) for x in (s.sweep, s.method, sample, metric)),
                          table, heading)
    ood = out_of_domain_summary(selected, metrics, ddof=ddof)
    if not ood.empty:
        ood.to_csv(out / "summary_out_of_domain.csv", index=False)
        files.append(out / "summary_out_of_domain.csv")
    compared = first_seen(summary["sweep"]) if not summary.empty else []
    for sweep in compared:
        for metric in metrics:
            table = comparison_table(summary, ood, selected, sweep, metric)
            if table is None:
                continue
            heading = (f"{sweep}: methods compared, test {METRIC_LABELS.get(metric, metric)} (%), "
                       f"mean±std over seeds{_split_words(summary[summary['sweep'] == sweep])}")
            add_table("__".join(slug(x) for x in ("comparison", sweep, metric)), table, heading)
    (out / "tables.md").write_text("\n".join(markdown), encoding="utf-8")
    files.append(out / "tables.md")

    figures: list[Path] = []
    classes = class_counts(full)
    ylims = {metric: shots_ylims(summary, metric, classes) for metric in metrics}
    for sweep in compared:
        for metric in metrics:
            made = comparison_figure(summary, ood, sweep, metric, out / "figures" /
                                     f"comparison__{slug(sweep)}__{slug(metric)}.png",
                                     ylims[metric], classes)
            if made:
                figures.append(made)
    if not summary.empty:
        pairs = summary[["sweep", "method"]].drop_duplicates().itertuples(index=False)
        for sweep, method in pairs:
            for metric in metrics:
                stem = "__".join(slug(x) for x in (sweep, method, metric))
                made = shots_figure(summary, sweep, method, metric,
                                    out / "figures" / f"shots__{stem}.png", ylims[metric],
                                    classes)
                if made:
                    figures.append(made)
                made = fractions_figure(summary, sweep, method, metric,
                                        out / "figures" / f"fractions__{stem}.png", sota,
                                        sota_label)
                if made:
                    figures.append(made)

    page = html_page(title, store, records, failures, summary, selected, tables, titles, figures,
                     timing_summary(records), metrics, sota, notes, best)
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return Report(out_dir=out, html=html_path, summary=summary, selected=selected, tables=tables,
                  figures=figures, files=files + figures + [html_path], notes=notes,
                  titles=titles, best=best)


def _split_words(part: pd.DataFrame) -> str:
    """What a heading adds when its rows hold variants (runs of different settings)."""
    if not has_variants(part):
        return ""
    return (f"; runs of different settings are not pooled: one row per "
            f"'{SETTING_LEVEL}'")


def _open_existing(path: str | Path) -> ResultStore:
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"no result store at {path}")
    return ResultStore(path)
