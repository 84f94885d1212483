"""Linear probe: a frozen backbone's cached clean features and a linear head trained with AdamW.

One run is a group of one for :func:`cytotune.training.heads.fit_linear_heads`; a sweep's probes
on one backbone and data set (seeds x learning rates x sample sizes) are one group
(:mod:`cytotune.training.group`), sharing one feature extraction and one batched training loop.
With ``select_on: train-cv`` a run's fold heads join that loop (:mod:`.linear_cv`).
"""
from __future__ import annotations

import logging

import torch

from cytotune.training.config import OptimConfig
from cytotune.training.heads import HeadProblem, fit_linear_heads
from cytotune.training.loop import EvalResult, FitHistory, evaluate_logits
from cytotune.training.methods.base import (MethodContext, MethodResult, SplitTensors,
                                            initial_head)
from cytotune.training.methods.linear_cv import LinearCV, cv_metrics, fold_seconds, linear_cv
from cytotune.training.progress import observer

log = logging.getLogger(__name__)


def frozen_features(ctx: MethodContext, split: SplitTensors,
                    weights_fingerprint: str) -> tuple[torch.Tensor, float]:
    """Clean features of a split's images from the feature cache (computed on a miss);
    ``weights_fingerprint``: the backbone's, computed once by the caller (it reads every weight)."""
    feats, seconds, hit = ctx.feature_cache.features(ctx.backbone, weights_fingerprint,
                                                     split.pixels, split.images_key, ctx.device,
                                                     ctx.config.precision, split.image_keys)
    log.info("features for %d images: %s", len(split.labels),
             "cache hit" if hit else f"extracted in {seconds:.1f}s")
    return feats, seconds


def freeze(backbone: torch.nn.Module, device: torch.device) -> None:
    backbone.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)


# (steps, linear_epochs, epochs) already warned about on the console in this process
_WARNED: set[tuple] = set()


def warn_unused_length(optim: OptimConfig) -> None:
    """Say which length option a linear probe ignores (see OptimConfig: ``steps`` wins over
    ``linear_epochs``; ``epochs`` is for LoRA and full fine-tuning). Logged at WARNING once per
    process and setting (a sweep would repeat it per run), at INFO into every later run's log."""
    unused = []
    if optim.steps is not None and optim.linear_epochs is not None:
        unused.append(f"optim.linear_epochs={optim.linear_epochs} is not used: optim.steps="
                      f"{optim.steps} sets the linear probe's length (steps win for every "
                      f"method); drop one of them")
    if optim.epochs is not None:
        unused.append(f"optim.epochs={optim.epochs:g} is not used by a linear probe (its length "
                      f"is optim.steps, else optim.linear_epochs)")
    if not unused:
        return
    key = (optim.steps, optim.linear_epochs, optim.epochs)
    level = logging.INFO if key in _WARNED else logging.WARNING
    _WARNED.add(key)
    for message in unused:
        log.log(level, message)


def linear_problem(ctx: MethodContext, f_train: torch.Tensor, f_val: torch.Tensor) -> HeadProblem:
    """The head training of one linear-probe run, on its features (on the device)."""
    cfg, o = ctx.config, ctx.config.optim
    warn_unused_length(o)
    y_train = ctx.train.labels.to(ctx.device)
    per_epoch = -(-len(y_train) // min(o.batch_size, len(y_train)))
    steps = o.linear_steps(len(y_train))
    return HeadProblem(head=initial_head(ctx, f_train.shape[1]), features=f_train,
                       targets=y_train, validate=lambda head: evaluate_head(ctx, head, f_val,
                                                                            ctx.val),
                       lr=o.lr, weight_decay=o.weight_decay, batch_size=o.batch_size, steps=steps,
                       warmup_fraction=o.warmup_fraction, val_every=o.val_every or per_epoch,
                       seed=cfg.seed)


def evaluate_head(ctx: MethodContext, head: torch.nn.Linear, feats: torch.Tensor,
                  split: SplitTensors) -> EvalResult:
    return evaluate_logits(head, lambda idx: feats[idx.to(feats.device)], split.labels, 4096,
                           ctx.task)


def linear_result(ctx: MethodContext, problem: HeadProblem, history: FitHistory,
                  f_val: torch.Tensor, f_test: torch.Tensor, timings: dict[str, float],
                  cv: LinearCV, fold_histories: list[FitHistory]) -> MethodResult:
    """The run's result; with train-cv folds (``cv``), their score in ``metrics["train_cv"]``
    and their training time in the run's."""
    head = problem.head
    head_params = sum(p.numel() for p in head.parameters())
    val = evaluate_head(ctx, head, f_val, ctx.val)
    extra = {}
    if cv.active:
        extra["train_cv"] = cv_metrics(ctx, cv, problem.features)
        history.best_val_accuracy, history.best_val_loss = val.selection_score, val.loss
        history.seconds = fold_seconds([history, *fold_histories])
    return MethodResult(
        head=head, val=val, test=evaluate_head(ctx, head, f_test, ctx.test), history=history,
        trainable_parameters={"backbone": 0, "head": head_params, "total": head_params},
        tensors_to_save={"head": {k: v.detach().cpu() for k, v in head.state_dict().items()}},
        timings={**timings, "training_s": history.seconds},
        hyperparameters=dict(cv.hyperparameters), extra_metrics=extra)


def run_linear_probe(ctx: MethodContext) -> MethodResult:
    """Frozen backbone: cached clean features, then a linear head trained with AdamW."""
    freeze(ctx.backbone, ctx.device)
    fingerprint = ctx.backbone.weights_fingerprint()
    observer().phase("features", sum(len(s.labels) for s in (ctx.train, ctx.val, ctx.test)))
    (f_train, t1), (f_val, t2), (f_test, t3) = (frozen_features(ctx, s, fingerprint)
                                                for s in (ctx.train, ctx.val, ctx.test))
    f_train, f_val, f_test = (f.to(ctx.device) for f in (f_train, f_val, f_test))
    problem = linear_problem(ctx, f_train, f_val)
    cv = linear_cv(ctx, problem)
    history, *folds = fit_linear_heads([problem, *cv.problems], ctx.device, ctx.task)
    return linear_result(ctx, problem, history, f_val, f_test,
                         {"feature_extraction_s": t1 + t2 + t3}, cv, folds)
