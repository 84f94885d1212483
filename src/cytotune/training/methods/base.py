"""What every training method receives and returns, and the pieces several methods share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cytotune.training.config import TrainConfig
from cytotune.training.features import FeatureCache
from cytotune.training.loop import EvalResult, FitHistory
from cytotune.training.task import SINGLE_LABEL, Task


@dataclass
class SplitTensors:
    """Decoded images of one split, ready for the device."""

    pixels: torch.Tensor  # uint8 (N, 3, S, S), CPU
    labels: torch.Tensor  # int64 (N,); multi-label: float32 (N, L) 0/1 targets
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


def new_head(feature_dim: int, num_classes: int, seed: int, device: torch.device) -> nn.Linear:
    """A linear head initialised from ``seed`` without disturbing the global generator."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    head = nn.Linear(feature_dim, num_classes)
    torch.random.set_rng_state(generator_state)
    return head.to(device)


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
