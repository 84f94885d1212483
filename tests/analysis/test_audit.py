"""The audit: cleanlab sees out-of-fold probabilities only, flipped labels come out on top,
near/exact duplicate groups and outlier ranking on toy data."""
from __future__ import annotations

import cleanlab.filter
import numpy as np
import pytest

from cytotune.analysis import (audit, exact_duplicates, label_issues, near_duplicates,
                               oof_probabilities, outliers)
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


@pytest.fixture
def one_torch_thread():
    """One torch (and BLAS) thread, as the bench runs: a fit of tiny steps on this shared 2-core machine
    took 12 s with torch's default 2 threads and 0.2 s with 1 (OpenMP threads waiting on each
    other while other jobs hold the cores)."""
    import torch

    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):  # and BLAS, for the L-BFGS probe beside it
        yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("path", ["lbfgs", "minibatch"])
def test_cleanlab_receives_out_of_fold_probabilities(monkeypatch, path, one_torch_thread):
    """Both probes: L-BFGS (small data) and, with the size threshold lowered below these 120
    images, the minibatch probe of large data (its batches and steps sized for 96 training
    images: 120 steps of batch 16 (96 // 6 steps per pass) at a larger step size, so that it
    fits them about as well as L-BFGS does and the in-sample check below can tell the two
    apart)."""
    if path == "minibatch":
        monkeypatch.setattr(audit, "MINIBATCH_MIN_IMAGES", 100)
        for name, value in [("BATCH", 512), ("MIN_STEPS", 6), ("EPOCHS", 20), ("LR", 0.05)]:
            monkeypatch.setattr(audit, f"MINIBATCH_{name}", value)
    x, labels, flipped = _separable(seed=1)
    seen, fitted = {}, []
    real_probe = audit.probe

    def probe_spy(*args, **kwargs):
        model = real_probe(*args, **kwargs)
        fitted.append(type(model[-1]).__name__)
        return model

    monkeypatch.setattr(audit, "probe", probe_spy)
    real = cleanlab.filter.find_label_issues

    def spy(labels, pred_probs, **kwargs):
        seen["labels"], seen["probs"] = np.asarray(labels), np.asarray(pred_probs)
        return real(labels=labels, pred_probs=pred_probs, **kwargs)

    monkeypatch.setattr(cleanlab.filter, "find_label_issues", spy)
    label_issues(x, labels, seed=3)
    assert fitted == [{"lbfgs": "LogisticRegression",
                       "minibatch": "MinibatchLogisticRegression"}[path]]
    codes = np.unique(labels, return_inverse=True)[1]
    assert seen["labels"].tolist() == codes.tolist()
    # each row: what a probe fitted WITHOUT that row's fold predicts (same folds, refitted here)
    cv, used, _ = fold_plan(codes, seed=3)
    assert used == 5
    want = np.full((len(x), 3), np.nan)
    for train, test in cv.split(x, codes):
        assert not set(train) & set(test)
        model = real_probe(96, len(x), seed=3)  # folds of 96 training images
        want[test] = model.fit(x[train], codes[train]).predict_proba(x[test])
    assert np.allclose(seen["probs"], want, atol=1e-6 if path == "minibatch" else 1e-8)
    # and not what a probe that saw the labels says: it would trust the flipped ones more
    in_sample = real_probe(96, len(x), seed=3).fit(x, codes).predict_proba(x)
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


def test_the_probe_penalty_is_per_image_above_a_thousand_training_images(monkeypatch):
    """C = 1 for small data (results as before), C = 1000 / n_train above: the per-image penalty
    that keeps L-BFGS's iteration count flat as the data grows."""
    import sklearn.model_selection

    from cytotune.analysis.audit import PROBE_C_IMAGES, probe_c

    assert PROBE_C_IMAGES == 1000
    assert probe_c(None) == probe_c(800) == probe_c(1000) == 1.0
    assert probe_c(4000) == 0.25
    seen = []
    real = sklearn.model_selection.cross_val_predict

    def spy(estimator, *args, **kwargs):
        seen.append(estimator[-1].C)
        return real(estimator, *args, **kwargs)

    monkeypatch.setattr(sklearn.model_selection, "cross_val_predict", spy)
    x, labels, _ = _separable(seed=4, per_class=500, flip=0)  # 1500 images, folds of 1200
    oof_probabilities(x, labels, seed=0)
    small, small_labels, _ = _separable(seed=4)  # 120 images, folds of 96
    oof_probabilities(small, small_labels, seed=0)
    assert seen == [pytest.approx(1000 / 1200), 1.0]


