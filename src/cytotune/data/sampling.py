"""Seeded subsets of a training pool: k images per class (few-shot) or p% per class.

Each class's pool is shuffled once by a generator seeded with (seed, class), and a sample is a
prefix of that order. So samples are *nested*: for one seed, the 4-shot set contains the 2-shot
set and 50% contains 10%, which makes few-shot and data-fraction curves compare like with like
(each point adds images instead of drawing a new set). A class's order does not depend on k,
the other classes or the pool's order.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from cytotune.data.dataset import DataError

FEW_SHOT_VALIDATION_MAX = 4  # val images per class in few-shot runs, as in the reference study


def _class_order(labels: np.ndarray, pool: np.ndarray, class_index: int, seed: int) -> np.ndarray:
    """The pool's images of one class in a fixed random order for (seed, class)."""
    members = np.sort(pool[labels[pool] == class_index])
    rng = np.random.default_rng([int(seed), int(class_index)])
    return members[rng.permutation(len(members))]


def _as_pool(labels: Sequence[int] | np.ndarray,
             pool_indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    pool = np.unique(np.asarray(pool_indices, dtype=np.int64))
    if len(pool) and (pool[0] < 0 or pool[-1] >= len(labels)):
        raise DataError(f"pool_indices must lie in 0..{len(labels) - 1}")
    return labels, pool


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise DataError(f"seed={seed} must be >= 0")


def few_shot(labels: Sequence[int] | np.ndarray, pool_indices: Sequence[int] | np.ndarray,
             k: int, seed: int, class_names: Sequence[str]) -> np.ndarray:
    """``k`` images of every class from ``pool_indices``; sorted int64 indices.

    Nested in ``k`` for a fixed seed. Classes with fewer than ``k`` pool images (the training
    split's) are an error naming each of them with its count (a "k-shot" result with fewer shots
    would be mislabelled).
    """
    if k < 1:
        raise DataError(f"k={k} must be >= 1 images per class")
    _check_seed(seed)
    labels, pool = _as_pool(labels, pool_indices)
    orders = [_class_order(labels, pool, i, seed) for i in range(len(class_names))]
    short = [f"{name!r} has {len(order)}" for name, order in zip(class_names, orders)
             if len(order) < k]
    if short:  # every short class at once, so one fix (smaller k, more data) settles it
        raise DataError(f"--shots {k} needs {k} training images per class; the training split "
                        f"has fewer for {len(short)} class(es): {', '.join(short)}")
    chosen = [order[:k] for order in orders]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def few_shot_validation(labels: Sequence[int] | np.ndarray,
                        val_indices: Sequence[int] | np.ndarray, k: int, seed: int,
                        class_names: Sequence[str]) -> np.ndarray:
    """Validation images for a ``k``-shot run: ``min(k, 4)`` per class, as the reference study.

    A few-shot run has no large labelled val set, so its val set is kept as small as its train
    set; classes with fewer images give all they have (no error).
    """
    if k < 1:
        raise DataError(f"k={k} must be >= 1 images per class")
    _check_seed(seed)
    labels, pool = _as_pool(labels, val_indices)
    per_class = min(k, FEW_SHOT_VALIDATION_MAX)
    chosen = [_class_order(labels, pool, class_index, seed)[:per_class]
              for class_index in range(len(class_names))]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def fraction(labels: Sequence[int] | np.ndarray, pool_indices: Sequence[int] | np.ndarray,
             percent: float, seed: int) -> np.ndarray:
    """A stratified ``percent``% of ``pool_indices`` (0 < percent <= 100); sorted int64 indices.

    Each class present in the pool keeps round(percent% of its images) (halves round up), at
    least one; 100 returns the whole pool. Nested in ``percent`` for a fixed seed.
    """
    if not 0 < percent <= 100:
        raise DataError(f"percent={percent} must be in (0, 100]")
    _check_seed(seed)
    labels, pool = _as_pool(labels, pool_indices)
    if percent == 100:
        return pool
    chosen = []
    for class_index in np.unique(labels[pool]):
        order = _class_order(labels, pool, int(class_index), seed)
        n_keep = max(1, math.floor(len(order) * percent / 100.0 + 0.5))
        chosen.append(order[:n_keep])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def few_shot_multilabel(targets: np.ndarray, pool_indices: Sequence[int] | np.ndarray, k: int,
                        seed: int, label_names: Sequence[str], *, strict: bool = True) -> np.ndarray:
    """Images from ``pool_indices`` giving every label at least ``k`` positive images.

    The multi-label meaning of "k shots": labels are visited in order; each label's positive
    pool images are shuffled by a generator seeded with (seed, label) and taken in that order,
    skipping none, until the chosen set (which already holds images picked for earlier labels,
    some of them positive for this one) has ``k`` positives of it. An image may thus count for
    several labels, and images without any positive label are never picked. With ``strict``, a
    label with fewer than ``k`` positives in the pool is an error; without (validation sets), it
    gives all it has.
    """
    if k < 1:
        raise DataError(f"k={k} must be >= 1 positive images per label")
    _check_seed(seed)
    targets = np.asarray(targets)
    pool = np.unique(np.asarray(pool_indices, dtype=np.int64))
    if strict:
        counts = [int((targets[pool, j] > 0).sum()) for j in range(len(label_names))]
        short = [f"{name!r} has {n}" for name, n in zip(label_names, counts) if n < k]
        if short:
            raise DataError(f"--shots {k} needs {k} positive training images per label; the "
                            f"training split has fewer for {len(short)} label(s): "
                            f"{', '.join(short)}")
    chosen: set[int] = set()
    for j in range(len(label_names)):
        positives = np.sort(pool[targets[pool, j] > 0])
        have = sum(1 for i in chosen if targets[i, j] > 0)
        order = positives[np.random.default_rng([int(seed), int(j)]).permutation(len(positives))]
        for index in order:
            if have >= k:
                break
            if int(index) not in chosen:
                chosen.add(int(index))
                have += 1
    return np.asarray(sorted(chosen), dtype=np.int64)
