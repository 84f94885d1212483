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
  opening with the best method per data set and training data in the headline metric (the
  first of ``metrics``; balanced accuracy by default), then an index of the tables
  (:mod:`.report_html`);
- ``best__<metric>.csv`` and ``.md``: that summary (:func:`best_table`): per data set and training
  data (zero-shot, each number of shots, each fraction, all data), the best method and backbone
  over every sweep, its cell, seeds, the runner-up and the lead in points;
- ``tables/<stem>.csv`` and ``.md``, one layout per sweep (:mod:`.report_layout`): a sweep of
  several methods gets one table per data set and backbone (methods as rows, training sizes
  ``zero-shot``, ``1 shot`` ... ``10%`` ... ``all`` as columns), a one-method sweep one
  learning-curve table ((data set, backbone) x sizes, Average rows), a one-method one-size sweep
  the Table 1 layout (data sets x backbones, Average row); cells are ``mean [low, high]`` where
  the summary has an interval (``ci_low``, ``ci_high``), else ``mean±std`` over seeds;
  ``tables.md`` gathers them;
- ``summary.csv`` (long form: mean, std, seeds, chosen lrs per setting, variant and metric; the
  ``shots`` of these files says ``all`` for all-data runs and ``0`` for zero-shot runs),
  ``selected.csv`` (the chosen run of each seed), ``runs.csv`` (every run, ``selected`` marked,
  with what a probe chose: ``hp_k``, ``hp_C``, ``hp_alpha``, ``hp_beta``, ``hp_select_on``,
  ``hp_select_on_fallback`` ..., and a train-cv run's ``train_cv_accuracy``),
  ``timings.csv`` (feature extraction, training and total seconds, sums and means),
  ``failures.csv`` (failed attempts); each run's ``variant`` is a column of these files;
- figures (:mod:`.report_figures`), each as ``figures/<stem>.png`` (200 dpi, the one embedded
  in the page), ``.svg`` (vector, for a paper) and ``.csv`` (the points drawn: mean, interval
  ends and what the interval is). Every summary cell is a drawn point of some figure. Error
  bars are the summary's interval (``ci_low``/``ci_high``) where it has one, else mean ± std over
  seeds; each figure's legend and title say which. A method keeps one colour (colour-blind
  safe palette); its variants differ in line style and marker; legend entries are the drawn
  artists. Each figure draws the baseline of its metric with its value: the majority-class
  rate for accuracy (test images per class from the runs' confusion matrices), 100/C for
  balanced accuracy and macro-F1, 50 for AUROC, none for ECE. ``methods``/``backbones`` (CLI
  ``--methods``/``--backbones``) restrict what the figures draw;
- ``figures/comparison__<sweep>__<metric>`` for every sweep with more than one method: a
  shots sweep's methods on one axis per data set (log-scale shots, every method's all-data
  runs at an "all" tick after a gap, zero-shot stars at 0); a data-fraction sweep's methods vs
  the percentage of training data, out-of-domain results dotted with open markers;
- ``figures/shots__<sweep>__<method>__<metric>``: metric vs shots per class, one panel per data
  set, one line per backbone and variant, the method's all-data runs at "all", each backbone's
  linear probe on all data (any sweep of the store) as a dotted line in its colour (the study's
  Fig. 1), a backbone's zero-shot run (same sweep first, else any sweep) as a star at 0. All
  shots figures of a data set share one y range (:func:`shots_ylims`);
