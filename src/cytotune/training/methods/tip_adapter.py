"""Tip-Adapter (training-free; Zhang et al., ECCV 2022) for vision-language cards.

CLIP's zero-shot logits plus a key-value cache of the few-shot training images:
``logits = scale * f @ W.T + alpha * exp(-beta * (1 - f @ K.T)) @ L``, with ``f`` the unit image
feature, ``W`` the unit class text embeddings (the run's prompts, as zero-shot), ``K`` the unit
training features and ``L`` their one-hot labels. Nothing is optimised: alpha (how much the cache
counts) and beta (how sharply it weighs near neighbours) are chosen on validation from small
grids, like the other probes' hyper-parameters.

Tip-Adapter-F (``tip-adapter-f``) also fine-tunes the keys: starting from the training-free head
and its validation-chosen (alpha, beta), the keys are trained with cross-entropy on the training
features on the paper's fixed schedule (AdamW, learning rate 1e-3, eps 1e-4, cosine decay, 20
epochs, batches of 256), then alpha and beta are chosen again on validation. It departs from
the paper in one way: the training features are the cached clean ones (the paper draws randomly
cropped and flipped views each epoch), so the features being classified start equal to the keys.
The schedule is the method's own, not the run's (``--lr``, ``--steps`` do not apply), so sweeps
treat it as a feature probe: one run per sample and seed.
"""
from __future__ import annotations

import itertools
import logging
import math
import time

import torch
import torch.nn.functional as F

from cytotune.training.loop import FitHistory
from cytotune.training.methods.base import MethodContext, MethodResult, text_class_weights
from cytotune.training.methods.feature_probes import probe_features, probe_result
from cytotune.training.methods.linear import evaluate_head
from cytotune.training.methods.probe_heads import TipAdapterHead, tip_adapter_head
from cytotune.training.progress import observer

log = logging.getLogger(__name__)

# the paper searches alpha and beta around 1 and 5.5 (its defaults on ImageNet)
ALPHA_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
BETA_GRID: tuple[float, ...] = (1.0, 3.0, 5.5, 8.0, 12.0)
# Tip-Adapter-F's schedule (the paper's: AdamW, lr 1e-3, eps 1e-4, cosine, 20 epochs, batch 256)
FINE_TUNE_LR = 1e-3
FINE_TUNE_EPOCHS = 20
FINE_TUNE_BATCH = 256


def choose_alpha_beta(ctx: MethodContext, head: TipAdapterHead, f_val
                      ) -> tuple[tuple[float, float], FitHistory]:
    """Set ``head``'s (alpha, beta) to the grid pair scoring best on validation (ties: lower
    validation loss, then the first pair, alpha-major); returns the pair and the history."""
    history, best = FitHistory(), None
    pairs = list(itertools.product(ALPHA_GRID, BETA_GRID))
    observer().phase("training", len(pairs))
    for i, (alpha, beta) in enumerate(pairs, start=1):
        head.alpha.fill_(alpha)
        head.beta.fill_(beta)
        val = evaluate_head(ctx, head, f_val, ctx.val)
        history.evaluations.append({"step": i, "alpha": alpha, "beta": beta,
                                    "val_loss": val.loss, "val_accuracy": val.accuracy})
        if best is None or (val.selection_score, -val.loss) > (best[1].selection_score,
                                                               -best[1].loss):
            best = ((alpha, beta), val)
        observer().step(i, len(pairs))
    observer().phase("evaluation")
    assert best is not None
    (alpha, beta), val = best
    head.alpha.fill_(alpha)
    head.beta.fill_(beta)
    history.best_val_accuracy, history.best_val_loss = val.selection_score, val.loss
    return (alpha, beta), history


def fine_tune_steps(n_train: int, epochs: int = FINE_TUNE_EPOCHS,
                    batch_size: int = FINE_TUNE_BATCH) -> int:
    """Optimizer steps of :func:`fine_tune_keys` on ``n_train`` training features."""
    return epochs * math.ceil(n_train / batch_size)


