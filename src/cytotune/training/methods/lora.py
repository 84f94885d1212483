"""LoRA: low-rank adapters on the card's attention (or named) layers plus a linear head, trained
end to end on images."""
from __future__ import annotations

import logging

import torch

from cytotune.adapters import apply_lora, count_lora_parameters, mark_only_lora_trainable
from cytotune.models.blocks import enable_grad_checkpointing
from cytotune.training.methods.base import (Classifier, MethodContext, MethodResult,
                                            fit_image_classifier, initial_head)

log = logging.getLogger(__name__)


def run_lora(ctx: MethodContext) -> MethodResult:
    """LoRA on the card's attention (or named) layers plus a linear head, trained end to end."""
    if ctx.config.encoder != "vision":  # LoRA on the text tower: the CLIP classifier
        from cytotune.training.methods.clip_lora import run_clip_lora
        return run_clip_lora(ctx)
    cfg, bb = ctx.config, ctx.backbone
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here: seeded per run
    lora = cfg.lora.resolve(bb.card.default_lora_targets)
    adapted = apply_lora(bb.model, lora, bb.card.lora_targets)
    torch.random.set_rng_state(rng_state)
    log.info("LoRA rank %d alpha %g on %d layers (%s)", lora.rank, lora.alpha, len(adapted),
             ", ".join(lora.targets))
    mark_only_lora_trainable(bb)
    head = initial_head(ctx, bb.feature_dim)
    if cfg.finetune.grad_checkpointing:
        enable_grad_checkpointing(bb.card, bb.model)
    model = Classifier(bb, head).to(ctx.device)
    history, val, test, timings = fit_image_classifier(ctx, model)
    lora_params = count_lora_parameters(bb)
    head_params = sum(p.numel() for p in head.parameters())
    return MethodResult(
        head=head, val=val, test=test, history=history,
        trainable_parameters={"backbone": lora_params, "head": head_params,
                              "total": lora_params + head_params},
        tensors_to_save={"head": {k: v.detach().cpu() for k, v in head.state_dict().items()}},
        timings=timings)
