"""Time the linear-probe heads of a grid: trained together (cytotune.training.heads) against the
same heads trained one by one with cytotune.training.loop.fit, in the same process.

    .venv/bin/python scripts/bench_heads.py            # MLCC-sized: 570 x 192 features, 15 heads

Prints both wall times and their ratio; the heads' shapes, steps and validation cadence are those
of the bench's linear case (ViT-Tiny features, batch 32, 100 epochs, validation every epoch).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from cytotune.training.heads import HeadProblem, fit_linear_heads
from cytotune.training.loop import evaluate_logits, fit

CPU = torch.device("cpu")


def problems(n_train: int, n_val: int, dim: int, classes: int, epochs: int, batch: int,
             seeds: list[int], lrs: list[float]) -> list[HeadProblem]:
    g = torch.Generator().manual_seed(0)
    f_train, y_train = torch.randn(n_train, dim, generator=g), torch.randint(0, classes, (n_train,), generator=g)
    f_val, y_val = torch.randn(n_val, dim, generator=g), torch.randint(0, classes, (n_val,), generator=g)
    per_epoch = -(-n_train // batch)
    out = []
    for seed in seeds:
        for lr in lrs:
            torch.manual_seed(seed)
            out.append(HeadProblem(
                head=torch.nn.Linear(dim, classes), features=f_train, targets=y_train,
                validate=lambda h: evaluate_logits(h, lambda i: f_val[i], y_val, 4096),
                lr=lr, weight_decay=1e-2, batch_size=batch, steps=epochs * per_epoch,
                warmup_fraction=0.1, val_every=per_epoch, seed=seed))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=570)
    p.add_argument("--val", type=int, default=190)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    make = lambda: problems(args.train, args.val, args.dim, args.classes, args.epochs,  # noqa: E731
                            args.batch_size, [1, 2, 3], [1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    together = make()
    start = time.perf_counter()
    fit_linear_heads(together, CPU)
    together_s = time.perf_counter() - start
    alone = make()
    start = time.perf_counter()
    for problem in alone:
        head = copy.deepcopy(problem.head)
        fit(head, lambda idx, h=head, q=problem: torch.nn.functional.cross_entropy(
                h(q.features[idx]), q.targets[idx]),
            len(problem.targets), lambda h=head, q=problem: q.validate(h), lr=problem.lr,
            weight_decay=problem.weight_decay, batch_size=problem.batch_size, steps=problem.steps,
            warmup_fraction=problem.warmup_fraction, val_every=problem.val_every,
            seed=problem.seed, device=CPU)
    alone_s = time.perf_counter() - start
    print(f"{len(together)} heads, {together[0].steps} steps each, {args.train} x {args.dim} "
          f"features: together {together_s:.2f} s, one by one {alone_s:.2f} s: "
          f"{alone_s / together_s:.1f}x")


if __name__ == "__main__":
    main()
