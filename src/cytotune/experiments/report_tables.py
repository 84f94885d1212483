"""Selection, summaries and tables of a report (see :mod:`cytotune.experiments.report`).

Every function here groups by setting **and variant** (:mod:`.report_variants`): runs whose
configurations differ in more than seed and learning rate are never pooled, never compete in one
learning-rate choice, and get rows of their own, labelled in a ``setting`` column/index level
that appears only when a table holds variants.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from cytotune.experiments.report_variants import CELL, VARIANT, add_variants

REPORT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "average_precision")
# what `cytotune report` reports unless told: balanced accuracy first (the headline: the "best"
# summary, the page's opening table), because cytology classes are imbalanced (MLCC is ~63 %
# one class), then plain accuracy (the reference study's metric) and macro F1
DEFAULT_METRICS = ("balanced_accuracy", "accuracy", "macro_f1")
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
                 "macro_f1": "macro F1", "auroc": "AUROC", "ece": "ECE",
                 "average_precision": "average precision"}
ZERO_SHOT = "zero-shot"  # drawn as the 0-shot point of every shots figure of its sweep
LOWER_IS_BETTER = frozenset({"ece"})  # metrics where the best method has the lowest value
# metrics with a chance level: 100/C for (balanced) accuracy, 50 for AUROC (single-label data)
CHANCE_METRICS = ("accuracy", "balanced_accuracy", "auroc")
SETTING_LEVEL = "setting"  # the table index level / column naming a variant


# ---- selection ------------------------------------------------------------------------------
HYPERPARAMETER_PREFIX = "hp_"  # runs.csv columns of what a run chose (metrics' hyperparameters)
CV_SCORE, CV_LOSS = "train_cv_accuracy", "train_cv_loss"  # a train-cv linear run's CV score
CHOSEN_ON = "lr_chosen_on"  # selected.csv: "val" or "train-cv", what chose the learning rate


def add_run_choices(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` (with ``metrics_json``) plus what each run chose and how: ``hp_<name>`` for
    every scalar entry of its ``hyperparameters`` (knn's ``k``, logreg's ``C``, Tip-Adapter's
    ``alpha``/``beta``, ``select_on`` used, ``select_on_fallback`` ...; the grids are left out)
    and a train-cv linear run's CV score (``train_cv_accuracy``, ``train_cv_loss``). Columns
    appear only where some run has them; records without ``metrics_json`` are returned as they
    are."""
    if "metrics_json" not in records or records.empty:
        return records
    frame = records.copy()
    metrics = [json.loads(m) if isinstance(m, str) else {} for m in frame["metrics_json"]]
    chosen = [m.get("hyperparameters") or {} for m in metrics]
    names = list(dict.fromkeys(k for h in chosen for k, v in h.items()
                               if not isinstance(v, (list, dict))))
    for name in names:
        frame[HYPERPARAMETER_PREFIX + name] = [h.get(name) for h in chosen]
    cv = [m.get("train_cv") or {} for m in metrics]
    if any(cv):
        frame[CV_SCORE] = pd.Series([c.get("accuracy") for c in cv], dtype=object).astype(float)
        frame[CV_LOSS] = pd.Series([c.get("loss") for c in cv], dtype=object).astype(float)
    return frame


