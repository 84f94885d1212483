"""Neighbour queries for the audit and the selection strategies: exact up to a size, then
approximate (faiss HNSW) so that the cost per image stays about flat as the data grows.

Exact search (scikit-learn, brute force at these dimensions) costs O(N) per image, O(N^2) in
all: the near-duplicate radius query of 1280-D features took 4.8 s at 10,000 images and 28 s at
20,000 (docs/measurements.md). Above :data:`ANN_MIN_IMAGES` rows the
*candidate* neighbours come from a faiss ``IndexHNSWFlat`` graph (O(log N) per image) built on a
PCA projection to :data:`ANN_DIM` dimensions (fitted on a fixed-size seeded sample), so that
the graph's vectors stay small in memory and cheap to compare; each candidate's distance is then
computed exactly in the full space and the nearest are kept. A projection never lengthens a
distance, so a pair within a radius in the full space is within it in the projection too: radius
queries lose pairs only to the graph search, not to the PCA. faiss-cpu rather than
pynndescent: a prebuilt C++ wheel with no JIT compilation (measured, 2,000 x 128 points:
pynndescent's first neighbour graph in a fresh process 21-24 s of numba compilation, faiss's
first HNSW build and search 0.9 s, which a CLI run pays every time), and HNSW's 10-NN recall is
0.995-0.999 at 10k-50k images (``scripts/bench_audit_scale.py`` prints it).

Approximation only ever *loses* neighbours, it never invents them: every distance handed on is
recomputed exactly in float64 from the features, and a radius graph keeps a pair only when that
exact distance is within the radius. Small inputs (every test fixture, MLCC's 950 images) stay
on the exact path, so their results are unchanged.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

# above this many rows neighbour queries are approximate (faiss HNSW); at or below, exact.
# Measured on 1280-D features (one thread), near-duplicate query: exact 0.17 ms per image at
# 5,000 rows, 0.48 at 10,000; HNSW 0.14-0.16 from 10,000 to 50,000 (docs/measurements.md)
ANN_MIN_IMAGES = 5000
# candidate search space: PCA to this many dimensions (when the features have more), fitted on
# at most PCA_SAMPLE rows; k nearest asked for = CANDIDATES x k, re-ranked exactly
ANN_DIM = 128
PCA_SAMPLE = 2048
CANDIDATES = 2
# HNSW graph: links per node, candidate list while building and (at least) while searching
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
# radius graphs: neighbours asked first; a row whose every neighbour lies within the radius is
# asked again with 4x more, up to RADIUS_K_MAX, then answered exactly (that row alone)
RADIUS_K_START = 8
RADIUS_K_MAX = 1024


def uses_ann(n: int, ann_min: Optional[int] = None) -> bool:
    """Whether ``n`` rows go to the approximate search (more than ``ann_min`` rows; default
    :data:`ANN_MIN_IMAGES`, read at call time so that a test can lower it)."""
    return n > (ANN_MIN_IMAGES if ann_min is None else ann_min)


def _projected(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 rows of ``x`` for the candidate search: a PCA projection to :data:`ANN_DIM`
    dimensions fitted on :data:`PCA_SAMPLE` seeded rows (a fixed cost), or ``x`` itself when it
    has no more dimensions than that."""
    if x.shape[1] <= ANN_DIM or len(x) <= ANN_DIM:
        return np.ascontiguousarray(x, dtype=np.float32)
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(x), size=min(PCA_SAMPLE, len(x)), replace=False))
    pca = PCA(n_components=ANN_DIM, svd_solver="randomized", random_state=seed).fit(x[sample])
    return np.ascontiguousarray(pca.transform(x), dtype=np.float32)


def _index(z: np.ndarray):
    """A faiss HNSW index (Euclidean) holding the float32 rows ``z``."""
    import faiss

    index = faiss.IndexHNSWFlat(z.shape[1], HNSW_M, faiss.METRIC_L2)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(z)
    return index


def _search(index, z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (rows, k): the approximate k nearest rows of the index to each
    row of ``z``, in the index's space (index -1 and distance inf where fewer were found)."""
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
    squared, found = index.search(z, k)
    dist = np.sqrt(np.maximum(squared.astype(np.float64), 0.0))
    dist[found < 0] = np.inf
    return dist, found


def _exact_distances(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Euclidean distances between row pairs (``rows[i]``, ``cols[i]``), in float64, in chunks
    (no (pairs x D) array larger than about 64 MiB)."""
    out = np.empty(len(rows), dtype=np.float64)
    step = max(1, (8 << 20) // max(1, x.shape[1]))
    for start in range(0, len(rows), step):
        r, c = rows[start:start + step], cols[start:start + step]
        out[start:start + step] = np.linalg.norm(x[r] - x[c], axis=1)
    return out


def _drop_self(found: np.ndarray, k: int) -> np.ndarray:
    """Each row of ``found`` (rows, k + 1) without the row's own index (or, when the search did
    not return it, without its last column): (rows, k)."""
    own = found == np.arange(len(found))[:, None]
    missing = ~own.any(axis=1)
    own[missing, -1] = True  # drop the farthest instead
    return found[~own].reshape(len(found), k)


def neighbour_distances(x: np.ndarray, k: int, ann_min: Optional[int] = None) -> np.ndarray:
    """(N, k): Euclidean distances from each row of ``x`` to its ``k`` nearest *other* rows,
    ascending (``k`` < N). Exact (scikit-learn) up to ``ann_min`` rows, HNSW candidates with
    exactly recomputed distances above."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, {n - 1}] for {n} rows, got {k}")
    if not uses_ann(n, ann_min):
        from sklearn.neighbors import NearestNeighbors

        dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
        return dist[:, 1:]  # column 0: the row itself (or an identical copy, also at 0)
    return _ann_knn(x, k)[0]