def test_the_probe_switches_above_mlcc_size_with_enough_steps_per_pass():
    """The minibatch probe takes over just above the 1k basis of the scale target (L-BFGS's cost
    per image doubled by 5,000 images), MLCC's 950 images stay on L-BFGS, and its batches
    shrink on small folds so that each pass still has 20 steps (at most 512 images a step)."""
    from sklearn.linear_model import LogisticRegression

    from cytotune.analysis.audit import (MINIBATCH_MIN_IMAGES, MINIBATCH_MIN_STEPS,
                                         minibatch_batch, uses_minibatch)
    from cytotune.analysis.minibatch_logistic import MinibatchLogisticRegression

    assert 1000 <= MINIBATCH_MIN_IMAGES <= 2000 and MINIBATCH_MIN_STEPS == 20
    assert not uses_minibatch(950) and not uses_minibatch(1000)
    assert uses_minibatch(2000) and uses_minibatch(3000) and uses_minibatch(5000)
    assert isinstance(probe(760, 950)[-1], LogisticRegression)  # MLCC: 5 folds of 760
    assert [minibatch_batch(n) for n in (1600, 2400, 4000, 10240, 40000, 100, 5)] == \
        [80, 120, 200, 512, 512, 5, 1]
    assert minibatch_batch(None) == 512
    model = probe(1600, 2000)[-1]  # a 2,000-image audit: folds of 1,600
    assert isinstance(model, MinibatchLogisticRegression) and model.batch_size == 80
    assert probe(40000, 50000)[-1].batch_size == 512
    for n_train in (1200, 1600, 4000, 8000, 40000):  # every pass >= 20 steps
        assert -(-n_train // minibatch_batch(n_train)) >= 20


@pytest.mark.parametrize("n, jaccard", [(2000, 0.75), (6000, 0.85)])
def test_the_minibatch_probe_flags_what_lbfgs_flags(one_torch_thread, n, jaccard):
    """On data both probes can fit, just above the size where the audit switches to the
    minibatch probe (2,000 images: folds of 1,600 in 20 batches of 80, 200 steps in all) and
    further up (6,000: 20 batches of 240), with 3 % of the labels flipped: the two flagged sets
    mostly coincide, and the minibatch probe finds the flips about as well. At 2,000 the sets
    hold ~60 images, so a few borderline ones move the Jaccard a lot (measured 0.815 here, and
    the minibatch probe found 57 flips of 60 against L-BFGS's 54; 0.956 at 6,000). (At 2,000 to
    20,000 images of 1280-D features: scripts/bench_audit_scale.py --compare.)"""
    from cytotune.analysis.audit import MINIBATCH_MIN_IMAGES, uses_minibatch

    rng = np.random.default_rng(0)
    dim, classes = 64, 4
    centres = rng.normal(size=(classes * 3, dim)) * 1.2  # 3 clusters per class
    cluster = rng.integers(0, classes * 3, size=n)
    x = centres[cluster] + rng.normal(size=(n, dim))
    truth = cluster // 3
    flipped = rng.choice(n, size=int(0.03 * n), replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, classes, size=len(flipped))) % classes
    assert uses_minibatch(n) and not uses_minibatch(MINIBATCH_MIN_IMAGES)
    flagged = {solver: set(label_issues(x, given, seed=0, solver=solver)["index"].tolist())
               for solver in ("lbfgs", "minibatch")}
    a, b = flagged["lbfgs"], flagged["minibatch"]
    assert len(a & b) / len(a | b) >= jaccard
    flips = set(flipped.tolist())
    for found in (a, b):
        assert len(found & flips) / len(found) >= 0.85  # precision
        assert len(found & flips) / len(flips) >= 0.85  # recall
    assert len(b & flips) >= len(a & flips) - 0.02 * len(flips)  # as many flips, within 2 %
    assert label_issues(x, given, seed=0).equals(label_issues(x, given, seed=0,
                                                              solver="minibatch"))
    with pytest.raises(ValueError, match="solver must be one of auto, lbfgs, minibatch"):
        label_issues(x[:50], given[:50], seed=0, solver="sgd")