def select_best(records: pd.DataFrame, select_by: str = "accuracy") -> pd.DataFrame:
    """The chosen run of every (setting, variant, seed): best validation ``select_by`` (higher is
    better), ties broken by lower validation loss (when recorded), then by the smaller learning
    rate. ``records`` need ``config_json`` (``ResultStore.records(full=True)``) or a ``variant``
    column, so runs of different configurations are never chosen among.

    Runs trained with ``select_on: train-cv`` (linear) carry a CV score on their training images
    (``train_cv_accuracy``, :func:`add_run_choices`): where every run of a (setting, variant,
    seed) has one, that score and its loss choose instead, whatever ``select_by`` says (the CV
    score is accuracy); a seed whose runs fell back to validation (1 shot per class) is chosen on
    validation. ``lr_chosen_on`` says which."""
    if records.empty:
        out = records.copy()
        if VARIANT not in out:
            out[VARIANT] = pd.Series(dtype=object)
        return out
    column = f"val_{select_by}"
    if column not in records:
        raise ValueError(f"records have no {column} column")
    frame = add_run_choices(add_variants(records)).copy()
    frame["_score"] = frame[column].astype(float)
    frame["_loss"] = frame["val_loss"].astype(float) if "val_loss" in frame else np.nan
    frame[CHOSEN_ON] = "val"
    if CV_SCORE in frame:
        on_cv = (frame.assign(_cv=frame[CV_SCORE].notna())
                 .groupby(CELL + ["seed"], dropna=False, sort=False)["_cv"].transform("all"))
        frame.loc[on_cv, "_score"] = frame.loc[on_cv, CV_SCORE].astype(float)
        frame.loc[on_cv, "_loss"] = frame.loc[on_cv, CV_LOSS].astype(float)
        frame.loc[on_cv, CHOSEN_ON] = "train-cv"
    ordered = frame.sort_values(["_score", "_loss", "lr"], ascending=[False, True, True],
                                na_position="last", kind="mergesort")
    best = ordered.groupby(CELL + ["seed"], dropna=False, sort=False).head(1)
    best = best.drop(columns=["_score", "_loss"])
    return best.sort_index().reset_index(drop=True)


def summarize(selected: pd.DataFrame, metrics: Sequence[str] = ("accuracy",),
              ddof: int = 0) -> pd.DataFrame:
    """Mean and std over seeds (in percent) of the chosen runs' test metrics, per setting and
    variant (``selected`` from :func:`select_best`)."""
    columns = CELL + ["metric", "mean", "std", "seeds", "lrs"]
    if selected.empty:
        return pd.DataFrame(columns=columns)
    if VARIANT not in selected:
        raise ValueError("selected runs have no 'variant' column: choose them with select_best, "
                         "which keeps runs of different settings apart")
    rows = []
    for key, group in selected.groupby(CELL, dropna=False, sort=False):
        for metric in metrics:
            values = group[f"test_{metric}"].astype(float).dropna().to_numpy() * 100.0
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=ddof)) if len(values) > ddof else (0.0 if len(values) else math.nan)
            lrs = ",".join(f"{lr:g}" for lr in group.sort_values("seed")["lr"])
            rows.append({**dict(zip(CELL, key)), "metric": metric, "mean": mean, "std": std,
                         "seeds": int(len(values)), "lrs": lrs})
    frame = pd.DataFrame(rows, columns=columns)
    frame["shots"] = frame["shots"].astype("Int64")
    frame["fraction"] = frame["fraction"].astype(float)
    return frame


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


def _agreed_per_dataset(records: pd.DataFrame, read: Callable[[list], Any]) -> dict[str, Any]:
    """Data set -> ``read(test confusion matrix)`` where every single-label run of the data set
    gives the same value; a data set with disagreeing runs, or multi-label runs, is left out."""
    if records.empty or "metrics_json" not in records:
        return {}
    seen: dict[str, set] = {}
    for dataset, text in zip(records["dataset"], records["metrics_json"]):
        try:
            metrics = json.loads(text) if isinstance(text, str) else {}
        except ValueError:
            continue
        matrix = (metrics.get("test") or {}).get("confusion_matrix")
        if metrics.get("task", "single_label") != "single_label" or not matrix:
            seen.setdefault(dataset, set()).add(None)
            continue
        seen.setdefault(dataset, set()).add(read(matrix))
    return {d: next(iter(s)) for d, s in seen.items() if len(s) == 1 and None not in s}


def class_sizes(records: pd.DataFrame) -> dict[str, tuple[int, ...]]:
    """Data set -> test images per class, the row sums of the runs' test confusion matrices
    (single-label runs only). A data set whose runs disagree (other test splits) or that is
    multi-label is left out: its baselines would be a guess."""
    sizes = _agreed_per_dataset(records, lambda m: tuple(int(sum(row)) for row in m))
    return {d: s for d, s in sizes.items() if len(s) > 1 and sum(s) > 0}


