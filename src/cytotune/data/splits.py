"""Train/val/test splits: the source's own when it has one, else seeded and stratified.

Results must be comparable across methods and reruns, so a split depends only on the data and
the seed; when images carry a group (patient, slide) no group is ever in two splits, since
near-duplicate cells from one slide in train and test would inflate every score.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

from cytotune.data.dataset import SPLIT_NAMES, DataError, LabelledImages

logger = logging.getLogger(__name__)
# Seeded group orders tried per class; the one whose held-out count is nearest the target wins.
_ORDERS_TRIED = 16


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
    StratifiedShuffleSplit), or, when ``data.groups`` is set, by whole groups (see
    :func:`_hold_out_groups`; fractions are then approximate). Every class in val/test must also
    be in train, and training needs at least two classes (so a one-class data set fails
    here, before any image is decoded, not in the metrics after training).
    """
    _check_fractions(val_fraction, test_fraction)
    if data.splits is not None:
        split = _given_split(data, seed, val_fraction)
    else:
        _require_two_classes(data, np.arange(len(data)), "the images to split")
        needed = 1 + (val_fraction > 0) + (test_fraction > 0)
        _require_class_sizes(data, np.arange(len(data)), needed, "a train/val/test split")
        everything = np.arange(len(data), dtype=np.int64)
        rest, test = _hold_out(data, everything, test_fraction, seed, "test")
        train, val = _hold_out(data, rest, val_fraction / (1.0 - test_fraction), seed, "val")
        split = SplitIndices(train=train, val=val, test=test)
    _require_train_covers(data, split)
    _require_two_classes(data, split.train, "the images of the training split")
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
    if data.groups is not None:
        return _hold_out_groups(data, pool, fraction, seed, held_name)
    labels = data.labels[pool]
    try:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        rest, held = next(splitter.split(pool, labels))
    except ValueError as err:
        raise DataError(f"{data.name}: cannot hold out a stratified {held_name} split of "
                        f"{fraction:.3g} from {len(pool)} images: {err}") from err
    return np.sort(pool[rest]), np.sort(pool[held])


def _hold_out_groups(data: LabelledImages, pool: np.ndarray, fraction: float, seed: int,
                     held_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole groups, about ``fraction`` of each class's images, seeded.

    Each group counts for its most frequent class. Per class, groups are taken in a seeded
    random order while that brings the held-out image count closer to its target (the best of
    a few seeded orders is kept, so fractions stay close to the requested ones), and at least
    one group is held out and one kept whenever the class has two or more groups; so a class
    with few groups (MLCC's LSIL and SCC have 4 source images each) is never left out of a split
    by chance, as k-fold assignment of groups did. A class with a single group stays out of the
    held-out split, with a warning.
    """
    assert data.groups is not None
    rng = np.random.default_rng(seed)
    groups = data.groups[pool]
    labels = data.labels[pool]
    members: dict[object, list[int]] = {}
    for position, group in enumerate(groups.tolist()):
        members.setdefault(group, []).append(position)
    by_class: dict[int, list[object]] = {}
    for group, positions in members.items():
        counts = np.bincount(labels[positions], minlength=data.num_classes)
        by_class.setdefault(int(counts.argmax()), []).append(group)
    held: list[int] = []
    for label in sorted(by_class):
        class_groups = sorted(by_class[label], key=str)
        order = [class_groups[i] for i in rng.permutation(len(class_groups))]
        if len(order) < 2:
            logger.warning("%s: class %r has a single group (%r), so the %s split gets none of "
                           "its images", data.name, data.class_names[label], order[0], held_name)
            continue
        sizes = {group: len(members[group]) for group in class_groups}
        target = fraction * sum(sizes.values())
        taken = min((_greedy_take(order, sizes, target),
                     *(_greedy_take([class_groups[i] for i in rng.permutation(len(order))], sizes,
                                    target) for _ in range(_ORDERS_TRIED - 1))),
                    key=lambda chosen: abs(sum(sizes[g] for g in chosen) - target))
        held.extend(position for group in taken for position in members[group])
    mask = np.zeros(len(pool), dtype=bool)
    mask[held] = True
    return np.sort(pool[~mask]), np.sort(pool[mask])


def _greedy_take(order: list[object], sizes: dict[object, int], target: float) -> list[object]:
    """Groups taken in ``order`` while each brings the count closer to ``target``; always at
    least the first, never the last (so both sides keep images of the class)."""
    taken: list[object] = []
    count = 0
    for group in order[:-1]:
        if not taken or abs(count + sizes[group] - target) < abs(count - target):
            taken.append(group)
            count += sizes[group]
    return taken


def _require_two_classes(data: LabelledImages, indices: np.ndarray, where: str) -> None:
    """A classifier needs two classes; one class would train fully and then fail in the
    metrics, so refuse before any image is decoded. Multi-label strata views are exempt."""
    if data.strata_view:
        return
    present = sorted(set(data.labels[indices].tolist()))
    if len(present) < 2:
        only = (f"a single class, {data.class_names[present[0]]!r}," if present
                else "no images")
        others = [c for i, c in enumerate(data.class_names) if i not in present]
        more = (f" (its other classes {others} were left out, e.g. by train_domains or the "
                f"source's own split)" if others else "")
        raise DataError(f"{data.name}: {where} contain {only} and a classifier needs at least "
                        f"two classes{more}; add images of another class")


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
