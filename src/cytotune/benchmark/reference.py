"""The baseline the benchmark measures cytotune against: the work done the way the reference
study's code does it (fairly, with the same models, data, splits and step counts).

What makes it slow, item by item as the performance issue lists it:
- every image decoded from its file (JPEG) and resized on every use, by a torch DataLoader
  whose worker processes are re-created every epoch (one step per epoch in few-shot runs);
- a full validation pass after every optimizer step;
- linear probes extract their features again for every run;
- the LoRA update formed as a dense (out x in) matrix at every forward (W + s B A);
- fp32, timm's unfused attention, one run at a time.

Nothing here is used by cytotune itself; it exists so that ratios are measured, not assumed.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cytotune.adapters import lora_modules
from cytotune.adapters.layers import LoRALinear
from cytotune.data.images import decode_resized
from cytotune.training.augment import normalise
from cytotune.training.schedule import warmup_cosine


class FileImages(Dataset):
    """Images read and decoded from their files at every access (the reference data path);
    ``augment``: a random flip / right-angle rotation per access, the same family of
    transforms cytotune applies on the device, so both sides train on the same distribution."""

    def __init__(self, paths: Sequence, labels: Sequence[int], preprocessing,
                 augment: bool = False):
        self.paths, self.labels, self.pre = list(paths), list(labels), preprocessing
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        pre = self.pre
        pixels = decode_resized(self.paths[i], pre.effective_resize, pre.image_size,
                                pre.interpolation)
        hwc = torch.from_numpy(np.array(pixels))  # a writable copy
        x = normalise(hwc.permute(2, 0, 1)[None], pre.mean, pre.std)[0]
        if self.augment:
            choice = int(torch.randint(0, 8, ()))
            if choice >= 4:
                x = x.flip(-1)
            x = torch.rot90(x, choice % 4, dims=(-2, -1))
        return x, int(self.labels[i])


def loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int,
           seed: int) -> DataLoader:
    """A fresh DataLoader (and so fresh worker processes when ``workers`` > 0)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)


class DenseLoRALinear(nn.Module):
    """LoRA as the reference code computes it: the dense update W + s * B A at every forward."""

    def __init__(self, layer: LoRALinear):
        super().__init__()
        self.base, self.layer = layer.base, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base.weight
        for key, (start, stop) in self.layer.lora_slices.items():
            delta = torch.zeros_like(weight)
            delta[start:stop] = self.layer.lora_B[key] @ self.layer.lora_A[key] * self.layer.scaling
            weight = weight + delta
        return F.linear(x, weight, self.base.bias)


@contextmanager
def reference_model(model: nn.Module) -> Iterator[nn.Module]:
    """Dense LoRA updates and unfused attention within the block (restored afterwards)."""
    swapped = []
    for name, layer in lora_modules(model):
        if isinstance(layer, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, DenseLoRALinear(layer))
            swapped.append((parent, child, layer))
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in fused:
        m.fused_attn = False
    try:
        yield model
    finally:
        for parent, child, layer in swapped:
            setattr(parent, child, layer)
        for m, value in fused:
            m.fused_attn = value


@torch.no_grad()
def reference_features(backbone: nn.Module, dataset: Dataset, batch_size: int,
                       workers: int) -> torch.Tensor:
    backbone.eval()
    device = _device_of(backbone)
    with reference_model(backbone):
        return torch.cat([backbone(x.to(device)).cpu()
                          for x, _ in loader(dataset, batch_size, False, workers, 0)])


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def reference_linear_probe(backbone: nn.Module, train: Dataset, val: Dataset, test: Dataset, *,
                           lr: float, epochs: int, batch_size: int, seed: int, workers: int,
                           num_classes: int) -> dict[str, float]:
    """One linear-probe run: its own feature extraction, then a head trained with a validation
    pass every epoch; returns the test accuracy of the best-validated epoch."""
    f_train, f_val, f_test = (reference_features(backbone, d, 64, workers) for d in (train, val, test))
    y_train, y_val, y_test = (torch.tensor(d.labels) for d in (train, val, test))
    torch.manual_seed(seed)
    head = nn.Linear(f_train.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    best, best_state = -math.inf, None
    for _ in range(epochs):
        perm = torch.randperm(len(y_train))
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(head(f_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            acc = float((head(f_val).argmax(1) == y_val).float().mean())
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    with torch.no_grad():
        return {"val_accuracy": best,
                "test_accuracy": float((head(f_test).argmax(1) == y_test).float().mean())}


def reference_lora_run(model: nn.Module, train: Dataset, val: Dataset, test: Dataset, *,
                       lr: float, steps: int, batch_size: int, seed: int,
                       workers: int) -> dict[str, float]:
    """One LoRA run (``model``: a classifier whose LoRA and head parameters require grad): a
    fresh loader every epoch, per-use decoding, dense LoRA updates, unfused attention, fp32, and
    a full validation pass after every step; returns timings and the best-validated test
    accuracy (the state at the best step is kept, as cytotune keeps it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    scheduler = warmup_cosine(optimizer, steps, round(0.1 * steps))
    step, epoch, best, best_state = 0, 0, -math.inf, None
    train_s = val_s = 0.0
    with reference_model(model):
        while step < steps:
            for x, y in loader(train, min(batch_size, len(train)), True, workers, seed + epoch):
                x, y = x.to(_device_of(model)), y.to(_device_of(model))
                t0 = time.perf_counter()
                model.train()
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                t1 = time.perf_counter()
                acc = _accuracy(model, val, workers)
                val_s += time.perf_counter() - t1
                train_s += t1 - t0
                if acc > best:
                    best = acc
                    best_state = {n: p.detach().clone() for n, p in model.named_parameters()
                                  if p.requires_grad}
                if step >= steps:
                    break
            epoch += 1
        if best_state is not None:
            with torch.no_grad():
                named = dict(model.named_parameters())
                for n, v in best_state.items():
                    named[n].copy_(v)
        test_accuracy = _accuracy(model, test, workers)
    return {"val_accuracy": best, "test_accuracy": test_accuracy, "train_step_s": train_s,
            "validation_s": val_s}


@torch.no_grad()
def _accuracy(model: nn.Module, dataset: Dataset, workers: int) -> float:
    model.eval()
    correct = 0
    for x, y in loader(dataset, 64, False, workers, 0):
        correct += int((model(x.to(_device_of(model))).argmax(1).cpu() == y).sum())
    return correct / max(1, len(dataset))
