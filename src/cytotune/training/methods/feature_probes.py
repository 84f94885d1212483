"""Cheap few-shot probes on the cached frozen features (the linear probe's feature bank).

- ``prototype``: SimpleShot CL2N (centre on the training mean, L2-normalise, nearest class mean by
  cosine); no hyper-parameter.
- ``knn``: cosine k-nearest neighbours with distance-weighted votes; k from a small grid.
- ``logreg``: multinomial L2 logistic regression (scikit-learn, lbfgs) on the features divided by
  their mean training L2 norm (one number per run, not a per-dimension standardisation: see
  :func:`logistic_head`); C from a log grid. The scale is folded into the weights, so the run
  keeps a plain linear head that ``predict`` and ``export`` use unchanged.

Grid values are chosen like the linear probe's best step: the task's validation score (accuracy),
ties broken by the lower validation loss, then by the first grid value (smaller k). ``logreg``
breaks ties in score toward the default C instead (:func:`c_tie_rank`, and why there).
With ``select_on: train-cv`` they are chosen by cross-validation on the training images instead
(:mod:`cytotune.training.methods.cv_selection`), falling back to validation where no fold plan
fits (1 shot per class); ``metrics.json`` records which (``hyperparameters.select_on``).
No optimiser steps are taken: ``--lr``, ``--steps`` and the like do not apply.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from cytotune.training.loop import EvalResult, FitHistory
from cytotune.training.methods.base import MethodContext, MethodResult
from cytotune.training.methods.cv_selection import (FoldPlan, fold_train_size, plan_folds,
                                                    select_by_cv, tie_key)
from cytotune.training.methods.linear import evaluate_head, freeze, frozen_features
from cytotune.training.methods.probe_heads import (PROTOTYPE_TEMPERATURE, CosineKNNHead,
                                                    prototype_head)
from cytotune.training.progress import observer

log = logging.getLogger(__name__)

K_GRID: tuple[int, ...] = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50)  # only k <= training images
C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 9))
LOGREG_MAX_ITER = 1000
C_DEFAULT = 1.0  # scikit-learn's default, the middle of C_GRID on the log scale


def c_tie_rank(c: float) -> float:
    """How far ``c`` lies from :data:`C_DEFAULT` on the log scale: among C values with the same
    validation (or CV) score, the nearest wins, and only then the lower loss.

    Why not the loss first: on 4-16 validation images many C values tie in accuracy, and the
    loss then measures confidence more than ranking. It runs to a grid edge either way: to the
    smallest C (near-uniform probabilities, loss about log K) when the few validation images are
    often wrong, as the standardised probe did (C = 1e-4 in 7 of its 25 MLCC runs), and to the
    largest when they are right. A tie says the data cannot tell those values apart, so the
    default is kept, as a prior; a value that scores better still wins, however far from it
    (docs/fewshot_probes.md, issue 31: before and after on MLCC)."""
    return round(abs(math.log10(float(c) / C_DEFAULT)), 6)


def probe_features(ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Train, val and test features of the run (from the feature cache), on the device."""
    if ctx.task.multi_label:
        raise ValueError(f"method {ctx.config.method!r} classifies one label per image; "
                         f"multi-label data needs method 'linear' or 'lora'")
    if ctx.config.head_init != "random":
        raise ValueError(f"method {ctx.config.method!r} builds its head from the training "
                         f"features; head_init={ctx.config.head_init!r} does not apply")
    freeze(ctx.backbone, ctx.device)
    fingerprint = ctx.backbone.weights_fingerprint()
    observer().phase("features", sum(len(s.labels) for s in (ctx.train, ctx.val, ctx.test)))
    out, seconds = [], 0.0
    for split in (ctx.train, ctx.val, ctx.test):
        feats, t = frozen_features(ctx, split, fingerprint)
        out.append(feats.to(ctx.device).float())
        seconds += t
    return out[0], out[1], out[2], seconds


