"""Linear probe: a frozen backbone's cached clean features and a linear head trained with AdamW."""
from __future__ import annotations

import logging

import torch

from cytotune.training.features import FeatureCache, extract_features
from cytotune.training.loop import EvalResult, evaluate_logits, fit
from cytotune.training.methods.base import (MethodContext, MethodResult, SplitTensors,
                                            initial_head)

log = logging.getLogger(__name__)


def run_linear_probe(ctx: MethodContext) -> MethodResult:
    """Frozen backbone: cached clean features, then a linear head trained with AdamW."""
    bb, pre, cfg = ctx.backbone, ctx.backbone.preprocessing, ctx.config
    bb.to(ctx.device).eval()
    for p in bb.parameters():
        p.requires_grad_(False)
    fingerprint = bb.weights_fingerprint()

    def features(split: SplitTensors) -> tuple[torch.Tensor, float]:
        key = FeatureCache.key(bb.card.name, fingerprint, pre.fingerprint(), split.images_key)
        feats, seconds, hit = ctx.feature_cache.get_or_compute(
            key, lambda: extract_features(bb, split.pixels, pre.mean, pre.std, ctx.device))
        log.info("features for %d images: %s", len(split.labels),
                 "cache hit" if hit else f"extracted in {seconds:.1f}s")
        return feats, seconds

    (f_train, t1), (f_val, t2), (f_test, t3) = features(ctx.train), features(ctx.val), features(ctx.test)
    head = initial_head(ctx, f_train.shape[1])
    f_train, f_val, f_test = (f.to(ctx.device) for f in (f_train, f_val, f_test))
    y_train = ctx.train.labels.to(ctx.device)
    o = cfg.optim
    steps = o.steps or max(1, o.linear_epochs * -(-len(y_train) // min(o.batch_size, len(y_train))))

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(ctx.device)
        return ctx.task.loss(head(f_train[idx]), y_train[idx])

    def evaluate(feats: torch.Tensor, split: SplitTensors) -> EvalResult:
        return evaluate_logits(head, lambda idx: feats[idx.to(ctx.device)], split.labels, 4096,
                               ctx.task)

    per_epoch = -(-len(y_train) // min(o.batch_size, len(y_train)))
    history = fit(head, loss_of, len(y_train), lambda: evaluate(f_val, ctx.val), lr=o.lr,
                  weight_decay=o.weight_decay, batch_size=o.batch_size, steps=steps,
                  warmup_fraction=o.warmup_fraction, val_every=o.val_every or per_epoch,
                  seed=cfg.seed, device=ctx.device)
    head_params = sum(p.numel() for p in head.parameters())
    return MethodResult(
        head=head, val=evaluate(f_val, ctx.val), test=evaluate(f_test, ctx.test), history=history,
        trainable_parameters={"backbone": 0, "head": head_params, "total": head_params},
        tensors_to_save={"head": {k: v.detach().cpu() for k, v in head.state_dict().items()}},
        timings={"feature_extraction_s": t1 + t2 + t3, "training_s": history.seconds})
