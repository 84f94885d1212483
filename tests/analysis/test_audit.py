"""The audit: cleanlab sees out-of-fold probabilities only, flipped labels come out on top,
near/exact duplicate groups and outlier ranking on toy data."""
from __future__ import annotations

import cleanlab.filter
import numpy as np
import pytest

from cytotune.analysis import (exact_duplicates, label_issues, near_duplicates, oof_probabilities,
                               outliers)
from cytotune.analysis.audit import fold_plan, probe


def _separable(seed: int = 0, per_class: int = 40, flip: int = 6):
    """Three well-separated Gaussian classes in 8-D with ``flip`` labels moved to another class:
    (features, given labels, indices of the flipped images)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 6.0 + 1.0
    x = np.concatenate([c + rng.normal(size=(per_class, 8)) for c in centres])
    names = np.array(["ascus", "hsil", "nilm"])
    truth = np.repeat(np.arange(3), per_class)
    flipped = rng.choice(len(x), size=flip, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + 1 + rng.integers(0, 2, size=flip)) % 3
    return x, names[given], np.sort(flipped)


def test_cleanlab_receives_out_of_fold_probabilities(monkeypatch):
    x, labels, flipped = _separable(seed=1)
    seen = {}
    real = cleanlab.filter.find_label_issues

    def spy(labels, pred_probs, **kwargs):
        seen["labels"], seen["probs"] = np.asarray(labels), np.asarray(pred_probs)
        return real(labels=labels, pred_probs=pred_probs, **kwargs)

    monkeypatch.setattr(cleanlab.filter, "find_label_issues", spy)
    label_issues(x, labels, seed=3)
    codes = np.unique(labels, return_inverse=True)[1]
    assert seen["labels"].tolist() == codes.tolist()
    # each row: what a probe fitted WITHOUT that row's fold predicts (same folds, refitted here)
    cv, used, _ = fold_plan(codes, seed=3)
    assert used == 5
    want = np.full((len(x), 3), np.nan)
    for train, test in cv.split(x, codes):
        assert not set(train) & set(test)
        want[test] = probe().fit(x[train], codes[train]).predict_proba(x[test])
    assert np.allclose(seen["probs"], want, atol=1e-8)
    # and not what a probe that saw the labels says: it would trust the flipped ones more
    in_sample = probe().fit(x, codes).predict_proba(x)
    rows = np.arange(len(x))
    assert np.all(in_sample[rows, codes][flipped] > seen["probs"][rows, codes][flipped])


def test_flipped_labels_are_found_first():
    x, labels, flipped = _separable(seed=0)
    table = label_issues(x, labels, seed=0)
    assert sorted(table["index"].head(len(flipped)).tolist()) == flipped.tolist()
    top = table.head(len(flipped))
    assert (top["suggested_label"] != top["given_label"]).all()
    assert table["label_quality"].is_monotonic_increasing
    assert table.attrs == {"folds": 5, "note": ""}


def test_a_small_class_reduces_the_folds_with_a_note():
    x, labels, _ = _separable(seed=2, flip=0)
    keep = np.r_[np.arange(80), 80, 81, 82]  # "nilm" keeps 3 images
    probs, classes, note = oof_probabilities(x[keep], labels[keep], seed=0)
    assert probs.shape == (83, 3) and classes.tolist() == ["ascus", "hsil", "nilm"]
    assert note == "3 folds instead of 5: the smallest class has 3 images"
    assert label_issues(x[keep], labels[keep], seed=0).attrs["folds"] == 3
    with pytest.raises(ValueError, match="at least 2 images"):
        label_issues(x[:81], labels[:81], seed=0)
    with pytest.raises(ValueError, match="one label per image"):
        label_issues(x, labels[:-1], seed=0)


def test_near_duplicate_groups_by_cosine_similarity():
    x = np.array([[1.0, 0.0, 0.0],
                  [0.0, 1.0, 0.0],
                  [10.0, 0.1, 0.0],   # ~ row 0 (cosine 0.99995), another scale
                  [0.0, 0.0, 1.0],
                  [0.0, 1.0, 0.0],    # exact copy of row 1
                  [10.0, 0.2, 0.1],   # ~ row 2, so with 0 by transitivity
                  [0.5, 0.5, 0.0]])   # 45 degrees from 0 and 1: cosine 0.707
    assert near_duplicates(x, threshold=0.999) == [[0, 2, 5], [1, 4]]
    assert near_duplicates(x, threshold=1.0) == [[1, 4]]
    assert near_duplicates(x, threshold=0.7) == [[0, 1, 2, 4, 5, 6]]
    with pytest.raises(ValueError, match=r"cosine similarity in \[-1, 1\]"):
        near_duplicates(x, threshold=1.5)


def test_exact_duplicates_by_file_bytes(tmp_path):
    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    for name, data in zip(names, [b"cell-1", b"cell-2", b"cell-1", b"", b""]):
        (tmp_path / name).write_bytes(data)
    paths = [tmp_path / n for n in names]
    assert exact_duplicates(paths) == [[0, 2], [3, 4]]
    with pytest.raises(ValueError, match="cannot read .*missing.png"):
        exact_duplicates(paths + [tmp_path / "missing.png"])


def test_outliers_rank_the_point_far_from_every_class_first():
    rng = np.random.default_rng(0)
    a = np.c_[np.ones(20), 0.05 * rng.normal(size=20), np.zeros(20)]
    b = np.c_[0.05 * rng.normal(size=20), np.ones(20), np.zeros(20)]
    odd = np.array([[0.0, 0.0, 1.0], [0.3, 0.0, 1.0]])  # orthogonal to both classes
    x = np.concatenate([a, b, odd])
    labels = ["a"] * 20 + ["b"] * 20 + ["a", "b"]
    table = outliers(x, labels)
    assert table["index"].head(2).tolist() == [40, 41]
    assert table["score"].is_monotonic_decreasing
    # by hand: distance of the normalised row 40 to the nearest normalised-class centroid
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    lab = np.asarray(labels)
    cents = np.stack([u[lab == c].mean(axis=0) for c in "ab"])
    assert table.loc[0, "score"] == pytest.approx(np.linalg.norm(u[40] - cents, axis=1).min())
    unlabelled = outliers(x, k=3)
    assert set(unlabelled["index"].head(2)) == {40, 41}
    d = np.sort(np.linalg.norm(u[:, None] - u[None], axis=2), axis=1)[:, 1:4].mean(axis=1)
    assert np.allclose(unlabelled.sort_values("index")["score"], d)
