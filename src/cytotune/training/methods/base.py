"""What every training method receives and returns, and the pieces several methods share."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cytotune.training.augment import batch_augmenter, normalise
from cytotune.training.config import TrainConfig
from cytotune.training.features import FeatureCache, autocast_for, fp32_head
from cytotune.training.loop import EvalResult, FitHistory, evaluate_logits, fit
from cytotune.training.task import SINGLE_LABEL, Task


@dataclass
class SplitTensors:
    """Decoded images of one split, ready for the device."""

    pixels: torch.Tensor  # uint8 (N, 3, S, S), CPU
    labels: torch.Tensor  # int64 (N,); multi-label: float32 (N, L) 0/1 targets
    paths: list[Path]
    images_key: str  # content key of these images at this preprocessing (cache key part)
    rows: np.ndarray  # int64 (N,): positions of these images in the data set
    image_keys: list[str] = field(default_factory=list)  # one content key per image, if known


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
    # vision-language runs: one list of prompts per class, and the card's text encoder (built by
    # the runner only when the method or head_init needs it; cytotune.models.text.TextEncoder)
    prompts: list[list[str]] = field(default_factory=list)
    text_encoder: Optional[nn.Module] = None
    task: Task = SINGLE_LABEL  # loss, probabilities and selection score of the labels' kind


@dataclass
class MethodResult:
    head: nn.Linear
    val: EvalResult
    test: EvalResult
    history: FitHistory
    trainable_parameters: dict[str, int]
    tensors_to_save: dict[str, dict[str, torch.Tensor]]  # file stem -> tensors
    timings: dict[str, float] = field(default_factory=dict)
    # what a method chose on validation (knn's k, logreg's C), kept in metrics.json
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # further metrics.json entries (a train-cv linear run's ``train_cv`` score)
    extra_metrics: dict[str, Any] = field(default_factory=dict)


def new_head(feature_dim: int, num_classes: int, seed: int, device: torch.device) -> nn.Linear:
    """A linear head initialised from ``seed`` without disturbing the global generator."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    head = nn.Linear(feature_dim, num_classes)
    torch.random.set_rng_state(generator_state)
    return head.to(device)


def needs_text_encoder(config: TrainConfig) -> bool:
    """Whether a run uses the card's text tower (zero-shot, Tip-Adapter, text-initialised head,
    text LoRA)."""
    return (config.method in ("zero-shot", "tip-adapter", "tip-adapter-f") or config.head_init == "text"
            or config.encoder != "vision")


def head_takes_normalised_features(config: TrainConfig) -> bool:
    """Whether a run's saved head is CLIP's classifier (:class:`NormalisedLinear`): zero-shot and
    LoRA on the text encoder; linear and image-tower LoRA heads work on the raw features."""
    return config.method == "zero-shot" or config.encoder != "vision"


class NormalisedLinear(nn.Linear):
    """A linear head on L2-normalised features: CLIP's classifier, whose weight is the logit scale
    times the class text embeddings (zero-shot and text-encoder LoRA runs save this head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(x, dim=-1))


def text_class_weights(ctx: MethodContext) -> torch.Tensor:
    """(C, D) unit-norm class embeddings of the run's prompts (prompt-ensembled), without grad."""
    if ctx.text_encoder is None:
        raise ValueError(f"method {ctx.config.method!r} with head_init={ctx.config.head_init!r} "
                         f"needs the card's text encoder, but the run built none")
    with torch.no_grad():
        weights = ctx.text_encoder.to(ctx.device).class_embeddings(ctx.prompts)
    dim = getattr(ctx.backbone, "feature_dim", weights.shape[1])
    if weights.shape[1] != dim:
        raise ValueError(f"model card '{ctx.backbone.card.name}': text embeddings are "
                         f"{weights.shape[1]}-d but the image features are {dim}-d; text heads "
                         f"need the model's own joint embedding (pooling 'model')")
    return weights.to(ctx.device)


