"""Approximate neighbours (faiss HNSW) against exact ones, with the size threshold lowered so
that small generated data takes the approximate path; and that small data stays exact."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from cytotune.analysis.audit import near_duplicates, outliers
from cytotune.data import neighbours
from cytotune.data.selection import default_delta, select, typicality


def _clustered(n: int = 600, dim: int = 160, seed: int = 0) -> np.ndarray:
    """L2-normalised points in 8 clusters on a 24-D subspace of ``dim`` dimensions (more than
    ANN_DIM, so the PCA projection is exercised), with a group of 40 identical copies (more than
    RADIUS_K_START: a ball that saturates the first search) and 5 near-copies."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, 24)))[0].T
    centres = rng.normal(size=(8, 24)) * 3
    latent = centres[rng.integers(0, 8, size=n)] + rng.normal(size=(n, 24))
    x = latent @ basis + 0.01 * rng.normal(size=(n, dim))
    x[100:140] = x[99]  # 41 identical rows: 99..139
    x[200:205] = x[300:305] + 1e-4 * rng.normal(size=(5, dim))
    return normalize(x)


@pytest.fixture
def approximate(monkeypatch):
    """Every neighbour query of more than 50 rows goes to HNSW (the threshold lowered)."""
    monkeypatch.setattr(neighbours, "ANN_MIN_IMAGES", 50)
    assert neighbours.uses_ann(51) and not neighbours.uses_ann(50)


def test_small_inputs_stay_exact(monkeypatch):
    def no_faiss(*_):
        raise AssertionError("faiss used below the threshold")

    monkeypatch.setattr(neighbours, "_index", no_faiss)
    x = _clustered()
    assert not neighbours.uses_ann(len(x))
    want, _ = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    assert np.array_equal(neighbours.neighbour_distances(x, 5), want[:, 1:])
    neighbours.radius_graph(x, 0.1)


def test_knn_distances_match_exact_above_the_threshold(approximate):
    x = _clustered()
    got = neighbours.neighbour_distances(x, 10)
    want, _ = NearestNeighbors(n_neighbors=11).fit(x).kneighbors(x)
    want = want[:, 1:]
    assert got.shape == want.shape
    # approximation can only miss neighbours, so its k-th distance is never shorter
    assert np.all(got >= want - 1e-6)  # scikit-learn rounds copies to ~1e-8
    close = np.isclose(got, want, atol=1e-6).all(axis=1).mean()
    assert close >= 0.98
    assert neighbours.knn_recall(x, 10, sample=200) >= 0.98


def test_knn_recall_against_a_hand_count(monkeypatch, approximate):
    """knn_recall is the fraction of exact neighbours returned: a weakened search (2-D
    projection) must score what a direct count of its hits says."""
    rng = np.random.default_rng(1)
    x = normalize(rng.normal(size=(300, 64)))
    monkeypatch.setattr(neighbours, "ANN_DIM", 2)
    monkeypatch.setattr(neighbours, "CANDIDATES", 1)
    recall = neighbours.knn_recall(x, 5, sample=300, seed=0)
    _, found = neighbours._ann_knn(x, 5)
    _, exact = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    hand = np.mean([len(set(f) & set(e[e != i][:5])) / 5
                    for i, (f, e) in enumerate(zip(found, exact))])
    assert recall == pytest.approx(hand)
    assert recall < 0.9  # the check can see a bad index


def test_radius_graph_matches_exact_with_a_saturated_ball(approximate):
    x = _clustered()
    for radius in (1e-6, 0.05, 0.3):
        want = NearestNeighbors(radius=radius).fit(x).radius_neighbors_graph(x).tocsr()
        got = neighbours.radius_graph(x, radius)
        assert (got != got.T).nnz == 0 and got.diagonal().all()
        assert (got - want).count_nonzero() == 0, radius
        if radius == 1e-6:
            assert got[99].sum() == 41  # the 41 copies: found beyond the first 8 asked for


def test_past_the_cap_a_ball_is_answered_exactly(monkeypatch, approximate):
    monkeypatch.setattr(neighbours, "RADIUS_K_START", 4)
    monkeypatch.setattr(neighbours, "RADIUS_K_MAX", 8)
    x = _clustered()
    want = NearestNeighbors(radius=1e-6).fit(x).radius_neighbors_graph(x).tocsr()
    assert (neighbours.radius_graph(x, 1e-6) - want).count_nonzero() == 0


def test_audit_and_selection_agree_with_the_exact_path(monkeypatch):
    x = _clustered()
    exact = (near_duplicates(x), outliers(x, k=5), typicality(x), default_delta(x),
             select("probcover", x, 8, seed=0).tolist(),
             select("typiclust", x, 8, seed=0).tolist())
    monkeypatch.setattr(neighbours, "ANN_MIN_IMAGES", 50)
    approx = (near_duplicates(x), outliers(x, k=5), typicality(x), default_delta(x),
              select("probcover", x, 8, seed=0).tolist(),
              select("typiclust", x, 8, seed=0).tolist())
    assert approx[0] == exact[0] == [list(range(99, 140)), [200, 300], [201, 301], [202, 302],
                                     [203, 303], [204, 304]]
    # scikit-learn's distances round an identical copy to ~1e-8 where the recomputed ones say 0
    by_index = [t.sort_values("index")["score"].to_numpy() for t in (approx[1], exact[1])]
    assert np.allclose(*by_index, atol=1e-6)
    assert approx[1]["index"].head(50).tolist() == exact[1]["index"].head(50).tolist()
    apart = np.setdiff1d(np.arange(len(x)), np.arange(99, 140))  # typicality 1/~0 for copies
    assert np.allclose(approx[2][apart], exact[2][apart], rtol=1e-6)
    assert approx[3] == pytest.approx(exact[3], rel=1e-6)
    assert approx[4:] == exact[4:]


def test_k_out_of_range_is_refused():
    x = _clustered()[:20]
    with pytest.raises(ValueError, match=r"k must lie in \[1, 19\]"):
        neighbours.neighbour_distances(x, 20)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 19\]"):
        neighbours.knn_recall(x, 0)
