"""Zero-shot: no training; class scores are image-text similarities of a vision-language model.

Each class is embedded as the mean of its normalised prompt embeddings (one prompt per template,
renormalised: prompt ensembling); an image's logits are the model's own logit scale times the
cosine similarity of its image embedding to every class embedding. The run keeps that classifier
as a :class:`NormalisedLinear` head (weight = scale x class embeddings, bias 0), so ``predict``
and ``cytotune.load`` use it like any other run's head.
"""
from __future__ import annotations

import logging

import torch

from cytotune.training.loop import EvalResult, FitHistory, evaluate_logits
from cytotune.training.methods.base import (MethodContext, MethodResult, NormalisedLinear,
                                            SplitTensors, text_class_weights)

log = logging.getLogger(__name__)


def clip_head(class_weights: torch.Tensor, logit_scale: float) -> NormalisedLinear:
    """CLIP's classifier as a head on raw image features: scale * norm(x) @ class_weights.T."""
    num_classes, dim = class_weights.shape
    head = NormalisedLinear(dim, num_classes).to(class_weights.device)
    with torch.no_grad():
        head.weight.copy_(class_weights * float(logit_scale))
        head.bias.zero_()
    return head.eval()


def run_zero_shot(ctx: MethodContext) -> MethodResult:
    """Image-text similarity with the card's text tower, tokenizer and logit scale; nothing trains."""
    bb = ctx.backbone
    bb.to(ctx.device).eval()
    for p in bb.parameters():
        p.requires_grad_(False)
    head = clip_head(text_class_weights(ctx), float(ctx.text_encoder.logit_scale))
    fingerprint = bb.weights_fingerprint()

    def evaluate(split: SplitTensors) -> tuple[EvalResult, float]:
        feats, seconds, _ = ctx.feature_cache.features(bb, fingerprint, split.pixels,
                                                       split.images_key, ctx.device,
                                                       ctx.config.precision, split.image_keys)
        feats = feats.to(ctx.device)
        return evaluate_logits(head, lambda idx: feats[idx.to(ctx.device)], split.labels,
                               4096, ctx.task), seconds

    (val, t_val), (test, t_test) = evaluate(ctx.val), evaluate(ctx.test)
    log.info("zero-shot: %d classes x %d prompts, logit scale %.2f; val accuracy %.4f",
             len(ctx.prompts), len(ctx.prompts[0]), float(ctx.text_encoder.logit_scale),
             val.accuracy)
    return MethodResult(
        head=head, val=val, test=test, history=FitHistory(),
        trainable_parameters={"backbone": 0, "head": 0, "total": 0},
        tensors_to_save={"head": {k: v.detach().cpu() for k, v in head.state_dict().items()}},
        timings={"feature_extraction_s": t_val + t_test})