def initial_head(ctx: MethodContext, feature_dim: int) -> nn.Linear:
    """The head a method starts from: seeded random weights, or with ``head_init: text`` the
    normalised text embeddings of the class prompts as weights and a zero bias."""
    head = new_head(feature_dim, len(ctx.class_names), ctx.config.seed, ctx.device)
    if ctx.config.head_init == "text":
        with torch.no_grad():
            head.weight.copy_(text_class_weights(ctx).to(head.weight.dtype))
            head.bias.zero_()
    return head


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
        return fp32_head(self.head, self.backbone(x))


# Training images kept on the accelerator when they fit in this budget (uint8; few-shot sets and
# most data sets do), else pinned host memory copied asynchronously batch by batch.
DEVICE_RESIDENT_BYTES = 4 * 1024 ** 3


def pixels_for_device(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The uint8 image tensor a training loop indexes: on the device when it fits the budget
    (a batch is then one gather, no host copy), else pinned on the host (CPU runs: as is)."""
    if device.type != "cuda":
        return pixels
    if pixels.numel() <= DEVICE_RESIDENT_BYTES:
        return pixels.to(device)
    return pixels.pin_memory()


def image_batch_fetcher(ctx: MethodContext, augment: Any):
    """``fetch(index_batch) -> (normalised images, targets)`` on the device: the whole data path
    of an image-training step (gather uint8 pixels, copy, the run's augmentations (``optim.augment``:
    True/False or names, see :mod:`cytotune.training.augment`) drawn from its own generator,
    normalise). ``fit`` times it as the step's data wait."""
    pre = ctx.backbone.preprocessing
    pixels = pixels_for_device(ctx.train.pixels, ctx.device)
    labels = ctx.train.labels.to(ctx.device)
    augmenter = batch_augmenter(augment, ctx.config.seed + 1)

    def fetch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels[idx.to(pixels.device)].to(ctx.device, non_blocking=True)
        return normalise(augmenter(x), pre.mean, pre.std), labels[idx.to(labels.device)]

    return fetch


def compiled(model: nn.Module, enabled: bool):
    """``torch.compile(model)`` when asked (the same parameters, so the optimiser and the best
    state see no difference), else the model itself."""
    return torch.compile(model) if enabled else model


def fit_image_classifier(ctx: MethodContext, model: Classifier,
                         param_groups: Optional[list[dict]] = None
                         ) -> tuple[FitHistory, EvalResult, EvalResult, dict[str, Any]]:
    """Train ``model`` end to end on the run's images, the way LoRA and full fine-tuning both do:
    batches from :func:`image_batch_fetcher`, optional ``torch.compile``, the run's autocast
    precision, validation on the run's schedule with the best state restored. ``param_groups``:
    AdamW groups with their own learning rates (None: one group at ``optim.lr``). Returns the
    history, val and test results and the timings (the fit's plus ``evaluation_s``)."""
    cfg, o, pre = ctx.config, ctx.config.optim, ctx.backbone.preprocessing
    fetch = image_batch_fetcher(ctx, o.augment)
    forward = compiled(model, o.compile)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        with autocast_for(ctx.device, cfg.precision):
            logits = forward(x)
        return ctx.task.loss(logits, y)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        with autocast_for(ctx.device, cfg.precision):
            return forward(normalise(x.to(ctx.device), pre.mean, pre.std))

    def evaluate(split: SplitTensors) -> EvalResult:
        return evaluate_logits(logits_of, lambda idx: split.pixels[idx], split.labels, 64, ctx.task)

    history = fit(model, loss_of, len(ctx.train.labels), lambda: evaluate(ctx.val), lr=o.lr,
                  weight_decay=o.weight_decay, batch_size=o.batch_size, steps=ctx.steps,
                  warmup_fraction=o.warmup_fraction, val_every=o.val_every, seed=cfg.seed,
                  device=ctx.device, param_groups=param_groups, fetch=fetch)
    start = time.perf_counter()
    test = evaluate(ctx.test)
    val = evaluate(ctx.val)
    return history, val, test, {**history.timings(), "evaluation_s": time.perf_counter() - start}