def select_on_validation(ctx: MethodContext, name: str, grid: Sequence,
                         build: Callable[[object], nn.Module], f_val: torch.Tensor,
                         prefer: Optional[Callable[[object], float]] = None,
                         ) -> tuple[object, nn.Module, EvalResult, FitHistory]:
    """The grid value whose head scores best on validation (ties: :func:`tie_key`)."""
    history = FitHistory()
    best = None
    observer().phase("training", len(grid))
    for i, value in enumerate(grid, start=1):
        head = build(value)
        val = evaluate_head(ctx, head, f_val, ctx.val)
        history.evaluations.append({"step": i, name: value, "val_loss": val.loss,
                                    "val_accuracy": val.accuracy})
        log.info("%s=%g  val loss %.4f  val acc %.4f", name, value, val.loss, val.accuracy)
        key = tie_key(val.selection_score, val.loss, value, prefer)
        if best is None or key > best[3]:
            best = (value, head, val, key)
            history.best_val_accuracy, history.best_val_loss = val.selection_score, val.loss
        observer().step(i, len(grid))
    observer().phase("evaluation")
    assert best is not None
    return best[0], best[1], best[2], history


def choose(ctx: MethodContext, name: str, grid: Sequence, build: Callable[[object], nn.Module],
           fit_fold: Callable[[object, np.ndarray], nn.Module], f_train: torch.Tensor,
           f_val: torch.Tensor, *, allow_singletons: bool,
           cv_grid: Callable[[FoldPlan], list] = lambda plan: [],
           prefer: Optional[Callable[[object], float]] = None,
           ) -> tuple[object, nn.Module, EvalResult, FitHistory, dict]:
    """A grid value chosen as ``config.select_on`` says, its head on all training images, the
    head's validation result, the history and what to record: ``select_on`` (what was used), the
    folds, and on a fallback ``select_on_requested`` and ``select_on_fallback`` (the reason).
    ``prefer`` ranks values tied in score before the loss does (:func:`tie_key`)."""
    record: dict = {"select_on": "val", f"{name}_grid": list(grid)}
    if ctx.config.select_on == "train-cv":
        plan = plan_folds(ctx.train.labels.numpy(), ctx.config.seed,
                          allow_singletons=allow_singletons)
        if plan.folds:
            values = cv_grid(plan) or list(grid)
            value, history = select_by_cv(name, values, fit_fold, f_train, ctx.train.labels,
                                          plan, ctx.task, prefer=prefer)
            head = build(value)
            val = evaluate_head(ctx, head, f_val, ctx.val)
            history.best_val_accuracy, history.best_val_loss = val.selection_score, val.loss
            return value, head, val, history, {"select_on": "train-cv", "cv_scheme": plan.scheme,
                                               "cv_folds": len(plan.folds),
                                               f"{name}_grid": values}
        log.warning("%s: cross-validation on the training images is not possible (%s); %s is "
                    "chosen on validation instead", ctx.config.method, plan.reason, name)
        record.update(select_on_requested="train-cv", select_on_fallback=plan.reason)
    value, head, val, history = select_on_validation(ctx, name, grid, build, f_val, prefer)
    return value, head, val, history, record


