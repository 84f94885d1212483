"""What ``cytotune bench`` measures and with which defaults, apart from the cases themselves, so
the command's parser (and ``cytotune --help``) can show them without importing torch."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

CASES = ("features", "linear", "lora", "packed")  # the default set
# on request, no baseline: fp32 vs bf16; peak memory; cost of the cache content checks
EXTRA_CASES = ("precision", "memory", "cache_check")


@dataclass
class BenchSettings:
    data: str
    layout: Optional[str] = None
    model: str = "timm:vit_tiny_patch16_224"
    weights: Optional[str] = None  # None with random_weights: a random checkpoint is written
    random_weights: bool = True
    image_size: Optional[int] = None  # None: the card's own input size
    device: str = "auto"
    precision: str = "auto"  # cytotune's side ("auto": bf16 on CUDA, fp32 on CPU); baseline fp32
    seeds: tuple[int, ...] = (1, 2, 3)
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    linear_epochs: int = 100
    shots: int = 4
    lora_steps: int = 60
    pack: int = 4
    peak_tflops: Optional[float] = None  # the device's peak (e.g. bf16 dense): MFU is reported
    compile: bool = False  # cytotune's LoRA runs through torch.compile (runs alone, not packed)
    rank: int = 2  # LoRA rank and targets of the lora and packed cases (the study's Exp. 2)
    targets: Optional[tuple[str, ...]] = None  # None: the card's default (q, v for ViTs)
    baseline_workers: int = field(default_factory=lambda: min(5, os.cpu_count() or 1))
    batch_size: int = 32
    check_repeats: int = 5  # cache_check: timed runs per verification mode
    skip_baseline: bool = False  # lora case: cytotune's side only (a short GPU lease, say)
    # cytotune's training augmentation (optim.augment) in the LoRA cases; the baseline flips and
    # rotates whenever it includes dihedral, and has no stain augmentation
    augment: str = "on"