def class_counts(records: pd.DataFrame) -> dict[str, int]:
    """Data set -> number of classes, read off the runs' test confusion matrices (single-label
    runs only; a data set whose runs disagree, or that is multi-label, is left out)."""
    counts = _agreed_per_dataset(records, len)
    return {d: n for d, n in counts.items() if n > 1}


def chance_level(metric: str, classes: Optional[int]) -> Optional[float]:
    """The chance level of ``metric`` in percent on a data set of ``classes`` classes: 100/C for
    accuracy and balanced accuracy (guessing uniformly), 50 for AUROC; None otherwise."""
    if not classes or classes < 2 or metric not in CHANCE_METRICS:
        return None
    return 50.0 if metric == "auroc" else 100.0 / classes


# ---- labels -----------------------------------------------------------------------------------
def sample_label(shots: Any, fraction: Any) -> str:
    if shots is not None and not pd.isna(shots):
        return f"{int(shots)}shot"
    if fraction is not None and not pd.isna(fraction):
        return f"frac{float(fraction):g}"
    return "all"


def shots_words(shots: Any) -> str:
    """``1 shot``, ``4 shots``: a count of images per class, singular where it is one."""
    n = int(shots)
    return f"{n} shot" if n == 1 else f"{n} shots"


def sample_words(sample: str) -> str:
    """A sample label (:func:`sample_label`) for a person: ``1 shot per class``, ``4 shots per
    class``, ``10% of the training data``, ``all training data``."""
    if sample == "all":
        return "all training data"
    if sample.endswith("shot"):
        return f"{shots_words(sample[:-4])} per class"
    return f"{sample[4:]}% of the training data"


def first_seen(values: pd.Series | Sequence) -> list:
    return list(dict.fromkeys(values.tolist() if hasattr(values, "tolist") else values))


def fmt_cell(mean: float, std: float, low: float = math.nan, high: float = math.nan) -> str:
    """A table cell: ``mean [low, high]`` when the cell has an interval (both ends known), else
    ``mean±std`` over seeds; "" when there is no mean."""
    if mean is None or pd.isna(mean):
        return ""
    if low is not None and high is not None and not pd.isna(low) and not pd.isna(high):
        return f"{mean:.2f} [{low:.2f}, {high:.2f}]"
    return f"{mean:.2f}±{0.0 if std is None or pd.isna(std) else std:.2f}"


def has_intervals(frame: pd.DataFrame) -> bool:
    """Whether summary rows carry intervals (``ci_low``, ``ci_high``, some of them known)."""
    return ("ci_low" in frame and "ci_high" in frame
            and bool((frame["ci_low"].notna() & frame["ci_high"].notna()).any()))


