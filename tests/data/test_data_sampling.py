"""Few-shot and fraction sampling: counts, determinism, nesting, and errors."""
from __future__ import annotations

import numpy as np
import pytest

from cytotune.data import DataError, few_shot, few_shot_validation, fraction

CLASSES = ["a", "b", "c"]
LABELS = np.repeat([0, 1, 2], [30, 20, 10])
POOL = np.arange(0, 60, 1)[::-1]  # order of the pool must not matter


def test_few_shot_counts_and_pool_membership():
    pool = np.setdiff1d(np.arange(60), [0, 1, 2])
    chosen = few_shot(LABELS, pool, k=5, seed=0, class_names=CLASSES)
    assert chosen.dtype == np.int64 and np.all(np.diff(chosen) > 0)
    assert np.bincount(LABELS[chosen]).tolist() == [5, 5, 5]
    assert set(chosen) <= set(pool)


def test_few_shot_is_deterministic_per_seed():
    first = few_shot(LABELS, POOL, 4, 1, CLASSES)
    np.testing.assert_array_equal(first, few_shot(LABELS, np.sort(POOL), 4, 1, CLASSES))
    assert not np.array_equal(first, few_shot(LABELS, POOL, 4, 2, CLASSES))


def test_few_shot_samples_are_nested_in_k():
    shots = [set(few_shot(LABELS, POOL, k, 7, CLASSES)) for k in (1, 2, 4, 8, 10)]
    assert all(small <= large for small, large in zip(shots, shots[1:]))


def test_few_shot_names_every_class_that_is_too_small_with_its_count():
    with pytest.raises(DataError) as err:
        few_shot(LABELS, POOL, 25, 0, CLASSES)
    message = str(err.value)
    assert "--shots 25" in message and "training split" in message and "pool" not in message
    assert "2 class(es): 'b' has 20, 'c' has 10" in message  # not only the first short one
    assert "'a'" not in message  # 30 images: enough
    with pytest.raises(DataError, match="k=0"):
        few_shot(LABELS, POOL, 0, 0, CLASSES)
    with pytest.raises(DataError, match=r"fewer for 1 class\(es\): 'c' has 10$"):
        few_shot(LABELS, POOL, 16, 0, CLASSES)


def test_few_shot_validation_caps_at_four_and_tolerates_small_classes():
    val = np.concatenate([np.arange(0, 10), np.arange(30, 32), np.arange(50, 60)])
    np.testing.assert_array_equal(np.bincount(LABELS[few_shot_validation(
        LABELS, val, 16, 0, CLASSES)]), [4, 2, 4])
    np.testing.assert_array_equal(np.bincount(LABELS[few_shot_validation(
        LABELS, val, 1, 0, CLASSES)]), [1, 1, 1])


def test_fraction_counts_minimum_and_whole_pool():
    chosen = fraction(LABELS, POOL, 10, seed=0)
    assert np.bincount(LABELS[chosen]).tolist() == [3, 2, 1]
    assert np.bincount(LABELS[fraction(LABELS, POOL, 1, seed=0)]).tolist() == [1, 1, 1]
    np.testing.assert_array_equal(fraction(LABELS, POOL, 100, seed=0), np.arange(60))
    assert np.bincount(LABELS[fraction(LABELS, POOL, 50, seed=0)]).tolist() == [15, 10, 5]


def test_fraction_is_deterministic_and_nested():
    parts = [set(fraction(LABELS, POOL, p, seed=5)) for p in (10, 25, 50, 75, 100)]
    assert all(small <= large for small, large in zip(parts, parts[1:]))
    np.testing.assert_array_equal(fraction(LABELS, POOL, 25, 5), fraction(LABELS, POOL, 25, 5))


@pytest.mark.parametrize("percent", [0, -5, 100.5])
def test_fraction_rejects_bad_percent(percent):
    with pytest.raises(DataError, match="percent"):
        fraction(LABELS, POOL, percent, 0)
