"""Training methods as registry entries: each turns prepared data and a backbone into a trained
classifier and its evaluations. New methods (full fine-tuning, zero-shot ...) are new entries.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cytotune.adapters import apply_lora, count_lora_parameters, mark_only_lora_trainable
from cytotune.training.augment import normalise, random_dihedral
from cytotune.training.config import TrainConfig
from cytotune.training.features import FeatureCache, autocast_for, extract_features
from cytotune.training.loop import EvalResult, FitHistory, evaluate_logits, fit

log = logging.getLogger(__name__)


@dataclass
class SplitTensors:
    """Decoded images of one split, ready for the device."""

    pixels: torch.Tensor  # uint8 (N, 3, S, S), CPU
    labels: torch.Tensor  # int64 (N,)
    paths: list[Path]
    images_key: str  # content key of these images at this preprocessing (cache key part)
    rows: np.ndarray  # int64 (N,): positions of these images in the data set


@dataclass
class MethodContext:
    config: TrainConfig
    backbone: nn.Module  # cytotune.models.Backbone
    train: SplitTensors
    val: SplitTensors
    test: SplitTensors
    class_names: list[str]
    device: torch.device
    feature_cache: FeatureCache
    steps: int


@dataclass
class MethodResult:
    head: nn.Linear
    val: EvalResult
    test: EvalResult
    history: FitHistory
    trainable_parameters: dict[str, int]
    tensors_to_save: dict[str, dict[str, torch.Tensor]]  # file stem -> tensors
    timings: dict[str, float] = field(default_factory=dict)


def _new_head(feature_dim: int, num_classes: int, seed: int, device: torch.device) -> nn.Linear:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    head = nn.Linear(feature_dim, num_classes)
    torch.random.set_rng_state(generator_state)
    return head.to(device)


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
    head = _new_head(f_train.shape[1], len(ctx.class_names), cfg.seed, ctx.device)
    f_train, f_val, f_test = (f.to(ctx.device) for f in (f_train, f_val, f_test))
    y_train = ctx.train.labels.to(ctx.device)
    o = cfg.optim
    steps = o.steps or max(1, o.linear_epochs * -(-len(y_train) // min(o.batch_size, len(y_train))))

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(ctx.device)
        return F.cross_entropy(head(f_train[idx]), y_train[idx])

    def evaluate(feats: torch.Tensor, split: SplitTensors) -> EvalResult:
        return evaluate_logits(head, lambda idx: feats[idx.to(ctx.device)], split.labels, 4096)

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


class Classifier(nn.Module):
    """Backbone features followed by a linear head: the model LoRA and fine-tuning train.

    Batch-norm layers whose parameters are frozen keep their pretrained running statistics in
    training mode: re-estimating them from few-shot batches of 4-32 images would overwrite what
    the backbone learned on ImageNet (and differ between train and eval).
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def run_lora(ctx: MethodContext) -> MethodResult:
    """LoRA on the card's attention (or named) layers plus a linear head, trained end to end."""
    cfg, bb = ctx.config, ctx.backbone
    pre = bb.preprocessing
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here: seeded per run
    lora = cfg.lora.resolve(bb.card.default_lora_targets)
    adapted = apply_lora(bb.model, lora, bb.card.lora_targets)
    torch.random.set_rng_state(rng_state)
    log.info("LoRA rank %d alpha %g on %d layers (%s)", lora.rank, lora.alpha, len(adapted),
             ", ".join(lora.targets))
    mark_only_lora_trainable(bb)
    head = _new_head(bb.feature_dim, len(ctx.class_names), cfg.seed, ctx.device)
    model = Classifier(bb, head).to(ctx.device)
    o = cfg.optim
    aug_generator = torch.Generator().manual_seed(cfg.seed + 1)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x = ctx.train.pixels[idx].to(ctx.device, non_blocking=True)
        if o.augment:
            x = random_dihedral(x, aug_generator)
        y = ctx.train.labels[idx].to(ctx.device)
        with autocast_for(ctx.device):
            logits = model(normalise(x, pre.mean, pre.std))
        return F.cross_entropy(logits.float(), y)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        with autocast_for(ctx.device):
            return model(normalise(x.to(ctx.device), pre.mean, pre.std))

    def evaluate(split: SplitTensors) -> EvalResult:
        return evaluate_logits(logits_of, lambda idx: split.pixels[idx], split.labels, 64)

    history = fit(model, loss_of, len(ctx.train.labels), lambda: evaluate(ctx.val), lr=o.lr,
                  weight_decay=o.weight_decay, batch_size=o.batch_size, steps=ctx.steps,
                  warmup_fraction=o.warmup_fraction, val_every=o.val_every, seed=cfg.seed,
                  device=ctx.device)
    start = time.perf_counter()
    test = evaluate(ctx.test)
    val = evaluate(ctx.val)
    lora_params = count_lora_parameters(bb)
    head_params = sum(p.numel() for p in head.parameters())
    return MethodResult(
        head=head, val=val, test=test, history=history,
        trainable_parameters={"backbone": lora_params, "head": head_params,
                              "total": lora_params + head_params},
        tensors_to_save={"head": {k: v.detach().cpu() for k, v in head.state_dict().items()}},
        timings={"training_s": history.seconds, "evaluation_s": time.perf_counter() - start})


METHODS: dict[str, Callable[[MethodContext], MethodResult]] = {
    "linear": run_linear_probe,
    "lora": run_lora,
}
