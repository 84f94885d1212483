"""Classification metrics from predicted class probabilities.

Accuracy is the study's headline number; the others guard against what accuracy hides on
imbalanced cytology sets (balanced accuracy, macro F1, per-class recall), ranking quality (AUROC)
and over-confidence (expected calibration error). Library implementations are used throughout
(scikit-learn, torchmetrics) so the numbers match what reviewers compute themselves.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             confusion_matrix, f1_score, recall_score, roc_auc_score)
from torchmetrics.functional.classification import multiclass_calibration_error

HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           class_names: Sequence[str], ece_bins: int = 15) -> dict[str, Any]:
    """All metrics for one evaluation; ``probs`` is (N, C) with rows summing to one.

    AUROC is the macro mean of one-vs-rest AUROCs over the classes that have both positives and
    negatives in ``y_true``; classes without are listed in ``auroc_undefined_classes`` rather than
    silently counted (a 1-shot validation set often lacks them). Macro F1 and balanced accuracy
    average over the classes present in ``y_true`` or predicted, as scikit-learn does.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(class_names)
    if probs.shape != (len(y_true), num_classes):
        raise ValueError(f"probs has shape {probs.shape}, expected ({len(y_true)}, {num_classes})")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on an empty evaluation set")
    y_pred = probs.argmax(axis=1)
    labels = list(range(num_classes))

    per_class_auroc: dict[str, float] = {}
    undefined: list[str] = []
    for c, name in enumerate(class_names):
        positives = y_true == c
        if positives.all() or not positives.any():
            undefined.append(name)
            continue
        per_class_auroc[name] = float(roc_auc_score(positives, probs[:, c]))
    auroc = float(np.mean(list(per_class_auroc.values()))) if per_class_auroc else math.nan

    ece = float(multiclass_calibration_error(
        torch.from_numpy(probs).float(), torch.from_numpy(y_true), num_classes=num_classes,
        n_bins=ece_bins, norm="l1"))
    present = np.bincount(y_true, minlength=num_classes) > 0
    with warnings.catch_warnings():
        # small (few-shot) evaluation sets often miss classes; scikit-learn's warnings about it
        # are expected here and the affected classes are reported explicitly instead
        warnings.simplefilter("ignore", UserWarning)
        recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        balanced = float(balanced_accuracy_score(y_true, y_pred))
        macro_f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
        matrix = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "auroc": auroc,
        "auroc_per_class": per_class_auroc,
        "auroc_undefined_classes": undefined,
        "ece": ece,
        "per_class_recall": {name: float(r) for name, r, p in zip(class_names, recalls, present) if p},
        "confusion_matrix": matrix,
    }


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str],
                       threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of a multi-label evaluation; ``probs`` (N, L) are per-label sigmoid outputs.

    The headline is ``auroc``, the mean over labels of each label's AUROC (scikit-learn's
    ``roc_auc_score``), with ``average_precision`` (``average_precision_score``) beside it, both
    also per label. Labels whose evaluation set has only positives or only negatives have neither
    and are listed in ``auroc_undefined_labels`` instead of being counted. Thresholded at
    ``threshold``: label-wise ``accuracy``, ``balanced_accuracy`` (mean over labels),
    ``macro_f1`` and ``subset_accuracy`` (every label of an image right).
    """
    y = np.asarray(targets, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or p.shape != y.shape or y.shape[1] != len(label_names):
        raise ValueError(f"targets {y.shape} and probs {p.shape} must both be (N, "
                         f"{len(label_names)})")
    if len(y) == 0:
        raise ValueError("cannot compute metrics on an empty evaluation set")
    auroc: dict[str, float] = {}
    ap: dict[str, float] = {}
    undefined: list[str] = []
    balanced: list[float] = []
    predicted = (p >= threshold).astype(np.int64)
    for j, name in enumerate(label_names):
        if 0 < y[:, j].sum() < len(y):
            auroc[name] = float(roc_auc_score(y[:, j], p[:, j]))
            ap[name] = float(average_precision_score(y[:, j], p[:, j]))
            balanced.append(float(balanced_accuracy_score(y[:, j], predicted[:, j])))
        else:
            undefined.append(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        macro_f1 = float(f1_score(y, predicted, average="macro", zero_division=0))
    return {
        "n": int(len(y)),
        "auroc": float(np.mean(list(auroc.values()))) if auroc else math.nan,
        "auroc_per_label": auroc,
        "auroc_undefined_labels": undefined,
        "average_precision": float(np.mean(list(ap.values()))) if ap else math.nan,
        "average_precision_per_label": ap,
        "accuracy": float((predicted == y).mean()),
        "balanced_accuracy": float(np.mean(balanced)) if balanced else math.nan,
        "macro_f1": macro_f1,
        "subset_accuracy": float((predicted == y).all(1).mean()),
        "positives_per_label": {name: int(c) for name, c in zip(label_names, y.sum(0))},
    }


def coarse_class_map(fine_labels: np.ndarray, coarse_labels: np.ndarray, num_fine: int) -> np.ndarray:
    """For each fine class, the coarse class its images carry (the most common one; -1 if none).

    HiCervix's tree gives each level-3 class one parent; deriving the map from the labelled
    images keeps the reader free of a hand-copied tree.
    """
    mapping = np.full(num_fine, -1, dtype=np.int64)
    for c in range(num_fine):
        parents = coarse_labels[(fine_labels == c) & (coarse_labels >= 0)]
        if len(parents):
            mapping[c] = np.bincount(parents).argmax()
    return mapping


def coarse_level_metrics(y_true_coarse: np.ndarray, fine_probs: np.ndarray, fine_to_coarse: np.ndarray,
                         coarse_names: Sequence[str]) -> dict[str, Any]:
    """Metrics at a coarser level of a class tree: fine probabilities summed per parent class.

    Images without a label at that level (-1) are left out; so are fine classes without a parent.
    """
    keep = y_true_coarse >= 0
    probs = np.zeros((len(fine_probs), len(coarse_names)))
    for fine, coarse in enumerate(fine_to_coarse):
        if coarse >= 0:
            probs[:, coarse] += fine_probs[:, fine]
    totals = probs.sum(1, keepdims=True)
    probs = np.divide(probs, totals, out=np.full_like(probs, 1.0 / len(coarse_names)), where=totals > 0)
    return classification_metrics(y_true_coarse[keep], probs[keep], coarse_names)
