"""Full fine-tuning: every backbone parameter (or those of its last N blocks) trained with the head.

The comparison the related studies make: LoRA trains under 1 % of the parameters, full
fine-tuning all of them, and a conventionally trained CNN (``--model timm:resnet50 --method
full``, ImageNet or random initial weights) is the baseline both are measured against. The
backbone gets its own learning rate, optionally decayed layer by layer towards the input, so
pretrained early layers move less than the head.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import nn

from cytotune.models.blocks import block_names, enable_grad_checkpointing, parameter_depths
from cytotune.training.augment import normalise
from cytotune.training.config import FinetuneSettings
from cytotune.training.features import autocast_for
from cytotune.training.loop import EvalResult, evaluate_logits, fit
from cytotune.training.methods.base import (Classifier, MethodContext, MethodResult, SplitTensors,
                                            compiled, image_batch_fetcher, initial_head)

log = logging.getLogger(__name__)


def mark_trainable_blocks(backbone: nn.Module, settings: FinetuneSettings) -> list[str]:
    """Set ``requires_grad`` on the backbone: everything, or only its last ``train_blocks`` blocks.

    Returns the names (in ``backbone.model``) of the blocks that train; ``["*"]`` for all.
    """
    model = backbone.model
    if settings.train_blocks is None:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return ["*"]
    names = block_names(backbone.card, model)
    if settings.train_blocks > len(names):
        raise ValueError(f"finetune.train_blocks={settings.train_blocks} but model "
                         f"'{backbone.card.name}' has only {len(names)} blocks")
    chosen = names[-settings.train_blocks:]
    for p in backbone.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for name in chosen:
        for p in modules[name].parameters():
            p.requires_grad_(True)
    return chosen


def backbone_param_groups(backbone: nn.Module, settings: FinetuneSettings,
                          base_lr: float) -> list[dict]:
    """AdamW groups of the trainable backbone parameters, one per depth when decay is on.

    A parameter at depth d of N blocks (see :func:`parameter_depths`) gets
    ``base_lr * layer_decay ** (N + 1 - d)``.
    """
    trainable = [(n, p) for n, p in backbone.model.named_parameters() if p.requires_grad]
    if settings.layer_decay == 1.0:
        return [{"params": [p for _, p in trainable], "lr": base_lr, "name": "backbone"}]
    depths, num_blocks = parameter_depths(backbone.card, backbone.model)
    by_depth: dict[int, list[torch.Tensor]] = {}
    for name, p in trainable:
        by_depth.setdefault(depths[name], []).append(p)
    return [{"params": params, "lr": base_lr * settings.layer_decay ** (num_blocks + 1 - depth),
             "name": f"backbone_depth{depth}"} for depth, params in sorted(by_depth.items())]


def run_full_finetune(ctx: MethodContext) -> MethodResult:
    """Backbone and linear head trained end to end on images (all or the last N blocks)."""
    cfg, bb = ctx.config, ctx.backbone
    settings, o, pre = cfg.finetune, cfg.optim, bb.preprocessing
    trained_blocks = mark_trainable_blocks(bb, settings)
    if settings.grad_checkpointing:
        enable_grad_checkpointing(bb.card, bb.model)
    head = initial_head(ctx, bb.feature_dim)
    model = Classifier(bb, head).to(ctx.device)
    groups = backbone_param_groups(bb, settings, settings.backbone_lr or o.lr)
    groups.append({"params": list(head.parameters()), "lr": o.lr, "name": "head"})
    backbone_params = sum(p.numel() for p in bb.parameters() if p.requires_grad)
    log.info("full fine-tuning of %s: %s trainable backbone parameters (%s), head lr %g, "
             "backbone lr %g, layer decay %g", bb.card.name, f"{backbone_params:,}",
             "all blocks" if trained_blocks == ["*"] else f"blocks {', '.join(trained_blocks)}",
             o.lr, settings.backbone_lr or o.lr, settings.layer_decay)
    fetch = image_batch_fetcher(ctx, o.augment)
    forward = compiled(model, o.compile)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        with autocast_for(ctx.device, ctx.config.precision):
            logits = forward(x)
        return ctx.task.loss(logits, y)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        with autocast_for(ctx.device, ctx.config.precision):
            return forward(normalise(x.to(ctx.device), pre.mean, pre.std))

    def evaluate(split: SplitTensors) -> EvalResult:
        return evaluate_logits(logits_of, lambda idx: split.pixels[idx], split.labels, 64, ctx.task)

    history = fit(model, loss_of, len(ctx.train.labels), lambda: evaluate(ctx.val), lr=o.lr,
                  weight_decay=o.weight_decay, batch_size=o.batch_size, steps=ctx.steps,
                  warmup_fraction=o.warmup_fraction, val_every=o.val_every, seed=cfg.seed,
                  device=ctx.device, param_groups=groups, fetch=fetch)
    start = time.perf_counter()
    test = evaluate(ctx.test)
    val = evaluate(ctx.val)
    head_params = sum(p.numel() for p in head.parameters())
    return MethodResult(
        head=head, val=val, test=test, history=history,
        trainable_parameters={"backbone": backbone_params, "head": head_params,
                              "total": backbone_params + head_params,
                              "backbone_total": sum(p.numel() for p in bb.parameters())},
        tensors_to_save={
            "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            # the whole fine-tuned backbone (buffers included), so inference rebuilds it exactly
            "backbone": {k: v.detach().cpu().clone() for k, v in bb.model.state_dict().items()}},
        timings={**history.timings(), "evaluation_s": time.perf_counter() - start})
