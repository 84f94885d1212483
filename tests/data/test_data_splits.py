"""Train/val/test splits: deterministic, stratified, group-disjoint, and checked."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cytotune.data import DataError, LabelledImages, make_splits


def _data(counts: dict[str, int], groups_per_class: int | None = None,
          splits: list[str] | None = None) -> LabelledImages:
    """Fake paths (splits never open files) with ``counts`` images per class."""
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(counts.values())])
    groups = None
    if groups_per_class:
        groups = np.array([f"c{label}_g{j % groups_per_class}"
                           for label in range(len(counts))
                           for j in range(list(counts.values())[label])], dtype=object)
    return LabelledImages(paths=[Path(f"img_{i}.png") for i in range(len(labels))],
                          labels=labels, class_names=list(counts), groups=groups,
                          splits=None if splits is None else np.array(splits, dtype=object),
                          name="toy")


def _assert_partition(split, n):
    everything = np.concatenate([split.train, split.val, split.test])
    assert len(everything) == n and len(np.unique(everything)) == n
    for _, indices in split.items():
        assert indices.dtype == np.int64 and np.all(np.diff(indices) > 0)


def test_split_is_deterministic_stratified_partition():
    data = _data({"a": 100, "b": 50, "c": 30})
    split = make_splits(data, seed=3)
    _assert_partition(split, len(data))
    again = make_splits(data, seed=3)
    for (_, x), (_, y) in zip(split.items(), again.items()):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(split.test, make_splits(data, seed=4).test)
    for name, indices in split.items():
        counts = np.bincount(data.labels[indices], minlength=3)
        share = {"train": 0.6, "val": 0.2, "test": 0.2}[name]
        np.testing.assert_allclose(counts, np.array([100, 50, 30]) * share, atol=1.01)


def test_group_aware_split_keeps_each_group_in_one_split():
    data = _data({"a": 60, "b": 60, "c": 40}, groups_per_class=10)
    split = make_splits(data, seed=0)
    _assert_partition(split, len(data))
    group_sets = [set(data.groups[indices]) for _, indices in split.items()]
    assert not (group_sets[0] & group_sets[1] or group_sets[0] & group_sets[2]
                or group_sets[1] & group_sets[2])
    for _, indices in split.items():
        assert set(data.labels[indices]) == {0, 1, 2}
    np.testing.assert_array_equal(split.test, make_splits(data, seed=0).test)


def test_source_splits_are_used_and_val_is_carved_from_train():
    data = _data({"a": 20, "b": 20}, splits=(["train"] * 15 + ["test"] * 5) * 2)
    split = make_splits(data, seed=0, val_fraction=0.2)
    _assert_partition(split, 40)
    np.testing.assert_array_equal(split.test, np.flatnonzero(data.splits == "test"))
    assert len(split.val) == 6 and set(data.splits[split.val]) == {"train"}
    assert np.bincount(data.labels[split.val]).tolist() == [3, 3]

    with_val = _data({"a": 3, "b": 3}, splits=["train", "val", "test"] * 2)
    split = make_splits(with_val, seed=0)
    assert (split.train.tolist(), split.val.tolist(), split.test.tolist()) == ([0, 3], [1, 4],
                                                                               [2, 5])


def test_class_unseen_in_train_is_named():
    data = _data({"a": 4, "rare": 2}, splits=["train"] * 2 + ["val", "test"] + ["test"] * 2)
    with pytest.raises(DataError, match="class 'rare' has 2 image.*test.*none in train"):
        make_splits(data, seed=0)


def test_class_too_small_to_split_is_named_with_count():
    with pytest.raises(DataError, match="class 'tiny' has only 2 image"):
        make_splits(_data({"big": 50, "tiny": 2}), seed=0)


@pytest.mark.parametrize("options, name", [({"val_fraction": -0.1}, "val_fraction"),
                                           ({"test_fraction": 1.0}, "test_fraction"),
                                           ({"val_fraction": 0.5, "test_fraction": 0.5},
                                            "val_fraction \\+ test_fraction")])
def test_bad_fractions_are_named(options, name):
    with pytest.raises(DataError, match=name):
        make_splits(_data({"a": 10}), seed=0, **options)
