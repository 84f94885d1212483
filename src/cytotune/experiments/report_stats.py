"""The report's statistics: an interval for every cell, paired comparisons of the settings
evaluated on the same data, the "best" summary that names a winner only when the data resolve
one, and a ranking across data sets or training sizes.

This module turns the store's rows into plain values (each chosen run's :class:`Outcome`,
per-seed metric values) and calls :mod:`cytotune.analysis`, which does the statistics. The
basis of every interval is written beside it: runs recorded with per-image predictions (stores
of schema 3 onwards) are resampled and paired by image; older runs by their test confusion matrix
(same intervals, pairing by seed only); metrics that need probabilities (AUROC, ECE) over seeds.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from cytotune.analysis import (COUNT_METRICS, BootstrapSpec, Outcome, cell_intervals, holm,
                               paired_intervals, seed_interval, wilcoxon_p)
from cytotune.analysis.significance import rank_methods
from cytotune.experiments.report_tables import (LOWER_IS_BETTER, METRIC_LABELS, ZERO_SHOT,
                                                first_seen, sample_key, sample_phrase)
from cytotune.experiments.report_variants import CELL, VARIANT

CI_COLUMNS = ("ci_low", "ci_high", "ci_basis")
RESOLVED, NOT_RESOLVED = "resolved", "not resolved"


def run_outcomes(full: pd.DataFrame, predictions: Mapping[str, Mapping[str, Any]]) \
        -> dict[str, Outcome]:
    """run id -> its test outcome: per image where the store kept predictions, else from the
    test confusion matrix in its metrics (single-label runs). An outcome is used only when it
    gives the run's recorded test accuracy on its recorded number of images (a run tested on
    held-out domains records in-domain metrics, while its predictions cover every test image):
    otherwise the next source is tried, and a run with none is left out (its cell's interval is
    then over seeds only)."""
    out: dict[str, Outcome] = {}
    for run_id, metrics_json in zip(full["run_id"], full.get("metrics_json", [])):
        test = (json.loads(metrics_json) if metrics_json else {}).get("test") or {}
        candidates = []
        kept = predictions.get(run_id)
        if kept is not None:
            candidates.append(lambda k=kept: Outcome(k["labels"], k["predicted"],
                                                     len(k["classes"]), tuple(k["images"])))
        if test.get("confusion_matrix"):
            candidates.append(lambda m=test["confusion_matrix"]: Outcome.from_confusion_matrix(m))
        for make in candidates:
            try:
                outcome = make()
            except ValueError:
                continue
            if _agrees(outcome, test):
                out[run_id] = outcome
                break
    return out


def _agrees(outcome: Outcome, test: Mapping[str, Any]) -> bool:
    accuracy, n = test.get("accuracy"), test.get("n")
    if accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy)):
        return False
    if n is not None and int(n) != outcome.n:
        return False
    return abs(float(outcome.correct().mean()) - float(accuracy)) < 1e-9


def fingerprints_by_run(full: pd.DataFrame) -> dict[str, Optional[str]]:
    """run id -> the fingerprint of its test images (None where not recorded): two runs are
    compared only on the same test images."""
    out = {}
    for run_id, metrics_json in zip(full["run_id"], full.get("metrics_json", [])):
        metrics = json.loads(metrics_json) if metrics_json else {}
        out[run_id] = (metrics.get("fingerprints") or {}).get("test_data")
    return out


def _cell_key(values: Sequence[Any]) -> str:
    return "|".join("" if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA
                    else str(v) for v in values)


def _groups(selected: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {_cell_key(key): group.sort_values("seed")
            for key, group in selected.groupby(CELL, dropna=False, sort=False)}


def _percent(interval: Any) -> tuple[float, float, float]:
    return interval.estimate * 100.0, interval.low * 100.0, interval.high * 100.0


def add_intervals(summary: pd.DataFrame, selected: pd.DataFrame,
                  outcomes: Mapping[str, Outcome], spec: BootstrapSpec) -> pd.DataFrame:
    """``summary`` with ``ci_low``, ``ci_high`` (percent) and ``ci_basis`` per row: the
    hierarchical bootstrap over seeds and test images for count metrics when every chosen run
    of the cell has an outcome (all of a cell's count metrics from the same draws), else the
    bootstrap over seeds."""
    out = summary.copy()
    out["ci_low"] = np.nan
    out["ci_high"] = np.nan
    out["ci_basis"] = pd.Series([""] * len(out), index=out.index, dtype=object)
    if out.empty:
        return out
    groups = _groups(selected)
    by_cell: dict[str, list[Any]] = {}
    for i, row in out.iterrows():
        by_cell.setdefault(_cell_key([row[c] for c in CELL]), []).append(i)
    for key, rows in by_cell.items():
        group = groups.get(key)
        if group is None:
            continue
        runs = [outcomes.get(r) for r in group["run_id"]]
        wanted = [out.at[i, "metric"] for i in rows]
        counted = [m for m in wanted if m in COUNT_METRICS]
        images = cell_intervals(runs, counted, spec, key=key) \
            if counted and all(r is not None for r in runs) else {}
        for i, metric in zip(rows, wanted):
            interval = images.get(metric) or seed_interval(
                group[f"test_{metric}"].astype(float).tolist(), spec, key=f"{key}|{metric}")
            _, low, high = _percent(interval)
            out.at[i, "ci_low"], out.at[i, "ci_high"] = low, high
            out.at[i, "ci_basis"] = interval.basis
    return out


def setting_name(row: Any, variant: str, several_sweeps: bool) -> str:
    """How a setting is named in the summary and the comparisons: method · backbone, the sweep
    when several are reported, the variant in brackets."""
    text = f"{row['method']} · {row['backbone']}"
    if several_sweeps:
        text += f" ({row['sweep']})"
    return f"{text} [{variant}]" if variant else text


@dataclass
class _Setting:
    """One setting of a (data set, training data) group: its name, sweep, chosen run and test
    value (percent) per seed and metric, and its mean per metric."""

    name: str
    sweep: str
    runs: dict[int, str]
    values: dict[str, dict[int, float]]
    means: dict[str, float]


def _settings(part: pd.DataFrame, groups: Mapping[str, pd.DataFrame], metrics: Sequence[str]) \
        -> dict[tuple, list[_Setting]]:
    """The summary's settings grouped by (data set, sample order, training data in words)."""
    several_sweeps = part["sweep"].nunique() > 1
    keys = [_cell_key(values) for values in part[CELL].itertuples(index=False, name=None)]
    mean_of = {(k, m): float(v) for k, m, v in zip(keys, part["metric"], part["mean"])}
    out: dict[tuple, list[_Setting]] = {}
    seen: set[str] = set()
    for key, (_, row) in zip(keys, part.iterrows()):
        if key in seen or key not in groups:
            continue
        seen.add(key)
        group = groups[key]
        variant = "" if pd.isna(row.get(VARIANT)) else str(row.get(VARIANT) or "")
        values = {m: {int(s): float(v) * 100.0 for s, v in
                      zip(group["seed"], group[f"test_{m}"].astype(float))} for m in metrics}
        means = {m: mean_of.get((key, m), math.nan) for m in metrics}
        sample = (row["dataset"], sample_key(row["method"], row["shots"], row["fraction"]),
                  sample_phrase(row["method"], row["shots"], row["fraction"]))
        out.setdefault(sample, []).append(_Setting(
            setting_name(row, variant, several_sweeps), str(row["sweep"]),
            {int(s): r for s, r in zip(group["seed"], group["run_id"])}, values, means))
    return out


def _pairs(settings: Sequence[_Setting], metrics: Sequence[str]) -> list[tuple[int, int]]:
    """Which pairs of a group are compared: every pair within one sweep (a designed
    comparison), and the best setting of each metric against every other (what the best-method
    summary needs), across sweeps too. Not every cross-sweep pair: their number grows with the
    square of the settings (a store of many sweeps would spend minutes on them)."""
    pairs = {(i, j) for i, j in combinations(range(len(settings)), 2)
             if settings[i].sweep == settings[j].sweep}
    for metric in metrics:
        ranked = [i for i in range(len(settings)) if not math.isnan(settings[i].means[metric])]
        if not ranked:
            continue
        lower = metric in LOWER_IS_BETTER
        best = min(ranked, key=lambda i: settings[i].means[metric] * (1 if lower else -1))
        pairs |= {tuple(sorted((best, j))) for j in ranked if j != best}
    return sorted(pairs)


PAIRWISE_COLUMNS = ["dataset", "training data", "better", "other", "better mean", "other mean",
                    "difference", "low", "high", "seeds", "per seed", "wilcoxon p", "holm p",
                    "verdict", "basis"]


def pairwise_tables(summary: pd.DataFrame, selected: pd.DataFrame,
                    outcomes: Mapping[str, Outcome], fingerprints: Mapping[str, Optional[str]],
                    spec: BootstrapSpec, metrics: Sequence[str],
                    datasets: Optional[Sequence[str]] = None) -> dict[str, pd.DataFrame]:
    """Per metric: pairs of settings evaluated on the same data set and training data (:func:
    `_pairs`), over the seeds both have, on the same test images (equal test fingerprints):
    the mean of each, the per-seed differences and their mean (the better first, so the mean is
    >= 0; for ECE lower is better), its paired bootstrap interval (all count metrics of a pair from the same
    draws), the Wilcoxon signed-rank p-value over seeds (>= 5 seeds) and its Holm adjustment
    over the comparisons of one data set and training data, and whether the interval excludes
    0 ("resolved")."""
    part = summary[summary["metric"].isin(list(metrics)) & summary["mean"].notna()]
    rows: dict[str, list[dict]] = {m: [] for m in metrics}
    if part.empty:
        return {m: pd.DataFrame(columns=PAIRWISE_COLUMNS) for m in metrics}
    groups = _groups(selected)
    order = list(datasets or first_seen(part["dataset"]))
    order += [d for d in first_seen(part["dataset"]) if d not in order]
    grouped = _settings(part, groups, metrics)
    for (dataset, _, phrase) in sorted(grouped, key=lambda k: (order.index(k[0]), k[1])):
        settings = grouped[(dataset, _, phrase)]
        table_rows: dict[str, list[dict]] = {m: [] for m in metrics}
        for i, j in _pairs(settings, metrics):
            a, b = settings[i], settings[j]
            common = sorted(s for s in set(a.runs) & set(b.runs)
                            if fingerprints.get(a.runs[s]) == fingerprints.get(b.runs[s]))
            if not common:
                continue
            runs_a = [outcomes.get(a.runs[s]) for s in common]
            runs_b = [outcomes.get(b.runs[s]) for s in common]
            key = f"{dataset}|{phrase}|{a.name}|{a.sweep}|{b.name}|{b.sweep}"
            counted = [m for m in metrics if m in COUNT_METRICS]
            images = paired_intervals(runs_a, runs_b, counted, spec, key=key) \
                if counted and all(r is not None for r in runs_a + runs_b) else {}
            for metric in metrics:
                diffs = [a.values[metric][s] - b.values[metric][s] for s in common]
                if any(math.isnan(d) for d in diffs):
                    continue
                interval = images.get(metric) or seed_interval(
                    [d / 100.0 for d in diffs], spec, key=f"{key}|{metric}")
                diff, low, high = _percent(interval)
                mean_a = float(np.mean([a.values[metric][s] for s in common]))
                mean_b = float(np.mean([b.values[metric][s] for s in common]))
                first, second = a.name, b.name
                if (diff > 0) if metric in LOWER_IS_BETTER else (diff < 0):
                    first, second, mean_a, mean_b = second, first, mean_b, mean_a
                    diff, low, high, diffs = -diff, -high, -low, [-d for d in diffs]
                table_rows[metric].append({
                    "dataset": dataset, "training data": phrase, "better": first,
                    "other": second, "better mean": mean_a, "other mean": mean_b,
                    "difference": diff, "low": low, "high": high, "seeds": len(common),
                    "per seed": " ".join(f"{s}:{d:+.2f}" for s, d in zip(common, diffs)),
                    "wilcoxon p": wilcoxon_p(diffs),
                    "verdict": RESOLVED if interval.excludes_zero else NOT_RESOLVED,
                    "basis": interval.basis})
        for metric, found in table_rows.items():
            found.sort(key=lambda r: -r["difference"])
            for row, adjusted in zip(found, holm([r["wilcoxon p"] for r in found])):
                row["holm p"] = adjusted
            rows[metric] += found
    return {m: pd.DataFrame(rows[m], columns=PAIRWISE_COLUMNS) for m in metrics}


def pairwise_table(summary: pd.DataFrame, selected: pd.DataFrame,
                   outcomes: Mapping[str, Outcome], fingerprints: Mapping[str, Optional[str]],
                   spec: BootstrapSpec, metric: str,
                   datasets: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """:func:`pairwise_tables` of one metric."""
    return pairwise_tables(summary, selected, outcomes, fingerprints, spec, [metric],
                           datasets)[metric]


def fmt_interval(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``mean [low, high]``; a missing interval (one seed, no outcome) shows the mean alone."""
    if mean is None or pd.isna(mean):
        return ""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def best_summary(summary: pd.DataFrame, pairwise: pd.DataFrame, metric: str,
                 datasets: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per data set and training data: the best setting only when the paired interval of its
    difference to the runner-up excludes 0; otherwise "no winner" and every setting whose
    difference to the best is not resolved ("tied within the interval"). An exact tie is never a
    win (its interval is [0, 0])."""
    part = summary[(summary["metric"] == metric) & summary["mean"].notna()]
    label = METRIC_LABELS.get(metric, metric)
    columns = ["verdict", "best", f"test {label} (%) [interval]", "seeds",
               "tied within the interval", "runner-up", "lead (points) [interval]"]
    index_names = ["dataset", "training data"]
    empty = pd.DataFrame(columns=columns, index=pd.MultiIndex.from_tuples([], names=index_names))
    if part.empty:
        return empty
    several_sweeps = part["sweep"].nunique() > 1
    lower = metric in LOWER_IS_BETTER
    samples: dict[tuple, list[tuple[str, Any]]] = {}
    for _, row in part.iterrows():
        variant = "" if pd.isna(row.get(VARIANT)) else str(row.get(VARIANT) or "")
        key = (row["dataset"], sample_key(row["method"], row["shots"], row["fraction"]),
               sample_phrase(row["method"], row["shots"], row["fraction"]))
        samples.setdefault(key, []).append((setting_name(row, variant, several_sweeps), row))
    pairs = {}
    for r in pairwise.itertuples(index=False):
        pairs[(r.dataset, r[1], r.better, r.other)] = r
    order = list(datasets or first_seen(part["dataset"]))
    order += [d for d in first_seen(part["dataset"]) if d not in order]
    rows, labels = [], []
    for key in sorted(samples, key=lambda k: (order.index(k[0]), k[1])):
        dataset, _, phrase = key
        ranked = sorted(samples[key], key=lambda nr: nr[1]["mean"] if lower else -nr[1]["mean"])
        best_name, best = ranked[0]
        cell = fmt_interval(best["mean"], best.get("ci_low"), best.get("ci_high"))
        if len(ranked) == 1:
            rows.append(["only one setting", best_name, cell, int(best["seeds"]), "", "", ""])
            labels.append((dataset, phrase))
            continue
        tied, lead = [], ""
        for name, _ in ranked[1:]:
            pair = pairs.get((dataset, phrase, best_name, name)) \
                or pairs.get((dataset, phrase, name, best_name))
            if pair is None or pair.verdict != RESOLVED or pair.better != best_name:
                tied.append(name)
        runner_name, runner = ranked[1]
        pair = pairs.get((dataset, phrase, best_name, runner_name)) \
            or pairs.get((dataset, phrase, runner_name, best_name))
        if pair is not None:
            sign = 1.0 if pair.better == best_name else -1.0
            low, high = sorted((sign * pair.low, sign * pair.high))
            lead = fmt_interval(sign * pair.difference, low, high)
        else:
            lead = (f"{abs(best['mean'] - runner['mean']):.2f} (not compared: no seeds in "
                    f"common on the same test images)")
        verdict = "no winner: tied" if tied else "best (resolved)"
        ties = ", ".join(tied)
        label = "equal highest mean" if runner["mean"] == best["mean"] else "highest mean"
        rows.append([verdict, best_name if not tied else f"{best_name} ({label})", cell,
                     int(best["seeds"]), ties, runner_name, lead])
        labels.append((dataset, phrase))
    return pd.DataFrame(rows, columns=columns,
                        index=pd.MultiIndex.from_tuples(labels, names=index_names))


def _p(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.3g}"


def paired_tables(pairwise: pd.DataFrame, metric: str, spec: Optional[BootstrapSpec]):
    """The page's tables of :func:`pairwise_table`: one per data set and training data (the
    family Holm adjusts over), rows ordered by the difference. Yields (dataset, stem, table,
    heading)."""
    from cytotune.experiments.report_tables import slug

    label = METRIC_LABELS.get(metric, metric)
    level = f"{spec.level:.0%} " if spec is not None else ""
    for (dataset, phrase), part in pairwise.groupby(["dataset", "training data"], sort=False):
        table = pd.DataFrame({
            "better": part["better"].to_numpy(), "other": part["other"].to_numpy(),
            "better (%)": [f"{v:.2f}" for v in part["better mean"]],
            "other (%)": [f"{v:.2f}" for v in part["other mean"]],
            f"difference [{level}interval]": [fmt_interval(d, lo, hi) for d, lo, hi in
                                              zip(part["difference"], part["low"], part["high"])],
            "seeds": part["seeds"].to_numpy(),
            "per seed (seed:difference)": part["per seed"].to_numpy(),
            "Wilcoxon p": [_p(v) for v in part["wilcoxon p"]],
            "Holm p": [_p(v) for v in part["holm p"]],
            "verdict": part["verdict"].to_numpy()},
            index=pd.RangeIndex(1, len(part) + 1, name="#"))
        bases = "; ".join(dict.fromkeys(part["basis"]))
        heading = (f"Paired comparisons, {dataset}, {phrase}: test {label} (%), better minus "
                   f"other over common seeds [{level}interval: {bases}]")
        stem = "__".join(slug(x) for x in ("paired", dataset, phrase, metric))
        yield dataset, stem, table, heading


def ranking_table(result: Any, sweep: str, metric: str) -> tuple[pd.DataFrame, str]:
    """Average ranks of a :func:`ranking` with each setting's Nemenyi p-value against the
    best-ranked one, and a heading that gives the Friedman test."""
    first = result.average_ranks.index[0]
    table = pd.DataFrame({"average rank": [f"{v:.2f}" for v in result.average_ranks],
                          f"Nemenyi p vs {first}": [
                              "" if name == first else _p(result.posthoc.loc[first, name])
                              for name in result.average_ranks.index]},
                         index=pd.Index(result.average_ranks.index, name="setting"))
    label = METRIC_LABELS.get(metric, metric)
    statistic = f"chi-square {result.friedman_statistic:.2f}, "
    heading = (f"Ranking, {sweep}: average rank by test {label} over {result.blocks} data set x "
               f"training-size blocks (1 = best); Friedman {statistic}p = "
               f"{_p(result.friedman_p)}")
    return table, heading


def statistics_notes(spec: BootstrapSpec, chosen: int, outcomes: Mapping[str, Outcome]) \
        -> list[str]:
    """What the report's intervals and tests are, in sentences for the page and tables.md."""
    per_image = sum(1 for o in outcomes.values() if o.image_ids is not None)
    by_matrix = len(outcomes) - per_image
    return [
        f"Intervals: {spec.describe()}, over two levels: the seeds (training images drawn, "
        f"learning rate chosen) and, within each, the test images. Of the {chosen} chosen "
        f"runs, {per_image} are resampled image by image from their kept predictions and "
        f"{by_matrix} from their test confusion matrix (the same interval; older stores keep "
        f"no per-image predictions); {chosen - len(outcomes)} have neither and, like AUROC, "
        f"ECE and average precision, get an interval over seeds only. With few seeds (5 is "
        f"common) a bootstrap over seeds is somewhat narrow.",
        "Paired comparisons: two settings on the same data set, training data, seeds and test "
        "images; the difference (better minus other) has an interval from the same bootstrap "
        "drawing the same seeds for both, and the same images where both runs kept per-image "
        "predictions (else images are drawn per run); 'resolved' when the interval excludes 0. "
        "Wilcoxon signed-rank over seeds where there are 5 or more (with 5 seeds the smallest "
        "possible p is 0.0625), Holm-adjusted over the comparisons of one table. The intervals "
        "are per comparison, not adjusted for how many a table holds: among 20 comparisons "
        "with no true difference, about one would exclude 0 by chance at 95 %; the Holm "
        "p-values are the multiplicity-controlled test.",
        "The best-method summary names a winner only when the paired interval of its difference "
        "to every other setting excludes 0; otherwise it lists the settings tied with it within "
        "the interval. An exact tie is never a win.",
        "Rankings (sweeps with 3 or more data set x training-size blocks): Friedman test and "
        "Nemenyi post-hoc (scikit-posthocs), drawn as a critical-difference diagram; blocks of "
        "one data set are not independent samples, so read such a ranking as a summary, not a "
        "test across data sets."]


def ranking_blocks(summary: pd.DataFrame, sweep: str, metric: str) -> Optional[pd.DataFrame]:
    """Scores for a ranking of one sweep's settings: one row per (data set, training data)
    where every setting has a mean, one column per setting (method · backbone [variant]);
    None when fewer than 3 such blocks or 3 settings (zero-shot runs are left out: they are
    one training size of their own)."""
    part = summary[(summary["sweep"] == sweep) & (summary["metric"] == metric)
                   & summary["mean"].notna() & (summary["method"] != ZERO_SHOT)]
    if part.empty:
        return None
    names = [setting_name(r, "" if pd.isna(r.get(VARIANT)) else str(r.get(VARIANT) or ""), False)
             for _, r in part.iterrows()]
    blocks = [f"{r['dataset']} · {sample_phrase(r['method'], r['shots'], r['fraction'])}"
              for _, r in part.iterrows()]
    table = pd.DataFrame({"block": blocks, "setting": names, "mean": part["mean"].to_numpy()})
    wide = table.pivot_table(index="block", columns="setting", values="mean", aggfunc="first",
                             sort=False).dropna()
    if len(wide) < 3 or wide.shape[1] < 3:
        return None
    return wide


def ranking(summary: pd.DataFrame, sweep: str, metric: str) -> Optional[Any]:
    """Friedman test and Nemenyi post-hoc of a sweep's settings over its (data set, training
    data) blocks (:func:`cytotune.analysis.rank_methods`), or None (too few blocks)."""
    wide = ranking_blocks(summary, sweep, metric)
    if wide is None or (wide.nunique(axis=1) == 1).all():  # every block a tie: nothing to rank
        return None
    return rank_methods(wide, lower_is_better=metric in LOWER_IS_BETTER)


def ranking_figure(result: Any, sweep: str, metric: str, png: Any) -> list[Any]:
    """Critical-difference diagram of a :func:`ranking` (scikit-posthocs): settings by average
    rank (1 = best); a bar joins those the Nemenyi test does not tell apart at 0.05. Written as
    PNG, SVG and the CSV of the ranks beside them; returns the paths, PNG first."""
    import scikit_posthocs as sp

    from cytotune.experiments.report_figure_parts import Drawn, pyplot, save

    plt = pyplot()
    height = 1.2 + 0.28 * len(result.average_ranks)
    fig, ax = plt.subplots(figsize=(8.0, height))
    sp.critical_difference_diagram(result.average_ranks, result.posthoc, ax=ax, alpha=0.05)
    label = METRIC_LABELS.get(metric, metric)
    ax.set_title(f"{sweep}: average rank by test {label} over {result.blocks} data set x "
                 f"training-size blocks (Friedman p = {result.friedman_p:.3g}; bars: Nemenyi "
                 f"p >= 0.05)", fontsize=9)
    drawn = Drawn(note="x: average rank (1 = best)")
    drawn.points = [{"sweep": sweep, "method": name, "metric": metric, "x": float(rank),
                     "mean": float(rank)} for name, rank in result.average_ranks.items()]
    fig.drawn = drawn
    return save(fig, png)
