"""What the statistics need of one run's test: (label, prediction) pairs, keyed by image when known.

A run's test outcome is given either per image (a stable image id, the true class and the
predicted class) or, for stores written before per-image predictions were kept, as its test
confusion matrix. Accuracy, balanced accuracy and macro-F1 depend only on the multiset of
(label, prediction) pairs, so both forms give the same point values and the same image-bootstrap
distribution; only a per-image outcome can be *paired by image* with another run's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# metrics computed from (label, prediction) counts; the others (AUROC, ECE) need probabilities
COUNT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclass(frozen=True)
class Outcome:
    """One run's test predictions as class indices (``labels[i]`` true, ``predicted[i]``
    predicted) over ``n_classes`` classes; ``image_ids`` names image i when known (None for an
    outcome rebuilt from a confusion matrix, whose order means nothing)."""

    labels: np.ndarray
    predicted: np.ndarray
    n_classes: int
    image_ids: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        predicted = np.asarray(self.predicted, dtype=np.int64)
        if labels.shape != predicted.shape or labels.ndim != 1:
            raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} must be "
                             f"two vectors of one length")
        if len(labels) == 0:
            raise ValueError("a test outcome needs at least one image")
        top = max(int(labels.max()), int(predicted.max()))
        if min(int(labels.min()), int(predicted.min())) < 0 or top >= self.n_classes:
            raise ValueError(f"class indices must lie in 0..{self.n_classes - 1}")
        if self.image_ids is not None and len(self.image_ids) != len(labels):
            raise ValueError(f"{len(self.image_ids)} image ids for {len(labels)} predictions")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "predicted", predicted)

    @classmethod
    def from_confusion_matrix(cls, matrix: Sequence[Sequence[int]]) -> "Outcome":
        """The (label, prediction) pairs a confusion matrix counts (rows true, columns
        predicted, as scikit-learn writes it), without image ids."""
        counts = np.asarray(matrix, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or (counts < 0).any():
            raise ValueError(f"a confusion matrix must be square with counts >= 0, got shape "
                             f"{counts.shape}")
        rows, cols = np.nonzero(counts)
        repeats = counts[rows, cols]
        return cls(np.repeat(rows, repeats), np.repeat(cols, repeats), counts.shape[0])

    @property
    def n(self) -> int:
        return len(self.labels)

    def confusion(self) -> np.ndarray:
        """(C, C) counts, rows true class, columns predicted."""
        flat = np.bincount(self.labels * self.n_classes + self.predicted,
                           minlength=self.n_classes ** 2)
        return flat.reshape(self.n_classes, self.n_classes)

    def correct(self) -> np.ndarray:
        return self.labels == self.predicted


def count_metrics(counts: np.ndarray, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """Each of ``metrics`` (fractions in [0, 1]) from confusion counts of shape (..., C, C),
    vectorised over the leading axes (one value per resample), the sums they share computed
    once. Balanced accuracy and macro-F1 average over the classes present among the true labels
    (balanced accuracy) or among the true or predicted labels (macro-F1), as scikit-learn does
    when a class is missing (it warns there; a bootstrap resample that drops a rare class is the
    usual case)."""
    unknown = [m for m in metrics if m not in COUNT_METRICS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a count metric; known: {', '.join(COUNT_METRICS)}")
    counts = np.asarray(counts, dtype=np.float64)
    hits = np.diagonal(counts, axis1=-2, axis2=-1)
    true = counts.sum(-1)
    out: dict[str, np.ndarray] = {}
    if "accuracy" in metrics:
        out["accuracy"] = hits.sum(-1) / true.sum(-1)
    if "balanced_accuracy" in metrics:
        present = true > 0
        recall = np.divide(hits, true, out=np.zeros_like(hits), where=present)
        out["balanced_accuracy"] = recall.sum(-1) / present.sum(-1)
    if "macro_f1" in metrics:
        denominator = true + counts.sum(-2)
        seen = denominator > 0
        f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=seen)
        out["macro_f1"] = f1.sum(-1) / seen.sum(-1)
    return out


def count_metric(counts: np.ndarray, metric: str) -> np.ndarray:
    """:func:`count_metrics` of one metric."""
    return count_metrics(counts, [metric])[metric]
