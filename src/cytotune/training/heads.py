"""Many linear heads trained together on cached features: the linear probes of a sweep.

A sweep's linear probes on one backbone and data set differ only in their seed (which images,
which initial head, which batch order), learning rate and sample size. Training them one by one
repeats one tiny matmul per step K times with K optimiser calls; here every step gathers each
head's own batch from its own features, runs all K heads as one batched matmul and takes one
AdamW step over K parameter groups (one per head, with the head's own learning rate and
schedule). Each head still sees exactly what it would alone: its batches from its own seeded
order, its own warm-up + cosine schedule, validation on its own schedule and the best step by
:class:`~cytotune.training.loop.BestState`; a head whose steps are done drops out of the batch.
The result equals :func:`cytotune.training.loop.fit` run per head (tested), within float rounding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from cytotune.training.loop import (BestState, EvalResult, FitHistory, batch_order,
                                    record_evaluation)
from cytotune.training.schedule import per_group_warmup_cosine
from cytotune.training.task import SINGLE_LABEL, Task


@dataclass
class HeadProblem:
    """One linear probe: its head (initialised), its training features and how to train it."""

    head: nn.Linear
    features: torch.Tensor  # (N, D) training features on the device
    targets: torch.Tensor  # (N,) class indices or (N, L) 0/1 rows, on the device
    validate: Optional[Callable[[nn.Linear], EvalResult]]
    lr: float
    weight_decay: float
    batch_size: int
    steps: int
    warmup_fraction: float
    val_every: int
    seed: int


def fit_linear_heads(problems: list[HeadProblem], device: torch.device,
                     task: Task = SINGLE_LABEL) -> list[FitHistory]:
    """Train every problem's head in place (best validated state restored); one history each."""
    if not problems:
        return []
    dims = {(p.head.in_features, p.head.out_features) for p in problems}
    if len(dims) != 1:
        raise ValueError(f"heads of one group must share their shape, got {sorted(dims)}")
    groups = [{"params": list(p.head.parameters()), "lr": p.lr, "weight_decay": p.weight_decay}
              for p in problems]
    optimizer = torch.optim.AdamW(groups, fused=device.type == "cuda")
    scheduler = per_group_warmup_cosine(
        optimizer, [(p.steps, round(p.warmup_fraction * p.steps)) for p in problems])
    orders = [batch_order(len(p.targets), min(p.batch_size, len(p.targets)),
                          torch.Generator().manual_seed(p.seed)) for p in problems]
    # every head's features in one tensor: a step's batches are then one gather
    offsets = torch.tensor([0] + [len(p.targets) for p in problems]).cumsum(0)[:-1].tolist()
    all_features = torch.cat([p.features for p in problems])
    histories = [FitHistory() for _ in problems]
    bests = [BestState(lambda h=p.head: dict(h.named_parameters())) for p in problems]
    start = time.perf_counter()
    for step in range(1, max(p.steps for p in problems) + 1):
        active = [k for k, p in enumerate(problems) if step <= p.steps]
        batches = [next(orders[k]) for k in active]
        width = max(len(b) for b in batches)
        index = torch.zeros(len(active), width, dtype=torch.long)
        mask = torch.zeros(len(active), width)
        for row, (k, batch) in enumerate(zip(active, batches)):
            index[row, :len(batch)] = batch + offsets[k]
            mask[row, :len(batch)] = 1.0
        index, mask = index.to(device), mask.to(device)
        x = all_features[index]  # (K, B, D)
        weight = torch.stack([problems[k].head.weight for k in active])  # (K, C, D)
        bias = torch.stack([problems[k].head.bias for k in active])  # (K, C)
        logits = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))  # (K, B, C)
        targets = torch.stack([_padded(problems[k].targets, b, width) for k, b in
                               zip(active, batches)])
        per_item = task.loss(logits.flatten(0, 1), targets.flatten(0, 1),
                             reduction="none").view(len(active), width)
        losses = (per_item * mask).sum(1) / mask.sum(1)  # each head's mean over its own batch
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # heads share nothing: each gets exactly its own gradient
        optimizer.step()
        scheduler.step()
        for row, k in enumerate(active):
            p, history = problems[k], histories[k]
            history.steps = step
            if p.validate is not None and (step % p.val_every == 0 or step == p.steps):
                with torch.no_grad():
                    result = p.validate(p.head)
                record_evaluation(history, step, p.steps, float(losses[row].detach()), result)
                bests[k].offer(history, step, result)
    elapsed = time.perf_counter() - start
    for p, history, best in zip(problems, histories, bests):
        best.restore(history, dict(p.head.named_parameters()))
        history.seconds = elapsed / len(problems)  # the group's time, shared out
    return histories


def _padded(targets: torch.Tensor, batch: torch.Tensor, width: int) -> torch.Tensor:
    """The batch's targets, padded to ``width`` rows with copies of the first (masked out)."""
    rows = targets[batch.to(targets.device)]
    if len(batch) == width:
        return rows
    pad = rows[:1].expand(width - len(batch), *rows.shape[1:])
    return torch.cat([rows, pad])
