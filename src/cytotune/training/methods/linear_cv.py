"""A linear probe scored by cross-validation on its training features (``select_on: train-cv``,
issue 19), a departure from the study's protocol.

The study keeps a linear run's best validation step and the report chooses the learning rate on
validation accuracy; at 1-2 shots that validation split holds 1-2 images per class. With
``train-cv`` a linear run instead:

- trains one head per fold of :func:`~cytotune.training.methods.cv_selection.plan_folds`
  (stratified, ``min(5, smallest class count)`` folds, shuffled with the run seed) on the other
  folds, at the run's learning rate and schedule (``optim.steps``, else ``linear_epochs`` epochs
  of the fold's images), from the run's initial head and batch seed, and scores it on the held-out
  fold; the run's CV score is the mean held-out accuracy and loss (``metrics["train_cv"]``), which
  the report uses to choose the learning rate;
- trains its final head on all training features for the fixed schedule and keeps the last step
  (no validation-based early stopping: validation is only reported).

The fold heads are plain :class:`~cytotune.training.heads.HeadProblem` s trained in the same
:func:`~cytotune.training.heads.fit_linear_heads` call as the run's own head, so a run alone and
a run in a sweep's group train them the same way. Like ``logreg``, a class with one training image
leaves no stratified fold (a fold without it has no example to fit): the run then falls back to
validation with the reason recorded; multi-label data has no stratified folds either.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from cytotune.training.heads import HeadProblem
from cytotune.training.loop import FitHistory, evaluate_logits
from cytotune.training.methods.base import MethodContext, initial_head
from cytotune.training.methods.cv_selection import FoldPlan, plan_folds

log = logging.getLogger(__name__)


@dataclass
class LinearCV:
    """A linear run's fold problems (none when it selects on validation) and what to record."""

    plan: FoldPlan
    problems: list[HeadProblem] = field(default_factory=list)
    hyperparameters: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.problems)


def linear_cv(ctx: MethodContext, problem: HeadProblem) -> LinearCV:
    """The fold problems of a run whose ``select_on`` is ``train-cv`` (``problem``: the run's own,
    whose validation-based best step is switched off here); else, or on a fallback, none."""
    if ctx.config.select_on != "train-cv":
        return LinearCV(FoldPlan([]), hyperparameters={"select_on": "val"})
    if ctx.task.multi_label:
        plan = FoldPlan([], reason="multi-label data has no stratified folds")
    else:
        plan = plan_folds(ctx.train.labels.numpy(), ctx.config.seed, allow_singletons=False)
    if not plan.folds:
        log.warning("linear: cross-validation on the training images is not possible (%s); the "
                    "best step is chosen on validation instead", plan.reason)
        return LinearCV(plan, hyperparameters={"select_on": "val", "select_on_requested":
                                               "train-cv", "select_on_fallback": plan.reason})
    problem.validate = None  # the fixed schedule: the last step is kept
    o = ctx.config.optim
    problems = []
    for tr, _ in plan.folds:
        rows = torch.from_numpy(tr).to(problem.features.device)
        problems.append(HeadProblem(
            head=initial_head(ctx, problem.features.shape[1]), features=problem.features[rows],
            targets=problem.targets[rows], validate=None, lr=problem.lr,
            weight_decay=problem.weight_decay, batch_size=problem.batch_size,
            steps=o.linear_steps(len(tr)), warmup_fraction=problem.warmup_fraction,
            val_every=problem.val_every, seed=problem.seed))
    return LinearCV(plan, problems, {"select_on": "train-cv", "cv_scheme": plan.scheme,
                                     "cv_folds": len(plan.folds)})


def cv_metrics(ctx: MethodContext, cv: LinearCV, f_train: torch.Tensor) -> dict:
    """The fold heads' mean held-out accuracy and loss (the task's selection score, as
    :func:`~cytotune.training.methods.cv_selection.select_by_cv`), for ``metrics["train_cv"]``."""
    scores, losses = [], []
    for (_, te), fold in zip(cv.plan.folds, cv.problems):
        held = torch.from_numpy(te).to(f_train.device)
        result = evaluate_logits(fold.head, lambda idx: f_train[held[idx.to(f_train.device)]],
                                 ctx.train.labels[torch.from_numpy(te)], 4096, ctx.task)
        scores.append(result.selection_score)
        losses.append(result.loss)
    out = {"accuracy": float(np.mean(scores)), "loss": float(np.mean(losses)),
           "folds": len(cv.problems), "scheme": cv.plan.scheme,
           "fold_accuracy": [float(s) for s in scores]}
    log.info("linear: train-cv accuracy %.4f  loss %.4f (%s)", out["accuracy"], out["loss"],
             cv.plan.scheme)
    return out


def fold_seconds(histories: list[FitHistory]) -> float:
    """The training time of a run's own head and its fold heads together."""
    return float(sum(h.seconds for h in histories))
