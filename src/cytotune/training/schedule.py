"""Learning-rate schedule: linear warm-up, then cosine decay to zero."""
from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Scale every group's lr by a warm-up ramp then a half cosine, stepping once per batch."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup_steps))


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr factor of ``step`` (0-based): a linear ramp over ``warmup_steps``, then a half
    cosine to zero at ``total_steps``. Grouped trainers give every run's group its own."""
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def per_group_warmup_cosine(optimizer: torch.optim.Optimizer,
                            schedules: list[tuple[int, int]]) -> torch.optim.lr_scheduler.LambdaLR:
    """One warm-up + cosine schedule per parameter group: ``(total_steps, warmup_steps)`` each."""
    if len(schedules) != len(optimizer.param_groups):
        raise ValueError(f"{len(schedules)} schedules for {len(optimizer.param_groups)} groups")
    for total, _ in schedules:
        if total < 1:
            raise ValueError(f"total_steps must be >= 1, got {total}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s, t=t, w=w: warmup_cosine_factor(s, t, w) for t, w in schedules])
