"""Heads of the few-shot probes on frozen features (``prototype``, ``knn``, ``tip-adapter(-f)``).

They are ordinary modules from features to logits, so evaluation, ``predict`` and ``cytotune.load``
use them like a linear head; their state is plain tensors (head.safetensors), never a pickle.
``logreg`` needs none of these: its classifier is a plain linear head.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Prototype logits are this times a cosine similarity. Cosines lie in [-1, 1], so at 1 every
# softmax would be nearly uniform; 10 gives graded probabilities (for AUROC, ECE) and changes no
# prediction. Fixed, never tuned: the method has no hyper-parameter.
PROTOTYPE_TEMPERATURE = 10.0
# kNN logits are log vote shares; a class without a vote gets this share (not log 0 = -inf, which
# would make the cross-entropy infinite)
KNN_FLOOR = 1e-12
# the methods whose head is a TipAdapterHead (training-free, and with fine-tuned keys)
TIP_ADAPTERS: tuple[str, ...] = ("tip-adapter", "tip-adapter-f")


class CenteredCosineHead(nn.Linear):
    """SimpleShot CL2N as a head: ``weight @ normalize(x - center)``, where ``center`` is the mean
    training feature and ``weight`` the unit class means of the centred, normalised training
    features times :data:`PROTOTYPE_TEMPERATURE` (bias 0). Saved tensors: weight, bias, center."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("center", torch.zeros(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(x - self.center, dim=-1))


def prototype_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   temperature: float = PROTOTYPE_TEMPERATURE,
                   missing_ok: bool = False) -> CenteredCosineHead:
    """The CL2N nearest-class-mean classifier of training ``features`` (N, D) with ``labels``.
    ``missing_ok`` (label-budget runs): a class without training images gets no mean and a
    bias of -1e4, so it is never predicted (as the logistic probe does)."""
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing and not missing_ok:
        raise ValueError(f"prototype: classes {missing} have no training image, so no class mean")
    feats = features.float()
    center = feats.mean(0)
    z = F.normalize(feats - center, dim=-1)
    means = torch.zeros(num_classes, feats.shape[1], device=feats.device).index_add_(0, labels, z)
    head = CenteredCosineHead(feats.shape[1], num_classes).to(feats.device)
    with torch.no_grad():
        head.weight.copy_(F.normalize(means, dim=-1) * temperature)
        head.bias.zero_()
        if missing:
            head.bias[missing] = -1e4
        head.center.copy_(center)
    return head.eval()


class CosineKNNHead(nn.Module):
    """Cosine k-nearest neighbours as a head: the k training features most similar to ``x`` vote
    for their labels with weight 1 / cosine distance (exact matches alone win, as in
    scikit-learn's ``weights='distance'``); logits are the log vote shares, so the softmax gives
    the shares back. Saved tensors: keys (unit training features), labels, k, num_classes."""

    def __init__(self, keys: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int):
        super().__init__()
        if not 1 <= k <= len(keys):
            raise ValueError(f"knn: k={k} must be between 1 and the {len(keys)} training images")
        self.register_buffer("keys", F.normalize(keys.float(), dim=-1))
        self.register_buffer("labels", labels.long())
        self.register_buffer("k", torch.tensor(int(k)))
        self.register_buffer("num_classes", torch.tensor(int(num_classes)))

    def vote_shares(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) distance-weighted vote shares of the k nearest training images."""
        distance = (1.0 - F.normalize(x.float(), dim=-1) @ self.keys.T).clamp_min(0.0)
        nearest, index = distance.topk(int(self.k), dim=-1, largest=False)
        exact = nearest == 0
        weights = torch.where(exact.any(-1, keepdim=True), exact.float(), 1.0 / nearest)
        votes = torch.zeros(len(x), int(self.num_classes), device=x.device)
        votes.scatter_add_(1, self.labels[index], weights)
        return votes / votes.sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vote_shares(x).clamp_min(KNN_FLOOR).log()


class TipAdapterHead(nn.Module):
    """Tip-Adapter (Zhang et al., ECCV 2022) as a head on raw image features ``x``:
    ``scale * f @ class_weights.T + alpha * exp(-beta * (1 - f @ keys.T)) @ values`` with
    ``f = normalize(x)``: CLIP's zero-shot logits plus a cache of the unit training features
    (``keys``) and their one-hot labels (``values``). Saved tensors: keys, values, class_weights,
    logit_scale, alpha, beta (all plain tensors)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, class_weights: torch.Tensor,
                 logit_scale: float, alpha: float, beta: float):
        super().__init__()
        self.register_buffer("keys", F.normalize(keys.float(), dim=-1))
        self.register_buffer("values", values.float())
        self.register_buffer("class_weights", F.normalize(class_weights.float(), dim=-1))
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("beta", torch.tensor(float(beta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_with_keys(x, self.keys)

    def logits_with_keys(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The logits with other ``keys`` (Tip-Adapter-F fine-tunes them as a leaf tensor; they
        are not renormalised, as in the paper, where they are a linear layer's weight)."""
        f = F.normalize(x.float(), dim=-1)
        affinity = torch.exp(-self.beta * (1.0 - f @ keys.T))
        return self.logit_scale * f @ self.class_weights.T + self.alpha * affinity @ self.values


def tip_adapter_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     class_weights: torch.Tensor, logit_scale: float, alpha: float = 1.0,
                     beta: float = 1.0) -> TipAdapterHead:
    """The Tip-Adapter head whose cache is the training ``features`` (N, D) with ``labels``."""
    values = F.one_hot(labels.long(), num_classes).float()
    return TipAdapterHead(features, values, class_weights, logit_scale, alpha, beta).eval()


def head_from_tensors(method: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a probe head from its saved tensors (``load_head`` checks them)."""
    if method == "prototype":
        weight = tensors["weight"]
        head = CenteredCosineHead(weight.shape[1], weight.shape[0])
        head.load_state_dict({k: v.float() for k, v in tensors.items()})
        return head.eval()
    if method == "knn":
        return CosineKNNHead(tensors["keys"], tensors["labels"], int(tensors["num_classes"]),
                             int(tensors["k"])).eval()
    if method in TIP_ADAPTERS:
        head = TipAdapterHead(tensors["keys"], tensors["values"], tensors["class_weights"],
                              float(tensors["logit_scale"]), float(tensors["alpha"]),
                              float(tensors["beta"]))
        # exact copies: Tip-Adapter-F's fine-tuned keys are not unit vectors
        head.load_state_dict({k: v.float() for k, v in tensors.items()})
        return head.eval()
    raise ValueError(f"method {method!r} has no probe head")


# the tensors head.safetensors holds for each method whose head is not a plain linear one
PROBE_HEAD_KEYS: dict[str, tuple[str, ...]] = {
    "prototype": ("weight", "bias", "center"),
    "knn": ("keys", "labels", "k", "num_classes"),
    **{method: ("keys", "values", "class_weights", "logit_scale", "alpha", "beta")
       for method in TIP_ADAPTERS},
}
