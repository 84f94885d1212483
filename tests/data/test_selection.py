"""Selection strategies against hand computations on toy points, probcover against a brute-force
greedy coverage, and the contract: no labels in, deterministic per seed, labelled never re-picked."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from cytotune.data.selection import select, strategy_names
from cytotune.data.selection import default_delta, get_strategy, typicality

STRATEGIES = ["random", "kmeans", "typiclust", "probcover"]


def _blobs() -> tuple[np.ndarray, list[int]]:
    """Three blobs on the unit circle (already L2-normalised), of 31, 21 and 11 points at
    angles 0, 120 and 240 degrees. Each is symmetric about its centre point and denser towards
    it (offsets 0.001 j^2): the centre is both the point nearest the blob's mean and the most
    typical. Returns (points, index of each blob's centre, largest blob first)."""
    points, centres = [], []
    for angle, m in [(0.0, 15), (2 * np.pi / 3, 10), (4 * np.pi / 3, 5)]:
        offsets = [np.sign(j) * 0.001 * j * j for j in range(-m, m + 1)]
        centres.append(len(points) + m)
        points += [(np.cos(angle + o), np.sin(angle + o)) for o in offsets]
    x = np.asarray(points)
    order = np.random.default_rng(0).permutation(len(x))  # no help from the input order
    where = np.argsort(order)
    return x[order], [int(where[c]) for c in centres]


def test_the_registry_holds_the_four_strategies_and_none_takes_labels():
    assert set(STRATEGIES) <= set(strategy_names())
    for name in STRATEGIES:
        params = list(inspect.signature(get_strategy(name)).parameters)
        assert params[:4] == ["features", "budget", "seed", "labelled"]
        assert not {"labels", "y", "targets", "classes"} & set(params)
    with pytest.raises(ValueError, match="unknown selection strategy 'nope'"):
        select("nope", np.zeros((3, 2)), 1, 0)


@pytest.mark.parametrize("name", ["kmeans", "typiclust"])
def test_kmeans_and_typiclust_pick_blob_centres_largest_blob_first(name):
    x, centres = _blobs()
    assert select(name, x, 3, seed=0).tolist() == centres
    assert select(name, x * 7.0, 3, seed=5).tolist() == centres  # scale-free: normalised


def test_typiclust_picks_the_densest_point_where_kmeans_picks_the_one_nearest_the_mean():
    # a dense knot of 25 points about angle 0 (first point: its centre, densest) and a sparse
    # tail of 30 points up to 0.6 rad: the mean of the cluster sits in the tail
    knot = [0.0] + [np.sign(j) * 1e-4 * j * j for j in range(-12, 13) if j]
    tail = np.linspace(0.05, 0.6, 30).tolist()
    angles = np.asarray(knot + tail)
    x = np.c_[np.cos(angles), np.sin(angles)]
    # kmeans: argmin distance to the normalised-features mean (one cluster)
    mean = x.mean(axis=0)
    assert select("kmeans", x, 1, seed=0).tolist() == [int(np.argmin(np.linalg.norm(x - mean,
                                                                                      axis=1)))]
    # typiclust: argmax 1 / mean distance to its k = 20 nearest neighbours
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    brute = 1 / np.sort(d, axis=1)[:, 1:21].mean(axis=1)
    assert np.allclose(typicality(x), brute)
    assert select("typiclust", x, 1, seed=0).tolist() == [int(np.argmax(brute))] == [0]
    assert int(np.argmin(np.linalg.norm(x - mean, axis=1))) != 0


@pytest.mark.parametrize("name", ["kmeans", "typiclust"])
def test_extending_a_labelled_set_skips_its_clusters(name):
    x, centres = _blobs()
    # the largest blob already has a label (not its centre): the two other blobs come next
    labelled = [int(np.argmin(np.abs(np.arctan2(x[:, 1], x[:, 0]) - 0.004)))]
    assert labelled[0] != centres[0]
    picks = select(name, x, 2, seed=0, labelled=labelled)
    assert picks.tolist() == centres[1:]


def _brute_probcover(x: np.ndarray, budget: int, delta: float, labelled=()) -> list[int]:
    """The definition, with a dense distance matrix: repeatedly take the point whose ball covers
    the most not-yet-covered points (lowest index on ties)."""
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    ball = d <= delta
    covered = ball[list(labelled)].any(axis=0) if len(labelled) else np.zeros(len(x), bool)
    picks = []
    for _ in range(budget):
        gain = (ball & ~covered).sum(axis=1)
        gain[list(labelled) + picks] = -1
        if gain.max() <= 0:
            break
        best = int(np.argmax(gain))
        picks.append(best)
        covered |= ball[best]
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probcover_is_greedy_maximum_coverage(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for delta in [0.3, 0.6, 1.0]:
        want = _brute_probcover(x, 6, delta)
        got = select("probcover", x, 6, seed=0, delta=delta).tolist()
        assert got[:len(want)] == want
        labelled = [3, 17]
        want = _brute_probcover(x, 5, delta, labelled)
        got = select("probcover", x, 5, seed=0, labelled=labelled, delta=delta).tolist()
        assert got[:len(want)] == want and not set(got) & set(labelled)


def test_probcover_fills_the_budget_once_everything_is_covered():
    x, _ = _blobs()
    picks = select("probcover", x, 10, seed=3, delta=3.0)  # one ball covers the circle
    assert len(set(picks.tolist())) == 10


def test_default_delta_is_the_median_distance_to_the_20th_neighbour():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.sort(np.linalg.norm(u[:, None] - u[None], axis=2), axis=1)[:, 20]
    assert default_delta(x) == pytest.approx(np.median(d))


def test_random_is_a_seeded_permutation_prefix():
    x = np.random.default_rng(1).normal(size=(50, 4))
    assert select("random", x, 7, seed=11).tolist() == \
        np.random.default_rng(11).permutation(50)[:7].tolist()
    perm = np.random.default_rng(11).permutation(50).tolist()
    labelled = perm[:3]
    assert select("random", x, 4, seed=11, labelled=labelled).tolist() == perm[3:7]


@pytest.mark.parametrize("name", STRATEGIES)
def test_deterministic_per_seed_and_never_repicks_the_labelled(name):
    x = np.random.default_rng(2).normal(size=(80, 5))
    a = select(name, x, 12, seed=4)
    assert a.tolist() == select(name, x, 12, seed=4).tolist()
    assert len(set(a.tolist())) == 12 and a.dtype == np.int64
    if name != "probcover":  # probcover's ties break by index, not by seed
        assert any(select(name, x, 12, seed=s).tolist() != a.tolist() for s in range(5, 9))
    labelled = a[:5].tolist()
    b = select(name, x, 20, seed=4, labelled=labelled)
    assert len(set(b.tolist())) == 20 and not set(b.tolist()) & set(labelled)
    # the whole pool: every unlabelled image exactly once
    c = select(name, x, 75, seed=4, labelled=labelled)
    assert sorted(c.tolist()) == sorted(set(range(80)) - set(labelled))


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("features, budget, labelled, message", [
    (np.zeros(5), 1, None, "2-D"),
    (np.zeros((0, 3)), 1, None, "empty"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), 1, None, "NaN or infinite"),
    (np.ones((4, 2)), 0, None, "at least 1"),
    (np.ones((4, 2)), 5, None, "exceeds the 4 unlabelled"),
    (np.ones((4, 2)), 3, [0, 1], "exceeds the 2 unlabelled"),
    (np.ones((4, 2)), 2.0, None, "must be an integer"),
    (np.ones((4, 2)), 1, [4], r"lie in \[0, 4\)"),
])
def test_bad_arguments_get_a_clear_value_error(name, features, budget, labelled, message):
    with pytest.raises(ValueError, match=message):
        select(name, features, budget, 0, labelled=labelled)
