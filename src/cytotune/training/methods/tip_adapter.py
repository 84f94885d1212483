"""Tip-Adapter (training-free; Zhang et al., ECCV 2022) for vision-language cards.

CLIP's zero-shot logits plus a key-value cache of the few-shot training images:
``logits = scale * f @ W.T + alpha * exp(-beta * (1 - f @ K.T)) @ L``, with ``f`` the unit image
feature, ``W`` the unit class text embeddings (the run's prompts, as zero-shot), ``K`` the unit
training features and ``L`` their one-hot labels. Nothing is optimised: alpha (how much the cache
counts) and beta (how sharply it weighs near neighbours) are chosen on validation from small
grids, like the other probes' hyper-parameters. The variant that fine-tunes the keys
(Tip-Adapter-F) is not implemented.
"""
from __future__ import annotations

import itertools
import logging
import time

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


def run_tip_adapter(ctx: MethodContext) -> MethodResult:
    """Zero-shot logits plus the training images' cache; alpha and beta chosen on validation."""
    f_train, f_val, f_test, t_feat = probe_features(ctx)
    start = time.perf_counter()
    head = tip_adapter_head(f_train, ctx.train.labels.to(ctx.device), len(ctx.class_names),
                            text_class_weights(ctx), float(ctx.text_encoder.logit_scale)
                            ).to(ctx.device)
    (alpha, beta), history = choose_alpha_beta(ctx, head, f_val)
    log.info("tip-adapter: alpha=%g beta=%g chosen on validation", alpha, beta)
    val = evaluate_head(ctx, head, f_val, ctx.val)
    return probe_result(ctx, head, val, f_test, history,
                   {"alpha": alpha, "beta": beta, "alpha_grid": list(ALPHA_GRID),
                    "beta_grid": list(BETA_GRID), "select_on": "val"}, 0, head.state_dict(),
                   {"feature_extraction_s": t_feat, "training_s": time.perf_counter() - start})
