"""Choosing a probe's hyper-parameter by cross-validation on the training images
(``select_on: train-cv``, issue 19), a departure from the study's protocol.

At 1-2 shots the validation split holds 1-2 images per class, so a choice made on it is close to
a coin toss; cross-validation scores every grid value on all training images instead.

Folds (:func:`plan_folds`):

- every class present with >= 2 images: stratified k-fold (shuffled with the run seed),
  ``n_splits = min(5, smallest class count)``, so every training fold holds every class;
- some class with 1 image: ``knn`` uses leave-one-out over the images whose class keeps another
  training image (a held-out singleton is misclassified for every k, so it would only add the same
  constant to every score); ``logreg`` cannot (a fold without a class's only image leaves no
  example of it, and the fitted model's missing class would dominate the loss), so it falls back
  to validation with the reason recorded. At 1 shot per class both fall back.

A grid value's CV score is the mean over folds of the task's selection score (accuracy), as in
scikit-learn's ``GridSearchCV``; ties go to the lower mean held-out loss, then the first value,
unless the caller ranks tied values first (``prefer``: logreg's C goes toward the default).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from cytotune.training.loop import FitHistory, evaluate_logits
from cytotune.training.progress import observer
from cytotune.training.task import Task

log = logging.getLogger(__name__)

MAX_FOLDS = 5

Fold = tuple[np.ndarray, np.ndarray]  # (training indices, held-out indices)


@dataclass
class FoldPlan:
    """The folds to cross-validate on, or why there are none (``folds`` empty, ``reason`` set)."""

    folds: list[Fold]
    scheme: str = ""
    reason: str = ""


def plan_folds(labels: np.ndarray, seed: int, *, allow_singletons: bool) -> FoldPlan:
    """Folds over training ``labels`` (see the module docstring); ``allow_singletons``: leave-one-
    out may keep a class with one image in every training fold (knn), never hold it out."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        return FoldPlan([], reason="the training images hold fewer than two classes")
    smallest = int(counts.min())
    if smallest >= 2:
        n = min(MAX_FOLDS, smallest)
        splitter = StratifiedKFold(n_splits=n, shuffle=True, random_state=seed)
        folds = [(tr, te) for tr, te in splitter.split(np.zeros(len(labels)), labels)]
        return FoldPlan(folds, scheme=f"stratified {n}-fold")
    singles = [int(c) for c in classes[counts == 1]]
    if not allow_singletons:
        return FoldPlan([], reason=f"class(es) {singles} have 1 training image: a fold holding it "
                                   f"out leaves no example of that class to fit")
    held = np.flatnonzero(~np.isin(labels, classes[counts == 1]))
    if len(held) == 0:
        return FoldPlan([], reason="every class has 1 training image: a held-out image's class "
                                   "has no training example left, so every value scores the same")
    everything = np.arange(len(labels))
    folds = [(np.delete(everything, i), np.array([i])) for i in held]
    return FoldPlan(folds, scheme=f"leave-one-out over the {len(held)} images of classes with "
                                  f">= 2 images")


def fold_train_size(plan: FoldPlan) -> int:
    """The smallest training fold (knn's k may not exceed it)."""
    return min(len(tr) for tr, _ in plan.folds)


def tie_key(score: float, loss: float, value: object,
            prefer: Optional[Callable[[object], float]]) -> tuple[float, float, float]:
    """What "better" means for a grid value (larger is better): the score (rounded, so values
    equal up to float noise tie), then the smaller ``prefer(value)`` if given, then the lower
    loss; a full tie keeps the earlier value."""
    return (round(score, 9), -prefer(value) if prefer is not None else 0.0, -loss)


def select_by_cv(name: str, grid: Sequence, fit: Callable[[object, np.ndarray], nn.Module],
                 features: torch.Tensor, labels: torch.Tensor, plan: FoldPlan,
                 task: Task, prefer: Optional[Callable[[object], float]] = None
                 ) -> tuple[object, FitHistory]:
    """The grid value with the best mean held-out score over ``plan``'s folds (ties: the smaller
    ``prefer(value)`` if given, then the lower mean loss, then first: :func:`tie_key`);
    ``fit(value, train_indices)`` builds a head on those training images.
    The history lists every value's ``cv_score`` and ``cv_loss``."""
    history = FitHistory()
    best: Optional[tuple[object, tuple[float, float, float]]] = None
    observer().phase("training", len(grid))
    for i, value in enumerate(grid, start=1):
        scores, losses = [], []
        for tr, te in plan.folds:
            head = fit(value, tr)
            held = torch.from_numpy(te).to(features.device)
            result = evaluate_logits(head, lambda idx: features[held[idx.to(features.device)]],
                                     labels[torch.from_numpy(te)], 4096, task)
            scores.append(result.selection_score)
            losses.append(result.loss)
        score, loss = float(np.mean(scores)), float(np.mean(losses))
        history.evaluations.append({"step": i, name: value, "cv_score": score, "cv_loss": loss})
        log.info("%s=%g  cv loss %.4f  cv score %.4f (%s)", name, value, loss, score, plan.scheme)
        key = tie_key(score, loss, value, prefer)
        if best is None or key > best[1]:
            best = (value, key)
        observer().step(i, len(grid))
    observer().phase("evaluation")
    assert best is not None
    return best[0], history
