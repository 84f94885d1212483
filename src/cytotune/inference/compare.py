"""``cytotune compare RUN_A RUN_B``: two runs (or two prediction tables) on the same test images.

Each metric for both, the difference (A minus B) with a paired bootstrap interval over the test
images (:mod:`cytotune.analysis`), and McNemar's test on which images each gets right. Two runs
are compared only on the same images with the same labels; otherwise the comparison is refused,
naming the first image that differs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from cytotune.analysis import (COUNT_METRICS, BootstrapSpec, McNemar, Outcome, count_metric,
                               mcnemar, paired_interval)

PREDICTIONS_CSV = "predictions.csv"  # a run directory's per-image test predictions
REQUIRED = ("path", "label", "predicted")


class CompareError(ValueError):
    """Two prediction tables that cannot be compared (missing, unreadable, other images)."""


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` found: ``table`` (one row per metric: A, B, the difference and
    its interval, in percent), ``mcnemar`` on correctness, and what was compared."""

    table: pd.DataFrame
    mcnemar: McNemar
    images: int
    classes: list[str]
    spec: BootstrapSpec
    names: tuple[str, str]


def _table(source: str | Path) -> tuple[pd.DataFrame, Optional[list[str]], str]:
    """A run directory's predictions.csv (and its class names from metrics.json) or a CSV."""
    path = Path(source).expanduser()
    classes = None
    if path.is_dir():
        metrics = path / "metrics.json"
        if metrics.is_file():
            try:
                classes = list(json.loads(metrics.read_text(encoding="utf-8"))["class_names"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise CompareError(f"{metrics}: not a readable run metrics file ({err})")
        path = path / PREDICTIONS_CSV
    if not path.is_file():
        raise CompareError(f"{source}: no run directory with {PREDICTIONS_CSV} and no CSV file")
    try:
        frame = pd.read_csv(path, dtype={"path": str, "label": str, "predicted": str},
                            keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CompareError(f"{path}: not a readable CSV ({err})")
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        raise CompareError(f"{path}: no {', '.join(repr(c) for c in missing)} column (a "
                           f"prediction table needs {', '.join(REQUIRED)})")
    if frame.empty:
        raise CompareError(f"{path}: no predictions")
    if "|" in "".join(frame["label"]) or "|" in "".join(frame["predicted"]):
        raise CompareError(f"{path}: multi-label predictions ('|'-joined labels) are not "
                           f"compared here; compare their runs' metrics in a sweep report")
    duplicated = frame["path"][frame["path"].duplicated()]
    if not duplicated.empty:
        raise CompareError(f"{path}: image {duplicated.iloc[0]} appears twice")
    return frame, classes, str(path)


def _same_images(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> pd.DataFrame:
    """B's rows in A's order; refuses other images or other labels, naming the first."""
    labels_b = dict(zip(b["path"], b["label"]))
    for image, label in zip(a["path"], a["label"]):
        if image not in labels_b:
            raise CompareError(f"the test images differ: {image} is in {name_a} but not in "
                               f"{name_b}")
        if labels_b[image] != label:
            raise CompareError(f"the labels differ: {image} is {label!r} in {name_a} and "
                               f"{labels_b[image]!r} in {name_b}")
    if len(b) != len(a):
        extra = next(p for p in b["path"] if p not in set(a["path"]))
        raise CompareError(f"the test images differ: {extra} is in {name_b} but not in {name_a}")
    return b.set_index("path").loc[list(a["path"])].reset_index()


def compare_runs(run_a: str | Path, run_b: str | Path, spec: BootstrapSpec = BootstrapSpec(),
                 metrics: Sequence[str] = ("balanced_accuracy", "accuracy", "macro_f1")) \
        -> Comparison:
    """Compare two runs' test predictions (run directories or predictions CSVs) paired by
    image. Metrics: those computed from (label, prediction) pairs (:data:`COUNT_METRICS`)."""
    unknown = [m for m in metrics if m not in COUNT_METRICS]
    if unknown or not metrics:
        raise CompareError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; compare "
                           f"computes {', '.join(COUNT_METRICS)}")
    a, classes_a, name_a = _table(run_a)
    b, classes_b, name_b = _table(run_b)
    b = _same_images(a, b, name_a, name_b)
    classes = list(classes_a or classes_b or [])
    if classes_a and classes_b and classes_a != classes_b:
        raise CompareError(f"the class names differ: {classes_a} in {name_a}, {classes_b} in "
                           f"{name_b}")
    seen = set(a["label"]) | set(a["predicted"]) | set(b["predicted"])
    classes += sorted(seen - set(classes))
    index = {c: i for i, c in enumerate(classes)}
    ids = tuple(a["path"])
    labels = np.array([index[v] for v in a["label"]])
    outcome_a = Outcome(labels, np.array([index[v] for v in a["predicted"]]), len(classes), ids)
    outcome_b = Outcome(labels, np.array([index[v] for v in b["predicted"]]), len(classes), ids)
    rows = []
    for metric in metrics:
        diff = paired_interval([outcome_a], [outcome_b], metric, spec, key=metric)
        rows.append({"metric": metric,
                     "A": 100 * float(count_metric(outcome_a.confusion(), metric)),
                     "B": 100 * float(count_metric(outcome_b.confusion(), metric)),
                     "difference": 100 * diff.estimate, "low": 100 * diff.low,
                     "high": 100 * diff.high,
                     "verdict": "resolved" if diff.excludes_zero else "not resolved"})
    test = mcnemar(outcome_a.correct(), outcome_b.correct())
    return Comparison(pd.DataFrame(rows), test, len(ids), classes, spec, (name_a, name_b))
