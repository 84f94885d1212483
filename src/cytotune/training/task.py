"""What kind of prediction a run learns: one class per image, or any subset of labels.

The training loop, the methods and the runner never branch on the kind of labels; they ask the
run's :class:`Task` for the loss, the probabilities, the validation score the best step is
selected by, and the metrics.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from cytotune.training.metrics import classification_metrics, multilabel_metrics


class Task:
    """Single-label classification: softmax, cross-entropy, selection by accuracy."""

    name = "single_label"
    multi_label = False

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, reduction=reduction)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)

    def accuracy(self, probs: torch.Tensor, targets: torch.Tensor) -> float:
        return float((probs.argmax(-1) == targets).float().mean())

    def score(self, probs: torch.Tensor, targets: torch.Tensor, loss: float) -> float:
        """The validation number the best step is chosen by (higher is better)."""
        return self.accuracy(probs, targets)

    def metrics(self, targets: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        return classification_metrics(targets, probs, names)


class MultiLabelTask(Task):
    """Multi-label: one sigmoid per label, binary cross-entropy, selection by mean AUROC.

    Targets are float (N, L) 0/1 matrices. When no label of the validation set has both positives
    and negatives (tiny few-shot sets), the score falls back to minus the validation loss.
    """

    name = "multi_label"
    multi_label = True

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        per_item = F.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                      reduction="none").mean(-1)
        if reduction == "none":
            return per_item
        return per_item.sum() if reduction == "sum" else per_item.mean()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def accuracy(self, probs: torch.Tensor, targets: torch.Tensor) -> float:
        """Label-wise accuracy at the 0.5 threshold."""
        return float(((probs >= 0.5).float() == targets.float()).float().mean())

    def score(self, probs: torch.Tensor, targets: torch.Tensor, loss: float) -> float:
        y, p = targets.numpy(), probs.numpy()
        aurocs = [roc_auc_score(y[:, j], p[:, j]) for j in range(y.shape[1])
                  if 0 < y[:, j].sum() < len(y)]
        return float(np.mean(aurocs)) if aurocs else -loss if math.isfinite(loss) else -math.inf

    def metrics(self, targets: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        return multilabel_metrics(targets, probs, names)


SINGLE_LABEL = Task()
MULTI_LABEL = MultiLabelTask()


def task_for(multi_label: bool) -> Task:
    return MULTI_LABEL if multi_label else SINGLE_LABEL