def fine_tune_keys(head: TipAdapterHead, features: torch.Tensor, labels: torch.Tensor, seed: int,
                   epochs: int = FINE_TUNE_EPOCHS, lr: float = FINE_TUNE_LR,
                   batch_size: int = FINE_TUNE_BATCH) -> list[float]:
    """Train ``head``'s cache keys (nothing else) with cross-entropy on ``features`` and
    ``labels``, batches shuffled by ``seed``; the keys are written back into the head. Returns
    each epoch's mean training loss."""
    keys = head.keys.detach().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([keys], lr=lr, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, max(1, fine_tune_steps(len(features), epochs, batch_size)))
    generator = torch.Generator().manual_seed(int(seed))
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            loss = F.cross_entropy(head.logits_with_keys(features[rows], keys), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / len(order))
    with torch.no_grad():
        head.keys.copy_(keys.detach())
    return losses


def _training_free_head(ctx: MethodContext, f_train) -> TipAdapterHead:
    """The head whose cache is the run's training features, with CLIP's class embeddings."""
    return tip_adapter_head(f_train, ctx.train.labels.to(ctx.device), len(ctx.class_names),
                            text_class_weights(ctx), float(ctx.text_encoder.logit_scale)
                            ).to(ctx.device)


def _chosen(alpha: float, beta: float) -> dict:
    """What metrics.json records of the (alpha, beta) choice."""
    return {"alpha": alpha, "beta": beta, "alpha_grid": list(ALPHA_GRID),
            "beta_grid": list(BETA_GRID), "select_on": "val"}


def run_tip_adapter(ctx: MethodContext) -> MethodResult:
    """Zero-shot logits plus the training images' cache; alpha and beta chosen on validation."""
    f_train, f_val, f_test, t_feat = probe_features(ctx)
    start = time.perf_counter()
    head = _training_free_head(ctx, f_train)
    (alpha, beta), history = choose_alpha_beta(ctx, head, f_val)
    log.info("tip-adapter: alpha=%g beta=%g chosen on validation", alpha, beta)
    val = evaluate_head(ctx, head, f_val, ctx.val)
    return probe_result(ctx, head, val, f_test, history, _chosen(alpha, beta), 0,
                        head.state_dict(), {"feature_extraction_s": t_feat,
                                            "training_s": time.perf_counter() - start})


def run_tip_adapter_f(ctx: MethodContext) -> MethodResult:
    """Tip-Adapter-F: the training-free head, its keys fine-tuned (:func:`fine_tune_keys`), then
    alpha and beta chosen again on validation."""
    f_train, f_val, f_test, t_feat = probe_features(ctx)
    start = time.perf_counter()
    head = _training_free_head(ctx, f_train)
    (alpha0, beta0), _ = choose_alpha_beta(ctx, head, f_val)
    losses = fine_tune_keys(head, f_train, ctx.train.labels.to(ctx.device), ctx.config.seed)
    log.info("tip-adapter-f: keys fine-tuned from alpha=%g beta=%g, training loss %.4f -> %.4f",
             alpha0, beta0, losses[0], losses[-1])
    (alpha, beta), history = choose_alpha_beta(ctx, head, f_val)
    log.info("tip-adapter-f: alpha=%g beta=%g chosen on validation", alpha, beta)
    val = evaluate_head(ctx, head, f_val, ctx.val)
    return probe_result(ctx, head, val, f_test, history,
                        {**_chosen(alpha, beta), "fine_tune_from": {"alpha": alpha0, "beta": beta0},
                         "fine_tune_lr": FINE_TUNE_LR, "fine_tune_epochs": FINE_TUNE_EPOCHS,
                         "fine_tune_batch": FINE_TUNE_BATCH,
                         "fine_tune_steps": fine_tune_steps(len(f_train)),
                         "fine_tune_losses": losses},
                        head.keys.numel(), head.state_dict(),
                        {"feature_extraction_s": t_feat,
                         "training_s": time.perf_counter() - start})
