"""Channels-last benchmark: does feeding a convolutional backbone channels-last (NHWC) pixels
speed up cytotune's forward passes and LoRA steps on this machine?

    PYTHONPATH=src .venv/bin/python scripts/bench_channels_last.py            # EfficientNet-Lite0
    PYTHONPATH=src .venv/bin/python scripts/bench_channels_last.py --card efficientnet-lite0-tiny

A :class:`~cytotune.models.backbone.Backbone` of a convolutional card turns its input
channels-last (``Backbone.channels_last``, on by default for networks with more than one
``Conv2d``). This script times the same backbone with that switch on and off, interleaved round
by round in one process so that both see the same machine load:

- ``forward``: images/s of ``backbone(pixels)`` under ``torch.inference_mode`` (feature
  extraction, evaluation, ``cytotune predict``);
- ``lora_fp32`` / ``lora_bf16``: seconds per LoRA training step (the card's default targets,
  rank 2, a linear head, AdamW, batch ``--batch``), in float32 and under CPU bfloat16 autocast
  (``--precision bf16`` runs).

It prints the medians of each format and the ratio channels-last / NCHW (a speed-up above 1), and
checks that both formats give the same features. Weights are random (``pretrained=False``): the
timing does not depend on them.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cytotune.training.features import autocast_for


def _lora_classifier(card_name: str, classes: int):
    from cytotune.adapters import LoRAConfig, apply_lora, mark_only_lora_trainable
    from cytotune.models.build import build_backbone
    from cytotune.training.methods.base import Classifier

    backbone = build_backbone(card_name, pretrained=False)
    card = backbone.card
    apply_lora(backbone.model, LoRAConfig(rank=2, alpha=1.0, targets=card.default_lora_targets),
               card.lora_targets)
    model = Classifier(backbone, nn.Linear(card.feature_dim, classes))
    mark_only_lora_trainable(model, keep_trainable=("head.*",))
    return backbone, model.train()


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--card", default="efficientnet-lite0")
    parser.add_argument("--batch", type=_positive, default=32)
    parser.add_argument("--rounds", type=_positive, default=4, help="interleaved rounds per format")
    parser.add_argument("--repeats", type=_positive, default=3, help="timed calls per round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from cytotune.models.errors import UnknownModelError
    try:
        backbone, model = _lora_classifier(args.card, classes=4)
    except UnknownModelError as exc:
        parser.error(str(exc).splitlines()[0])
    size = backbone.card.preprocessing.image_size
    pixels = torch.randn(args.batch, 3, size, size)
    labels = torch.randint(0, 4, (args.batch,))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    print(f"card {backbone.card.name}, {size} px, batch {args.batch}, {torch.get_num_threads()} "
          f"threads; channels_last by default: {backbone.channels_last}")

    def forward() -> None:
        with torch.inference_mode():
            backbone(pixels)

    def lora_step(precision: str):
        def step() -> None:  # the runs' own autocast; Classifier computes fp32 logits
            with autocast_for(torch.device("cpu"), precision):
                logits = model(pixels)
            loss = nn.functional.cross_entropy(logits, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return step

    with torch.inference_mode():
        backbone.eval()
        backbone.channels_last = False
        reference = backbone(pixels)
        backbone.channels_last = True
        difference = (backbone(pixels) - reference).abs().max().item()
    model.train()
    print(f"features: largest |NHWC - NCHW| = {difference:.2e} (largest |feature| "
          f"{reference.abs().max().item():.2f})")

    cases = {"forward": forward, "lora_fp32": lora_step("fp32"), "lora_bf16": lora_step("bf16")}
    times: dict[tuple[str, bool], list[float]] = {(c, f): [] for c in cases for f in (False, True)}
    for name, fn in cases.items():
        for fmt in (False, True):  # warm-up: first calls pick kernels and allocate
            backbone.channels_last = fmt
            fn()
    for _ in range(args.rounds):
        for name, fn in cases.items():
            for fmt in (False, True):
                backbone.channels_last = fmt
                times[(name, fmt)] += _time(fn, args.repeats)

    print(f"{'case':<10} {'NCHW':>12} {'channels_last':>14} {'speed-up':>9}")
    for name in cases:
        nchw, nhwc = (statistics.median(times[(name, f)]) for f in (False, True))
        if name == "forward":
            print(f"{name:<10} {args.batch / nchw:>8.1f} im/s {args.batch / nhwc:>10.1f} im/s "
                  f"{nchw / nhwc:>8.2f}x")
        else:
            print(f"{name:<10} {nchw:>10.3f} s {nhwc:>12.3f} s {nchw / nhwc:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
