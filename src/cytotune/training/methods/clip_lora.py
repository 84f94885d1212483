"""LoRA on the text encoder (``encoder: text``) or on both encoders (``both``), as CLIP-LoRA does.

The classifier is CLIP's own: logits = logit_scale * norm(image) @ norm(text(prompts)).T, with
the class embeddings recomputed from the prompts at every step, so the text-derived classifier is
trained end to end through the text tower's LoRA layers (and the image tower's with ``both``).
The logit scale stays the checkpoint's. The run saves the final classifier as a
:class:`NormalisedLinear` head (weight = scale x class embeddings) so inference needs no text
tower; the image tower's adapter is saved as usual and the text tower's LoRA tensors beside it.
"""
from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from cytotune.adapters import (apply_lora, count_lora_parameters, lora_state_dict,
                               mark_only_lora_trainable)
from cytotune.training.augment import normalise
from cytotune.training.features import autocast_for
from cytotune.training.loop import EvalResult, evaluate_logits, fit
from cytotune.training.methods.base import (MethodContext, MethodResult, SplitTensors,
                                            image_batch_fetcher)
from cytotune.training.methods.zero_shot import clip_head

log = logging.getLogger(__name__)


class ClipClassifier(nn.Module):
    """Image tower + text tower + the class prompts: CLIP's zero-shot classifier, trainable."""

    def __init__(self, backbone: nn.Module, text_encoder: nn.Module, prompts: list[list[str]],
                 train_vision: bool):
        super().__init__()
        self.backbone, self.text_encoder = backbone, text_encoder
        self.counts = [len(p) for p in prompts]
        self.register_buffer("tokens", text_encoder.tokenize(
            [text for class_prompts in prompts for text in class_prompts]), persistent=False)
        self.train_vision = train_vision

    @property
    def logit_scale(self) -> float:
        return float(self.text_encoder.logit_scale)

    def class_weights(self) -> torch.Tensor:
        """(C, D) unit-norm class embeddings: prompt embeddings normalised, averaged per class."""
        embedded = F.normalize(self.text_encoder(self.tokens).float(), dim=-1)
        means = torch.stack([chunk.mean(0) for chunk in embedded.split(self.counts)])
        return F.normalize(means, dim=-1)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_vision):
            return F.normalize(self.backbone(pixels).float(), dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images, weights = self.image_embeddings(pixels), self.class_weights()
        with torch.autocast(pixels.device.type, enabled=False):  # the classifier in fp32
            return self.logit_scale * images @ weights.T


def run_clip_lora(ctx: MethodContext) -> MethodResult:
    """LoRA on the text tower (and the image tower with encoder 'both'), CLIP classifier."""
    cfg, bb, text = ctx.config, ctx.backbone, ctx.text_encoder
    if text is None:
        raise ValueError(f"encoder={cfg.encoder!r} needs the card's text encoder, but the run "
                         f"built none")
    pre = bb.preprocessing
    train_vision = cfg.encoder == "both"
    lora = cfg.lora.resolve(bb.card.default_lora_targets)
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here: seeded per run
    adapted = apply_lora(bb.model, lora, bb.card.lora_targets) if train_vision else []
    adapted_text = apply_lora(text.model, lora, text.lora_targets)
    torch.random.set_rng_state(rng_state)
    log.info("LoRA rank %d alpha %g on %d image-tower and %d text-tower layers (%s)", lora.rank,
             lora.alpha, len(adapted), len(adapted_text), ", ".join(lora.targets))
    if train_vision:
        mark_only_lora_trainable(bb)
    else:
        bb.requires_grad_(False)
    mark_only_lora_trainable(text)
    model = ClipClassifier(bb, text, ctx.prompts, train_vision).to(ctx.device)
    o = cfg.optim
    fetch = image_batch_fetcher(ctx, o.augment)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        with autocast_for(ctx.device, ctx.config.precision):
            logits = model(x)
        return ctx.task.loss(logits, y)

    def evaluate(split: SplitTensors) -> EvalResult:
        with torch.no_grad():  # once per pass, not per batch; fp32 as the saved head has them
            weights = model.class_weights()

        def logits_of(x: torch.Tensor) -> torch.Tensor:
            with autocast_for(ctx.device, ctx.config.precision):
                images = model.image_embeddings(normalise(x.to(ctx.device), pre.mean, pre.std))
            return model.logit_scale * images @ weights.T

        return evaluate_logits(logits_of, lambda idx: split.pixels[idx], split.labels, 64, ctx.task)

    history = fit(model, loss_of, len(ctx.train.labels), lambda: evaluate(ctx.val), lr=o.lr,
                  weight_decay=o.weight_decay, batch_size=o.batch_size, steps=ctx.steps,
                  warmup_fraction=o.warmup_fraction, val_every=o.val_every, seed=cfg.seed,
                  device=ctx.device, fetch=fetch)
    start = time.perf_counter()
    test, val = evaluate(ctx.test), evaluate(ctx.val)
    with torch.no_grad():
        head = clip_head(model.class_weights(), model.logit_scale)
    vision_params, text_params = count_lora_parameters(bb), count_lora_parameters(text)
    return MethodResult(
        head=head, val=val, test=test, history=history,
        trainable_parameters={"backbone": vision_params, "text": text_params, "head": 0,
                              "total": vision_params + text_params},
        tensors_to_save={"head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                         "text_adapter": {k: v.detach().cpu()
                                          for k, v in lora_state_dict(text.model).items()}},
        timings={**history.timings(), "evaluation_s": time.perf_counter() - start})
