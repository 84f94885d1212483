"""Intervals of cytotune.analysis against independent references: scikit-learn for the metrics,
scipy.stats.bootstrap for the resampling (same resamples and seed where both can draw alike)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from cytotune.analysis import (BootstrapSpec, Outcome, cell_interval, count_metric,
                               paired_interval, seed_interval)
from cytotune.analysis.bootstrap import (BASIS_IMAGES, BASIS_IMAGES_PAIRED,
                                         BASIS_IMAGES_UNPAIRED, BASIS_NONE, BASIS_SEEDS)

SKLEARN = {"accuracy": accuracy_score, "balanced_accuracy": balanced_accuracy_score,
           "macro_f1": lambda y, p: f1_score(y, p, average="macro", zero_division=0)}


def _outcome(seed: int, n: int = 150, classes: int = 4, skill: float = 0.7, ids: bool = False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    predicted = np.where(rng.random(n) < skill, labels, rng.integers(0, classes, n))
    names = tuple(f"img{i}.png" for i in range(n)) if ids else None
    return Outcome(labels, predicted, classes, names)


@pytest.mark.parametrize("metric", sorted(SKLEARN))
def test_count_metrics_equal_scikit_learn_including_a_class_without_true_images(metric):
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1])  # class 3 never true, sometimes predicted
    predicted = np.array([0, 3, 1, 1, 0, 2, 3, 0, 1])
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = SKLEARN[metric](labels, predicted)
    outcome = Outcome(labels, predicted, 4)
    assert count_metric(outcome.confusion(), metric) == pytest.approx(expected, abs=1e-12)
    rebuilt = Outcome.from_confusion_matrix(outcome.confusion())
    assert count_metric(rebuilt.confusion(), metric) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "macro_f1"])
def test_one_seed_interval_matches_scipy_bootstrap_over_images(metric):
    outcome = _outcome(3)
    ours = cell_interval([outcome], metric, BootstrapSpec(resamples=20000, seed=1), key="c")
    reference = stats.bootstrap(
        (outcome.labels, outcome.predicted), SKLEARN[metric], paired=True, vectorized=False,
        n_resamples=4000, method="percentile", confidence_level=0.95,
        rng=np.random.default_rng(7)).confidence_interval
    assert ours.basis == BASIS_IMAGES
    assert ours.estimate == pytest.approx(SKLEARN[metric](outcome.labels, outcome.predicted))
    # Monte-Carlo error of the endpoints at these resample counts is ~0.3 points
    assert ours.low == pytest.approx(reference.low, abs=0.012)
    assert ours.high == pytest.approx(reference.high, abs=0.012)


def test_without_image_variation_the_hierarchical_interval_is_the_seed_bootstrap():
    # each seed's run holds a single (label, prediction) cell: right on every image or on none,
    # so every resample of its images gives the same accuracy and only the seeds vary
    right = [1, 0, 1, 1, 0, 1, 1]
    outcomes = [Outcome(np.zeros(20, dtype=int), np.full(20, 0 if r else 1), 2) for r in right]
    ours = cell_interval(outcomes, "accuracy", BootstrapSpec(resamples=20000), key="k")
    reference = stats.bootstrap((np.array(right, dtype=float),), np.mean, n_resamples=20000,
                                method="percentile", rng=np.random.default_rng(3))
    assert ours.estimate == pytest.approx(np.mean(right))
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=0.02)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=0.02)


def test_seed_interval_is_scipy_bootstrap_with_the_same_resamples_and_seed():
    values = [0.61, 0.64, 0.70, 0.58, 0.66]
    spec = BootstrapSpec(resamples=3000, level=0.9, seed=5)
    ours = seed_interval(values, spec, key="cell")
    reference = stats.bootstrap((np.array(values),), np.mean, n_resamples=3000,
                                confidence_level=0.9, method="percentile",
                                rng=spec.rng("cell")).confidence_interval
    assert ours.basis == BASIS_SEEDS
    assert (ours.low, ours.high) == (reference.low, reference.high)
    assert ours.estimate == pytest.approx(np.mean(values))


def test_seed_interval_edge_cases():
    spec = BootstrapSpec()
    one = seed_interval([0.7], spec)
    assert one.estimate == 0.7 and math.isnan(one.low) and one.basis == BASIS_NONE
    same = seed_interval([0.7, 0.7, 0.7], spec)
    assert (same.low, same.high) == (0.7, 0.7)
    assert math.isnan(seed_interval([float("nan")], spec).estimate)


def test_intervals_are_reproducible_and_independent_of_other_cells():
    outcomes = [_outcome(s) for s in range(5)]
    spec = BootstrapSpec(resamples=500, seed=2)
    first = cell_interval(outcomes, "accuracy", spec, key="a")
    cell_interval(outcomes, "accuracy", spec, key="other")  # another cell drawn in between
    assert cell_interval(outcomes, "accuracy", spec, key="a") == first
    assert cell_interval(outcomes, "accuracy", BootstrapSpec(resamples=500, seed=3), key="a") != first


def test_more_seeds_and_images_give_a_narrower_interval():
    spec = BootstrapSpec(resamples=2000)
    few = cell_interval([_outcome(s, n=60) for s in range(3)], "accuracy", spec)
    many = cell_interval([_outcome(s, n=600) for s in range(12)], "accuracy", spec)
    assert (many.high - many.low) < (few.high - few.low)
    assert few.low < few.estimate < few.high


def test_paired_difference_of_a_run_with_itself_is_an_exact_zero_and_never_resolved():
    runs = [_outcome(s, ids=True) for s in range(5)]
    diff = paired_interval(runs, runs, "balanced_accuracy", BootstrapSpec(resamples=500))
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert diff.basis == BASIS_IMAGES_PAIRED and not diff.excludes_zero


def test_pairing_by_image_narrows_the_interval_of_correlated_runs():
    spec = BootstrapSpec(resamples=4000)
    a = [_outcome(s, n=200, ids=True) for s in range(5)]
    b = []
    for s, run in enumerate(a):  # B: A with 6 % of its predictions changed at random
        rng = np.random.default_rng(100 + s)
        flip = rng.random(run.n) < 0.06
        predicted = np.where(flip, rng.integers(0, 4, run.n), run.predicted)
        b.append(Outcome(run.labels, predicted, 4, run.image_ids))
    paired = paired_interval(a, b, "accuracy", spec)
    unpaired = paired_interval(a, [Outcome(r.labels, r.predicted, 4) for r in b],
                               "accuracy", spec)
    assert paired.basis == BASIS_IMAGES_PAIRED and unpaired.basis == BASIS_IMAGES_UNPAIRED
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)


def test_pairing_follows_image_ids_whatever_their_order():
    a = _outcome(1, ids=True)
    order = np.random.default_rng(0).permutation(a.n)
    shuffled = Outcome(a.labels[order], a.predicted[order], 4,
                           tuple(a.image_ids[i] for i in order))
    diff = paired_interval([a], [shuffled], "accuracy", BootstrapSpec(resamples=200))
    assert diff.basis == BASIS_IMAGES_PAIRED and (diff.low, diff.high) == (0.0, 0.0)


def test_a_clear_difference_is_resolved_in_its_direction():
    a = [_outcome(s, skill=0.9, ids=True) for s in range(5)]
    b = [Outcome(r.labels, np.where(np.arange(r.n) % 3 == 0, (r.labels + 1) % 4,
                                        r.predicted), 4, r.image_ids) for r in a]
    diff = paired_interval(a, b, "accuracy", BootstrapSpec(resamples=1000))
    assert diff.low > 0 and diff.excludes_zero


@pytest.mark.parametrize("bad", [dict(resamples=10), dict(resamples=2.5), dict(level=1.0),
                                 dict(level=0.2), dict(seed=-1), dict(resamples=True)])
def test_bad_bootstrap_settings_are_refused(bad):
    with pytest.raises(ValueError):
        BootstrapSpec(**bad)


def test_outcome_validation():
    with pytest.raises(ValueError, match="square"):
        Outcome.from_confusion_matrix([[1, 2, 3]])
    with pytest.raises(ValueError, match="0..1"):
        Outcome(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="image ids"):
        Outcome(np.array([0, 1]), np.array([0, 1]), 2, ("a",))
    with pytest.raises(ValueError, match="count metric"):
        cell_interval([_outcome(0)], "auroc", BootstrapSpec())
