"""Many linear heads trained together on cached features: the linear probes of a sweep.

A sweep's linear probes on one backbone and data set differ only in their seed (which images,
which initial head, which batch order), learning rate and sample size. Training them one by one
repeats one tiny matmul per step K times with K optimiser calls; here the K heads are stacked
into one (K, C, D) weight, every step gathers each head's own batch from its own features, runs
all heads as one batched matmul and takes one :class:`StackedAdamW` step with each head's own
learning rate from its own schedule. Each head still sees exactly what it would alone: its
batches from its own seeded order, its own warm-up + cosine schedule, validation on its own
schedule and the best step by :class:`~cytotune.training.loop.BestState`; a head whose steps
are done drops out of the batch. The result equals :func:`cytotune.training.loop.fit` run per
head (tested), within float rounding.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from cytotune.training.loop import (BestState, EvalResult, FitHistory, batch_order,
                                    record_evaluation)
from cytotune.training.progress import observer
from cytotune.training.schedule import warmup_cosine_factor
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


class StackedAdamW:
    """AdamW (torch's defaults and update order) over K heads stacked along dim 0 of each
    parameter, with a learning rate and weight decay per head (0 lr: the head is frozen).

    Why not ``torch.optim.AdamW`` with one group per head: its per-group, per-tensor loop took
    about half of a 15-head grid's training time in a cProfile on the project's CPU; here a step
    is a dozen whole-stack tensor ops whatever K is. Equality with torch's AdamW is
    tested (tests/training/test_heads.py).
    """

    def __init__(self, params: list[torch.Tensor], weight_decay: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = params
        self.weight_decay = weight_decay
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(q) for q in params]
        self.exp_avg_sq = [torch.zeros_like(q) for q in params]
        self.step_count = 0

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """One update with ``lr`` (K,) for this step; every head has taken the same number of
        steps (a finished head is frozen by lr 0, its moments no longer matter)."""
        self.step_count += 1
        t = self.step_count
        bias1, bias2_sqrt = 1 - self.beta1 ** t, math.sqrt(1 - self.beta2 ** t)
        for q, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if q.grad is None:
                continue
            shape = (-1,) + (1,) * (q.dim() - 1)
            g = q.grad
            q.mul_((1 - lr * self.weight_decay).view(shape))
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            q.addcdiv_(m * (lr / bias1).view(shape), denom, value=-1.0)


def lr_table(problems: list["HeadProblem"], steps: int, device: torch.device) -> torch.Tensor:
    """(steps, K) learning rates: each head's warm-up + cosine schedule, 0 after its last step."""
    table = torch.zeros(steps, len(problems), dtype=torch.float64)
    for k, p in enumerate(problems):
        warmup = round(p.warmup_fraction * p.steps)
        table[:p.steps, k] = torch.tensor([p.lr * warmup_cosine_factor(t, p.steps, warmup)
                                           for t in range(p.steps)], dtype=torch.float64)
    return table.to(device=device, dtype=torch.float32)


def fit_linear_heads(problems: list[HeadProblem], device: torch.device,
                     task: Task = SINGLE_LABEL) -> list[FitHistory]:
    """Train every problem's head in place (best validated state restored); one history each."""
    if not problems:
        return []
    dims = {(p.head.in_features, p.head.out_features) for p in problems}
    if len(dims) != 1:
        raise ValueError(f"heads of one group must share their shape, got {sorted(dims)}")
    total = max(p.steps for p in problems)
    with torch.no_grad():
        weight = torch.stack([p.head.weight.detach().to(device) for p in problems]).requires_grad_()
        bias = torch.stack([p.head.bias.detach().to(device) for p in problems]).requires_grad_()
    decay = torch.tensor([p.weight_decay for p in problems], device=device)
    optimizer = StackedAdamW([weight, bias], decay)
    lrs = lr_table(problems, total, device)
    orders = [batch_order(len(p.targets), min(p.batch_size, len(p.targets)),
                          torch.Generator().manual_seed(p.seed)) for p in problems]
    # every distinct features tensor once in one tensor (heads of a grid on one split share
    # theirs): a step's batches are then one gather, and memory does not grow with the heads
    all_features, offsets = _concatenated([p.features for p in problems])
    histories = [FitHistory() for _ in problems]
    bests = [BestState(lambda k=k: {"weight": weight[k], "bias": bias[k]})
             for k in range(len(problems))]

    @torch.no_grad()
    def write_back(k: int) -> None:  # head k's rows of the stack into its own nn.Linear
        problems[k].head.weight.copy_(weight[k])
        problems[k].head.bias.copy_(bias[k])

    start = time.perf_counter()
    progress = observer()
    progress.phase("training", total)
    for step in range(1, total + 1):
        active = [k for k, p in enumerate(problems) if step <= p.steps]
        batches = [next(orders[k]) for k in active]
        width = max(len(b) for b in batches)
        index = torch.zeros(len(active), width, dtype=torch.long)
        mask = torch.zeros(len(active), width)
        for row, (k, batch) in enumerate(zip(active, batches)):
            index[row, :len(batch)] = batch + offsets[k]
            mask[row, :len(batch)] = 1.0
        index, mask = index.to(device), mask.to(device)
        x = all_features[index]  # (A, B, D)
        if len(active) == len(problems):
            w, b = weight, bias
        else:
            rows = torch.tensor(active, device=device)
            w, b = weight[rows], bias[rows]
        logits = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # (A, B, C)
        targets = torch.stack([_padded(problems[k].targets, bt, width) for k, bt in
                               zip(active, batches)])
        per_item = task.loss(logits.flatten(0, 1), targets.flatten(0, 1),
                             reduction="none").view(len(active), width)
        losses = (per_item * mask).sum(1) / mask.sum(1)  # each head's mean over its own batch
        weight.grad = bias.grad = None
        losses.sum().backward()  # heads share nothing: each gets exactly its own gradient
        optimizer.step(lrs[step - 1])
        for row, k in enumerate(active):
            p, history = problems[k], histories[k]
            history.steps = step
            if p.validate is not None and (step % p.val_every == 0 or step == p.steps):
                write_back(k)
                with torch.no_grad():
                    result = p.validate(p.head)
                record_evaluation(history, step, p.steps, float(losses[row].detach()), result)
                bests[k].offer(history, step, result)
        progress.step(step, total)
    progress.phase("evaluation")
    elapsed = time.perf_counter() - start
    for k, (p, history, best) in enumerate(zip(problems, histories, bests)):
        write_back(k)
        best.restore(history, dict(p.head.named_parameters()))
        history.seconds = elapsed / len(problems)  # the group's time, shared out
    return histories


def _concatenated(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """One tensor holding each distinct (by identity) tensor of ``tensors`` once, and the row
    offset of each entry of ``tensors`` in it."""
    first: dict[int, int] = {}  # id -> offset
    unique, offsets, rows = [], [], 0
    for tensor in tensors:
        if id(tensor) not in first:
            first[id(tensor)] = rows
            unique.append(tensor)
            rows += len(tensor)
        offsets.append(first[id(tensor)])
    return (unique[0] if len(unique) == 1 else torch.cat(unique)), offsets


def _padded(targets: torch.Tensor, batch: torch.Tensor, width: int) -> torch.Tensor:
    """The batch's targets, padded to ``width`` rows with copies of the first (masked out)."""
    rows = targets[batch.to(targets.device)]
    if len(batch) == width:
        return rows
    pad = rows[:1].expand(width - len(batch), *rows.shape[1:])
    return torch.cat([rows, pad])