def _ann_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (N, k), ascending: the k nearest other rows among
    ``CANDIDATES x k`` HNSW candidates from the projection, by exact full-space distance."""
    n = len(x)
    want = min(n - 1, CANDIDATES * k)
    z = _projected(x)
    found = _drop_self(_search(_index(z), z, want + 1)[1], want)
    rows = np.repeat(np.arange(n), want)
    cols = found.ravel()
    dist = np.full(n * want, np.inf)
    ok = cols >= 0
    dist[ok] = _exact_distances(x, rows[ok], cols[ok])
    dist = dist.reshape(n, want)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(found, order, axis=1)


def radius_graph(x: np.ndarray, radius: float, ann_min: Optional[int] = None):
    """Symmetric sparse (N, N) 0/1 CSR matrix: entry (i, j) is 1 when rows i and j lie within
    ``radius`` (Euclidean), each row with itself included, like scikit-learn's
    ``radius_neighbors_graph``. Exact up to ``ann_min`` rows; above, HNSW candidates kept when
    their exactly recomputed distance is within ``radius`` (a row whose k-th candidate still
    lies within the radius in the projection is searched again with 4x more, and answered
    exactly past :data:`RADIUS_K_MAX`)."""
    from scipy.sparse import coo_matrix

    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not uses_ann(n, ann_min):
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(radius=radius).fit(x).radius_neighbors_graph(
            x, mode="connectivity").tocsr()
    z = _projected(x)
    index = _index(z)
    pending = np.arange(n)
    k = min(RADIUS_K_START, n)
    rows_out, cols_out = [np.arange(n)], [np.arange(n)]
    while pending.size:
        near, found = _search(index, z[pending], k)
        rows = np.repeat(pending, k)
        cols = found.ravel()
        # a projection never lengthens a distance: beyond the radius there, beyond it here
        ok = (cols >= 0) & (near.ravel() <= radius * (1 + 1e-5) + 1e-6)
        rows, cols = rows[ok], cols[ok]
        within = _exact_distances(x, rows, cols) <= radius
        rows_out.append(rows[within])
        cols_out.append(cols[within])
        # the k-th candidate still inside the radius in the projection: more may be
        saturated = pending[near[:, -1] <= radius * (1 + 1e-5) + 1e-6]
        if not saturated.size or k >= n:
            break
        if 4 * k > RADIUS_K_MAX:
            from sklearn.neighbors import NearestNeighbors

            ball = NearestNeighbors(radius=radius).fit(x).radius_neighbors(
                x[saturated], return_distance=False)
            rows_out.append(np.repeat(saturated, [len(b) for b in ball]))
            cols_out.append(np.concatenate(ball).astype(np.int64))
            break
        pending, k = saturated, min(4 * k, n)
    rows, cols = np.concatenate(rows_out), np.concatenate(cols_out)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n)).tocsr()
    graph.data[:] = 1  # duplicates summed: back to 0/1
    graph = graph.maximum(graph.T).tocsr()  # a pair found from either side
    return graph.astype(np.float64)


def knn_recall(x: np.ndarray, k: int, sample: int = 200, seed: int = 0) -> float:
    """Recall of the approximate k nearest neighbours against exact ones, over ``sample`` rows
    drawn at random (seeded): the mean fraction of each sampled row's exact ``k`` nearest other
    rows that the HNSW search returns. Exact side: brute force of the sample against all rows
    (O(sample x N)). Ties count by distance, so an identical copy standing in for another is a
    hit."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, {n - 1}] for {n} rows, got {k}")
    from sklearn.metrics import pairwise_distances

    picked = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)
    found = _ann_knn(x, k)[1][picked]
    exact = pairwise_distances(x[picked], x)  # (sample, N): linear in N
    exact[np.arange(len(picked)), picked] = np.inf
    kth = np.partition(exact, k - 1, axis=1)[:, k - 1]
    got = np.take_along_axis(exact, np.maximum(found, 0), axis=1)
    hits = np.minimum(k, np.sum((got <= kth[:, None] * (1 + 1e-9)) & (found >= 0), axis=1))
    return float(np.mean(hits / k))
