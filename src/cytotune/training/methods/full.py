"""Full fine-tuning: every backbone parameter (or those of its last N blocks) trained with the head.

The comparison the related studies make: LoRA trains under 1 % of the parameters, full
fine-tuning all of them, and a conventionally trained CNN (``--model timm:resnet50 --method
full``, ImageNet or random initial weights) is the baseline both are measured against. The
backbone gets its own learning rate, optionally decayed layer by layer towards the input, so
pretrained early layers move less than the head.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from cytotune.models.blocks import block_names, enable_grad_checkpointing, parameter_depths
from cytotune.training.config import FinetuneSettings
from cytotune.training.methods.base import (Classifier, MethodContext, MethodResult,
                                            fit_image_classifier, initial_head)

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
    settings, o = cfg.finetune, cfg.optim
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
    history, val, test, timings = fit_image_classifier(ctx, model, param_groups=groups)
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
        timings=timings)
