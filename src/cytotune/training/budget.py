"""Label-budget runs: choose N training images without reading a label, then reveal theirs.

The study draws k labelled images per class from a pool that is already labelled. In a lab
nothing is labelled yet: an expert labels N images, and which N decides how far they go. A
budget run (``budget: N``, ``sampling: random|kmeans|typiclust|probcover``) mimics that on the
training split: the strategy (:mod:`cytotune.data.selection`) sees the pool's frozen-backbone
features only, picks N, and only then are the N labels looked up. A class that received no image
is reported (and the run trains on the classes it has: their test images still count, as
errors); fewer than two classes is refused, since no classifier can be trained.

Validation is the few-shot one (:func:`cytotune.data.sampling.few_shot_validation` with
``ceil(N / classes)`` shots, so at most 4 per class) and does not depend on the strategy: every
strategy of one seed is selected, trained and scored alike, so strategies compare paired.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cytotune.data import DataError
from cytotune.data.selection import select
from cytotune.training.features import FeatureCache
from cytotune.training.progress import observer

log = logging.getLogger(__name__)


def budget_shots(budget: int, num_classes: int) -> int:
    """The images per class a budget amounts to on average (rounded up): what the few-shot
    schedule (50 + 100 x shots steps) and the validation sample take for ``shots``."""
    return max(1, math.ceil(int(budget) / max(1, int(num_classes))))


@dataclass
class BudgetPick:
    """The images a budget run trains on, in the order the strategy chose them, and what their
    revealed labels say."""

    rows: np.ndarray  # data-set rows, selection order
    sampling: str
    per_class: dict[str, int]  # class -> chosen images (every class, zeros included)
    paths: list[str]  # the chosen images, selection order

    @property
    def missing(self) -> list[str]:
        return [name for name, n in self.per_class.items() if n == 0]

    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` keeps (``label_budget``)."""
        return {"budget": int(len(self.rows)), "sampling": self.sampling,
                "per_class": dict(self.per_class), "missing_classes": self.missing,
                "images": list(self.paths)}


def choose_rows(features: np.ndarray, pool_rows: np.ndarray, budget: int, sampling: str,
                seed: int) -> np.ndarray:
    """The ``budget`` pool rows ``sampling`` picks from the pool's ``features`` (one row each,
    in ``pool_rows`` order). Takes no labels: nothing here can depend on them."""
    if budget > len(pool_rows):
        raise DataError(f"--budget {budget} asks for more images than the training split has "
                        f"({len(pool_rows)})")
    picks = select(sampling, np.asarray(features, dtype=np.float32), int(budget), int(seed))
    return np.asarray(pool_rows, dtype=np.int64)[np.asarray(picks, dtype=np.int64)]


def reveal_labels(rows: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  sampling: str, paths: Sequence[str] = ()) -> BudgetPick:
    """Look up the chosen images' labels; a class with no image is logged, fewer than two
    classes is an error naming what was picked."""
    chosen = np.asarray(labels)[np.asarray(rows, dtype=np.int64)]
    counts = np.bincount(chosen, minlength=len(class_names))
    pick = BudgetPick(rows=np.asarray(rows, dtype=np.int64), sampling=sampling,
                      per_class={name: int(n) for name, n in zip(class_names, counts)},
                      paths=[str(paths[int(r)]) for r in rows] if len(paths) else [])
    present = [name for name, n in pick.per_class.items() if n]
    if len(present) < 2:
        raise DataError(f"--budget {len(rows)} --sampling {sampling}: the chosen images are all "
                        f"of class {present[0] if present else '?'!r}, and a classifier needs "
                        f"two classes; raise the budget or try another sampling or seed")
    if pick.missing:
        log.warning("--budget %d --sampling %s: no image of %d class(es): %s; the run trains "
                    "on the other %d (their test images still count)", len(rows), sampling,
                    len(pick.missing), ", ".join(pick.missing), len(present))
    log.info("label budget: %d images chosen by %s: %s", len(rows), sampling,
             ", ".join(f"{k} {v}" for k, v in pick.per_class.items()))
    return pick


def choose_budget(config, prepared, pool, backbone, device: torch.device) -> BudgetPick:
    """Budget mode of a run: the decoded training split ``pool`` (SplitTensors) goes through the
    frozen backbone (feature cache), the strategy picks ``config.budget`` images from its
    features, and only then are their labels read. ``prepared`` (the run's RunData) keeps the
    picked images as its training indices."""
    cache = FeatureCache(Path(config.cache_dir) if config.cache_dir else None)
    observer().phase("features", len(pool.rows))
    was_training = backbone.training
    backbone.to(device).eval()
    feats, _, _ = cache.features(backbone, backbone.weights_fingerprint(), pool.pixels,
                                 pool.images_key, device, config.precision, pool.image_keys)
    backbone.train(was_training)
    rows = choose_rows(feats.numpy(), pool.rows, config.budget, config.sampling, config.seed)
    pick = reveal_labels(rows, prepared.data.labels, prepared.data.class_names, config.sampling,
                         prepared.data.paths)
    prepared.indices.train = np.sort(rows)
    return pick