def display_shots(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` for a file or the page: ``shots`` says ``all`` for runs on all training data
    and ``0`` for zero-shot runs instead of a missing value (pandas writes ``<NA>``); the frame
    in memory keeps the numbers."""
    if frame.empty or "shots" not in frame:
        return frame
    out = frame.copy()
    shots = out["shots"]
    fraction = out["fraction"] if "fraction" in out else pd.Series(math.nan, index=out.index)
    zero = (out["method"] == ZERO_SHOT) if "method" in out else pd.Series(False, index=out.index)
    text = pd.Series([str(int(v)) if not pd.isna(v) else "" for v in shots], index=out.index,
                     dtype=object)
    text[shots.isna() & fraction.isna() & ~zero] = "all"
    text[shots.isna() & zero] = "0"
    out["shots"] = text
    if "fraction" in out:
        out["fraction"] = pd.to_numeric(out["fraction"], errors="coerce")
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def same_value(column: pd.Series, value: Any) -> pd.Series:
    """``column == value`` where a missing value equals a missing value."""
    if value is None or pd.isna(value):
        return column.isna()
    return column == value


def has_variants(frame: pd.DataFrame) -> bool:
    return VARIANT in frame and bool((frame[VARIANT].fillna("") != "").any())


# ---- tables ----------------------------------------------------------------------------------
def sample_key(method: Any, shots: Any, fraction: Any) -> tuple[int, float]:
    """Order of samples in the summary: no training images (zero-shot), shots ascending,
    fractions ascending, all training data."""
    if method == ZERO_SHOT:
        return (0, 0.0)
    if shots is not None and not pd.isna(shots):
        return (1, float(shots))
    if fraction is not None and not pd.isna(fraction):
        return (2, float(fraction))
    return (3, 0.0)


def sample_phrase(method: Any, shots: Any, fraction: Any) -> str:
    """The training data of a setting in words (``1 shot per class``, ``no training images``)."""
    if method == ZERO_SHOT:
        return "no training images"
    return sample_words(sample_label(shots, fraction))


def _cell_values(row: Any) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) of a summary row (a named tuple); NaN where absent."""
    return (row.mean, row.std, getattr(row, "ci_low", math.nan), getattr(row, "ci_high", math.nan))


def best_table(summary: pd.DataFrame, metric: str = "accuracy",
               datasets: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """What a reader wants first: per data set and training data (zero-shot, each number of
    shots, each fraction, all data), the best method and backbone over every sweep, its test
    ``metric`` (``mean [low, high]`` where the summary has intervals, else mean±std over seeds),
    the number of seeds, and the runner-up with its own cell and the lead in points. Highest
    mean wins (lowest for ECE); each variant competes as a setting of its own and is named in
    brackets."""
    part = summary[(summary["metric"] == metric) & summary["mean"].notna()]
    label = METRIC_LABELS.get(metric, metric)
    columns = ["best", f"test {label} (%)", "seeds", "runner-up", f"runner-up {label} (%)",
               "lead (points)"]
    index_names = ["dataset", "training data"]
    if part.empty:
        return pd.DataFrame(columns=columns,
                            index=pd.MultiIndex.from_tuples([], names=index_names))
    several_sweeps = part["sweep"].nunique() > 1
    variants = part[VARIANT].fillna("") if VARIANT in part else pd.Series("", index=part.index)

    def name(r: Any, variant: str) -> str:
        text = f"{r.method} · {r.backbone}"
        if several_sweeps:
            text += f" ({r.sweep})"
        return f"{text} [{variant}]" if variant else text

    lower = metric in LOWER_IS_BETTER
    order = list(datasets or first_seen(part["dataset"]))
    order += [d for d in first_seen(part["dataset"]) if d not in order]
    groups: dict[tuple, list[tuple[Any, str]]] = {}
    for r, variant in zip(part.itertuples(), variants):
        key = (r.dataset, sample_key(r.method, r.shots, r.fraction))
        groups.setdefault(key, []).append((r, variant))
    rows, labels = [], []
    for key in sorted(groups, key=lambda k: (order.index(k[0]), k[1])):
        ranked = sorted(groups[key], key=lambda rv: rv[0].mean if lower else -rv[0].mean)
        (best, best_variant), rest = ranked[0], ranked[1:]
        row = [name(best, best_variant), fmt_cell(*_cell_values(best)), int(best.seeds)]
        if rest:
            second, second_variant = rest[0]
            lead = (second.mean - best.mean) if lower else (best.mean - second.mean)
            row += [name(second, second_variant), fmt_cell(*_cell_values(second)),
                    f"{lead:.2f}"]
        else:
            row += ["", "", ""]
        rows.append(row)
        labels.append((best.dataset, sample_phrase(best.method, best.shots, best.fraction)))
    return pd.DataFrame(rows, columns=columns,
                        index=pd.MultiIndex.from_tuples(labels, names=index_names))


def markdown_table(table: pd.DataFrame, title: str) -> str:
    """``table`` as a Markdown section; every index level is a column of its own."""
    names = [str(n) if n is not None else "" for n in table.index.names]
    header = [*names, *map(str, table.columns)]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * len(names) + ["---:"] * len(table.columns)) + " |"]
    for index, row in table.iterrows():
        keys = list(index) if isinstance(index, tuple) else [index]
        lines.append("| " + " | ".join([*(str(k) for k in keys),
                                         *(str(v) for v in row.tolist())]) + " |")
    return "\n".join(lines) + "\n"
