"""Train/val/test splits: the source's own when it has one, else seeded and stratified.

Results must be comparable across methods and reruns, so a split depends only on the data and
the seed; when images carry a group (patient, slide) no group is ever in two splits, since
near-duplicate cells from one slide in train and test would inflate every score.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

from cytotune.data.dataset import SPLIT_NAMES, DataError, LabelledImages

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitIndices:
    """Sorted int64 indices into a :class:`LabelledImages` for each split (val may be empty)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """("train", indices), ("val", ...), ("test", ...), in that order."""
        for name in SPLIT_NAMES:
            yield name, getattr(self, name)


def make_splits(data: LabelledImages, seed: int, val_fraction: float = 0.2,
                test_fraction: float = 0.2) -> SplitIndices:
    """Split ``data`` into train/val/test, deterministically for a given ``seed``.

    If ``data.splits`` is set it is used as is; when it has no val images, a stratified
    ``val_fraction`` of the train images becomes val. Otherwise ``test_fraction`` and
    ``val_fraction`` of all images are drawn, stratified by class (scikit-learn's
    StratifiedShuffleSplit), or, when ``data.groups`` is set, by whole groups
    (StratifiedGroupKFold, so fractions are approximate). Every class in val/test must also be in
    train.
    """
    _check_fractions(val_fraction, test_fraction)
    if data.splits is not None:
        split = _given_split(data, seed, val_fraction)
    else:
        needed = 1 + (val_fraction > 0) + (test_fraction > 0)
        _require_class_sizes(data, np.arange(len(data)), needed, "a train/val/test split")
        everything = np.arange(len(data), dtype=np.int64)
        rest, test = _hold_out(data, everything, test_fraction, seed, "test")
        train, val = _hold_out(data, rest, val_fraction / (1.0 - test_fraction), seed, "val")
        split = SplitIndices(train=train, val=val, test=test)
    _require_train_covers(data, split)
    return split


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for option, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"{option}={value} must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction = {val_fraction + test_fraction} must be "
                        f"< 1 to leave train images")


def _given_split(data: LabelledImages, seed: int, val_fraction: float) -> SplitIndices:
    assert data.splits is not None
    train, val, test = (np.flatnonzero(data.splits == name).astype(np.int64)
                        for name in SPLIT_NAMES)
    if len(train) == 0:
        raise DataError(f"{data.name}: the source defines splits but has no train images")
    if len(val) == 0 and val_fraction > 0:
        _require_class_sizes(data, train, 2, "carving a val split out of train")
        train, val = _hold_out(data, train, val_fraction, seed, "val")
    split = SplitIndices(train=train, val=val, test=test)
    _warn_shared_groups(data, split)
    return split


def _hold_out(data: LabelledImages, pool: np.ndarray, fraction: float, seed: int,
              held_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` into (rest, held) with ``fraction`` held out, stratified, group-aware."""
    if fraction <= 0:
        return np.sort(pool), np.empty(0, dtype=np.int64)
    labels = data.labels[pool]
    try:
        if data.groups is None:
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
            rest, held = next(splitter.split(pool, labels))
        else:
            n_folds = max(2, int(round(1.0 / fraction)))
            splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            with warnings.catch_warnings():  # small classes are checked by us afterwards
                warnings.filterwarnings("ignore", message="The least populated class")
                rest, held = next(splitter.split(pool, labels, groups=data.groups[pool]))
    except ValueError as err:
        raise DataError(f"{data.name}: cannot hold out a stratified {held_name} split of "
                        f"{fraction:.3g} from {len(pool)} images: {err}") from err
    return np.sort(pool[rest]), np.sort(pool[held])


def _require_class_sizes(data: LabelledImages, pool: np.ndarray, needed: int, purpose: str) -> None:
    counts = np.bincount(data.labels[pool], minlength=data.num_classes)
    for class_name, count in zip(data.class_names, counts):
        if 0 < count < needed:
            raise DataError(f"{data.name}: class {class_name!r} has only {count} image(s), too few "
                            f"for {purpose} (needs at least {needed}); add images or drop the class")


def _require_train_covers(data: LabelledImages, split: SplitIndices) -> None:
    train_classes = set(data.labels[split.train].tolist())
    for name, indices in split.items():
        unseen = sorted(set(data.labels[indices].tolist()) - train_classes)
        if unseen:
            class_name = data.class_names[unseen[0]]
            count = int((data.labels[indices] == unseen[0]).sum())
            hint = (" (its images come from too few groups to spread across splits)"
                    if data.groups is not None and data.splits is None else "")
            raise DataError(f"{data.name}: class {class_name!r} has {count} image(s) in {name} "
                            f"but none in train, so no model can learn it{hint}")


def _warn_shared_groups(data: LabelledImages, split: SplitIndices) -> None:
    """A source's own split that puts one group in two splits is its choice, but worth a word."""
    if data.groups is None:
        return
    seen: dict[object, str] = {}
    for name, indices in split.items():
        for group in set(data.groups[indices].tolist()):
            first: Optional[str] = seen.setdefault(group, name)
            if first != name:
                logger.warning("%s: group %r is in both %s and %s in the source's own split",
                               data.name, group, first, name)
                return