def _rows(indices: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(indices).to(device)


def probe_result(ctx: MethodContext, head: nn.Module, val: EvalResult, f_test: torch.Tensor,
                 history: FitHistory, hyperparameters: dict, trained: int, tensors: dict,
                 timings: dict[str, float]) -> MethodResult:
    """A probe's MethodResult: its test evaluation, no backbone training, its head tensors."""
    return MethodResult(
        head=head, val=val, test=evaluate_head(ctx, head, f_test, ctx.test), history=history,
        trainable_parameters={"backbone": 0, "head": trained, "total": trained},
        tensors_to_save={"head": {k: v.detach().cpu().contiguous() for k, v in tensors.items()}},
        timings=timings, hyperparameters=hyperparameters)


def run_prototype(ctx: MethodContext) -> MethodResult:
    """SimpleShot CL2N nearest class mean; nothing to choose on validation."""
    f_train, f_val, f_test, t_feat = probe_features(ctx)
    start = time.perf_counter()
    head = prototype_head(f_train, ctx.train.labels.to(ctx.device), len(ctx.class_names),
                          missing_ok=ctx.config.budget is not None)
    fitted = time.perf_counter() - start
    val = evaluate_head(ctx, head, f_val, ctx.val)
    history = FitHistory(best_val_accuracy=val.selection_score, best_val_loss=val.loss)
    return probe_result(ctx, head, val, f_test, history, {"temperature": PROTOTYPE_TEMPERATURE},
                   0, head.state_dict(), {"feature_extraction_s": t_feat, "training_s": fitted})


def run_knn(ctx: MethodContext) -> MethodResult:
    """Cosine kNN with distance-weighted votes; k chosen from :data:`K_GRID` on validation or by
    cross-validation on the training images (``select_on``)."""
    f_train, f_val, f_test, t_feat = probe_features(ctx)
    y_train = ctx.train.labels.to(ctx.device)
    classes = len(ctx.class_names)
    start = time.perf_counter()
    k, head, val, history, record = choose(
        ctx, "k", [k for k in K_GRID if k <= len(y_train)],
        lambda k: CosineKNNHead(f_train, y_train, classes, int(k)),
        lambda k, tr: CosineKNNHead(f_train[_rows(tr, ctx.device)], y_train[_rows(tr, ctx.device)],
                                    classes, int(k)),
        f_train, f_val, allow_singletons=True,
        cv_grid=lambda plan: [k for k in K_GRID if k <= fold_train_size(plan)])
    log.info("knn: k=%d chosen on %s (grid %s)", k, record["select_on"], record["k_grid"])
    return probe_result(ctx, head, val, f_test, history, {"k": int(k), **record}, 0,
                   head.state_dict(), {"feature_extraction_s": t_feat,
                                       "training_s": time.perf_counter() - start})


def feature_scale(features: np.ndarray) -> float:
    """The mean L2 norm of the training ``features`` (1 where it is 0 or not finite)."""
    scale = float(np.linalg.norm(features, axis=1).mean()) if len(features) else 0.0
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def logistic_head(features: np.ndarray, labels: np.ndarray, num_classes: int, c: float,
                  seed: int) -> nn.Linear:
    """scikit-learn's L2 multinomial logistic regression on ``features / s``, ``s`` their mean
    training L2 norm (:func:`feature_scale`), as one ``nn.Linear`` on the raw features (``s``
    folded into the weight).

    Why one scale for all dimensions: a per-dimension standardisation estimates each dimension's
    spread from the training images, one per class at 1 shot, and blows up dimensions that
    barely vary among them into noise as loud as the informative ones (on MLCC the standardised
    probe scored 43 % balanced accuracy at 1 shot, the prototype probe 53 %). Dividing by the
    mean norm gives every run features of norm about 1, as the CL2N prototypes' L2
    normalisation does, so C means the same across backbones; unlike a per-image normalisation
    it is linear, so the head stays the plain linear head that ``predict`` and ``export`` (ONNX)
    use. A translation
    needs no handling: lbfgs does not penalise the intercept, so it absorbs any centring."""
    from sklearn.linear_model import LogisticRegression

    scale = feature_scale(features)
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=LOGREG_MAX_ITER, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(features / scale, labels)
    for w in caught:
        log.info("logreg C=%g: %s", c, w.message)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # two classes: one logit difference, split as -a/2, +a/2
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2,
                                                                      intercept[0] / 2])
    weight = np.zeros((num_classes, features.shape[1]))
    bias = np.full(num_classes, -1e4)  # a class without training images is never predicted
    weight[model.classes_] = coef / scale
    bias[model.classes_] = intercept
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return head.eval()


def run_logreg(ctx: MethodContext) -> MethodResult:
    """Logistic regression; C chosen from :data:`C_GRID` on validation or by cross-validation on
    the training images (``select_on``), ties in score going toward :data:`C_DEFAULT`."""
    f_train, f_val, f_test, t_feat = probe_features(ctx)
    x = f_train.cpu().double().numpy()
    y = ctx.train.labels.numpy()
    classes, seed = len(ctx.class_names), ctx.config.seed
    start = time.perf_counter()
    c, head, val, history, record = choose(
        ctx, "C", C_GRID,
        lambda c: logistic_head(x, y, classes, float(c), seed).to(ctx.device),
        lambda c, tr: logistic_head(x[tr], y[tr], classes, float(c), seed).to(ctx.device),
        f_train, f_val, allow_singletons=False, prefer=c_tie_rank)
    log.info("logreg: C=%g chosen on %s", c, record["select_on"])
    params = sum(p.numel() for p in head.parameters())
    return probe_result(ctx, head, val, f_test, history, {"C": float(c), **record},
                   params, head.state_dict(), {"feature_extraction_s": t_feat,
                                               "training_s": time.perf_counter() - start})