- ``figures/fractions__<sweep>__<method>__<metric>``: metric vs percentage of the training
  data (the study's Fig. 2), with a state-of-the-art reference line per data set when given;
- ``figures/results__<sweep>__<metric>``: a sweep's results on no curve (run on all training
  data only, or zero-shot only: the study's Table 1 as a figure), backbones along x.

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

from cytotune.analysis import COUNT_METRICS, BootstrapSpec
from cytotune.experiments.report_budget import budget_section
from cytotune.experiments.report_robustness import robustness_section

from cytotune.experiments.report_figure_parts import class_sizes
from cytotune.experiments.report_figures import (DEFAULT_SOTA_LABEL, _linear_baselines,
                                                 check_filters, comparison_figure,
                                                 draw_shots_comparison, draw_shots_figure,
                                                 figure_rows, fractions_figure,
                                                 shots_comparison_figure, shots_figure,
                                                 shots_points, shots_ylims, write_figures,
                                                 zero_shot_points)
from cytotune.experiments.report_html import html_page
from cytotune.experiments.report_layout import cell_words, sweep_tables, table1
from cytotune.experiments.report_tables import (DEFAULT_METRICS, METRIC_LABELS, REPORT_METRICS,
                                                SETTING_LEVEL, ZERO_SHOT, add_run_choices,
                                                best_table, chance_level, class_counts,
                                                display_shots, first_seen, markdown_table,
                                                out_of_domain_summary, sample_label,
                                                select_best, slug, summarize, timing_summary)
from cytotune.experiments.report_stats import (add_intervals, best_summary, fingerprints_by_run,
                                               paired_tables, pairwise_tables, ranking,
                                               ranking_figure, ranking_table, run_outcomes,
                                               statistics_notes)
from cytotune.experiments.report_variants import (CELL, POOLED_FIELDS, SETTING, VARIANT,
                                                  add_variants, split_notes)
from cytotune.experiments.store import ResultStore

log = logging.getLogger(__name__)

__all__ = [
    "CELL", "DEFAULT_METRICS", "DEFAULT_SOTA_LABEL", "METRIC_LABELS", "POOLED_FIELDS", "REPORT_METRICS", "Report",
    "SETTING", "SETTING_LEVEL", "VARIANT", "ZERO_SHOT", "_linear_baselines", "add_variants",
    "best_table", "chance_level", "class_counts", "comparison_figure",
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
                metrics: Sequence[str] = DEFAULT_METRICS, *, sweeps: Optional[Sequence[str]] = None,
                sota: Optional[Mapping[str, float]] = None,
                sota_label: str = DEFAULT_SOTA_LABEL, select_by: str = "accuracy",
                ddof: int = 0, title: str = "cytotune experiments",
                methods: Optional[Sequence[str]] = None,
                backbones: Optional[Sequence[str]] = None,
                intervals: Optional[BootstrapSpec] = BootstrapSpec(),
                figure_metrics: Optional[Sequence[str]] = None) -> Report:
    """Write tables, figures, CSV files and one self-contained HTML page for a result store.

    ``metrics``: test metrics to report (accuracy, balanced_accuracy, macro_f1, auroc, ece,
    average_precision); the first is the headline (the "best" summary the page opens with).
    Default :data:`~.report_tables.DEFAULT_METRICS`: balanced accuracy, accuracy, macro F1.
    the learning rate is chosen on validation ``select_by`` (accuracy, as in the study), or for
    ``select_on: train-cv`` linear runs on their CV score (:func:`select_best`).
    ``sweeps``: restrict to these sweeps. ``sota``: data set -> state-of-the-art accuracy in %,
    drawn as a horizontal line on the fraction figures (no default; see the module docstring).
    Cells whose runs differ in more than seed and learning rate are split (module docstring);
    each group of split cells is logged as a warning and listed in ``Report.notes``.
    ``methods`` / ``backbones``: draw only these in the figures (tables keep everything); a
    name no run has is a ValueError listing the known ones, raised before anything is written.
    ``intervals``: how every cell's interval and the paired comparisons are drawn
    (:mod:`cytotune.experiments.report_stats`; None: mean±std only, no comparisons).
    ``figure_metrics``: the metrics drawn (default: the headline metric alone; tables cover
    every metric).
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in REPORT_METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; known: "
                         f"{', '.join(REPORT_METRICS)}")
    drawn_metrics = list(dict.fromkeys(figure_metrics or metrics[:1]))
    if any(m not in metrics for m in drawn_metrics):
        raise ValueError(f"figure metric(s) {', '.join(m for m in drawn_metrics if m not in metrics)}"
                         f" are not among the reported metrics ({', '.join(metrics)})")
    store = store_path if isinstance(store_path, ResultStore) else _open_existing(store_path)
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    full = store.records(full=True)
    failures = store.failures()
    if sweeps:
        full = full[full["sweep"].isin(list(sweeps))].reset_index(drop=True)
        failures = failures[failures["sweep"].isin(list(sweeps))].reset_index(drop=True)
    check_filters(full, methods, backbones)  # before any file is written
    full = add_run_choices(add_variants(full))
    notes = split_notes(full)
    for note in notes:
        log.warning(note)
    records = full.drop(columns=[c for c in _JSON_COLUMNS if c in full])

    selected = select_best(records, select_by)
    summary = summarize(selected, metrics, ddof=ddof)
    pairwise: dict[str, pd.DataFrame] = {}
    statistics: list[str] = []
    if intervals is not None and not summary.empty:
        chosen = full[full["run_id"].isin(set(selected["run_id"]))]
        outcomes = run_outcomes(chosen, store.predictions(chosen["run_id"]))
        summary = add_intervals(summary, selected, outcomes, intervals)
        summary["ci_level"] = intervals.level
        fingerprints = fingerprints_by_run(chosen)
        pairwise = pairwise_tables(summary, selected, outcomes, fingerprints, intervals,
                                   metrics, first_seen(records["dataset"]))
        statistics = statistics_notes(intervals, len(chosen), outcomes)
        for line in statistics:
            log.info(line)
    files: list[Path] = []

    runs = records.copy()
    runs["selected"] = runs["run_id"].isin(set(selected["run_id"])) if not runs.empty else []
    for name, frame in (("runs.csv", runs), ("selected.csv", selected), ("summary.csv", summary),
                        ("timings.csv", timing_summary(records)), ("failures.csv", failures)):
        display_shots(frame).to_csv(out / name, index=False)  # `all`, not an empty shots cell
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
            best[metric] = (best_summary(summary, pairwise[metric], metric, datasets_order)
                            if metric in pairwise else best_table(summary, metric, datasets_order))
            heading = (f"Best method per data set and training data: test "
                       f"{METRIC_LABELS.get(metric, metric)} (%), "
                       f"{cell_words(summary[summary['metric'] == metric])} "
                       f"(over every sweep, method and backbone)")
            stem = f"best__{slug(metric)}"
            best[metric].to_csv(out / f"{stem}.csv")
            text = markdown_table(best[metric], heading)
            (out / f"{stem}.md").write_text(text, encoding="utf-8")
            markdown.append(text)
            files.extend([out / f"{stem}.csv", out / f"{stem}.md"])
    backbones_order = first_seen(records["backbone"]) if not records.empty else []
    ood = out_of_domain_summary(selected, metrics, ddof=ddof)
    if not ood.empty:
        display_shots(ood).to_csv(out / "summary_out_of_domain.csv", index=False)
        files.append(out / "summary_out_of_domain.csv")
    compared = first_seen(summary["sweep"]) if not summary.empty else []
    # one layout per sweep (report_layout): methods x training sizes per data set and backbone,
    # a learning-curve table of a one-method sweep, Table 1 of a one-method, one-size sweep
    for sweep in compared:
        for metric in metrics:
            for made in sweep_tables(summary, ood, selected, sweep, metric, datasets_order,
                                     backbones_order):
                add_table(made.stem, made.table, made.heading)
    if pairwise:  # the headline metric's comparisons as tables; every metric's in paired.csv
        for dataset, stem, table, heading in paired_tables(pairwise[metrics[0]], metrics[0],
                                                           intervals):
            add_table(stem, table, heading)
    if pairwise:
        paired = pd.concat([f.assign(metric=m) for m, f in pairwise.items()], ignore_index=True)
        paired.to_csv(out / "paired.csv", index=False)
        files.append(out / "paired.csv")
    rankings = {sweep: ranking(summary, sweep, metrics[0]) for sweep in compared} \
        if intervals is not None else {}
    rankings = {sweep: r for sweep, r in rankings.items() if r is not None}
    for sweep, result in rankings.items():
        table, heading = ranking_table(result, sweep, metrics[0])
        add_table("__".join(slug(x) for x in ("ranking", sweep, metrics[0])), table, heading)
    budget_figures: list[list[Path]] = []
    # label-budget runs (report_budget), on the first reported metric of the test predictions
    budget_metric = next((m for m in metrics if m in COUNT_METRICS), None)
    if intervals is not None and not summary.empty and budget_metric is not None:
        _, budget_tables, budget_figures = budget_section(
            selected, full, summary, outcomes, budget_metric, intervals, out / "figures")
        for stem, table, heading in budget_tables:
            add_table(stem, table, heading)
    robustness_figures: list[list[Path]] = []
    if not selected.empty:  # a sweep's robustness phase (report_robustness)
        robustness_tables, robustness_figures = robustness_section(
            selected, store.robustness(selected["run_id"]), metrics[0],
            intervals or BootstrapSpec(), out / "figures")
        for stem, table, heading in robustness_tables:
            add_table(stem, table, heading)
    if statistics:
        markdown.insert(1, "".join(f"> {line}\n" for line in statistics))
    (out / "tables.md").write_text("\n".join(markdown), encoding="utf-8")
    files.append(out / "tables.md")

    # figures (report_figures): PNG for the page, SVG and the points' CSV beside it
    figures: list[Path] = []
    drawn = write_figures(figure_rows(summary, methods, backbones),
                          figure_rows(ood, methods, backbones), drawn_metrics,
                          out / "figures", class_sizes(full), sota, sota_label)
    drawn += [ranking_figure(result, sweep, metrics[0], out / "figures" /
                             f"ranking__{slug(sweep)}__{slug(metrics[0])}.png")
              for sweep, result in rankings.items()]
    drawn += budget_figures + robustness_figures
    for png, *beside in drawn:
        figures.append(png)
        files.extend(beside)

    page = html_page(title, store, records, failures, summary, selected, tables, titles, figures,
                     timing_summary(records), metrics, sota, notes, best, statistics)
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return Report(out_dir=out, html=html_path, summary=summary, selected=selected, tables=tables,
                  figures=figures, files=files + figures + [html_path], notes=notes,
                  titles=titles, best=best)


def _open_existing(path: str | Path) -> ResultStore:
    """The store, read-only: a report never creates, migrates or writes to it, and refuses a
    file that is not a cytotune store (one line naming it) instead of reporting nothing."""
    return ResultStore.open_read_only(path)
