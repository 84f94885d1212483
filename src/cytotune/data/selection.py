"""Which images to label first: label-free selection strategies over cached features.

Every strategy is a registry entry ``(features (N, D), budget, seed, labelled=None) -> indices``:
the ``budget`` images to label, in the order to label them, never in ``labelled`` (images that
already carry a label, whose neighbourhood a strategy may treat as covered). No strategy takes
labels: the budget mode of a training run chooses before it reveals any.

- ``random``: a seeded permutation prefix (the baseline every other strategy is paired with).
- ``kmeans``: the image nearest each k-means centre, largest cluster first.
- ``typiclust``: Hacohen et al. 2022, "Active learning on a budget" (TPC-RP): the most typical
  image (1 / mean distance to its k nearest neighbours) of each of the largest uncovered clusters.
- ``probcover``: Yehuda et al. 2022, "Active learning through a covering lens": greedy maximum
  coverage with balls of radius ``delta``.

Features are L2-normalised first (the cosine geometry the probes use); clustering comes from
scikit-learn, neighbour queries from :mod:`cytotune.data.neighbours` (exact up to
``ANN_MIN_IMAGES`` images, faiss HNSW above).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from cytotune.data.neighbours import neighbour_distances, radius_graph

# A strategy: (features, budget, seed, labelled=None, **options) -> ordered indices.
Strategy = Callable[..., np.ndarray]

_STRATEGIES: dict[str, Strategy] = {}

# k-means restarts: fixed so that a selection depends on the seed alone
KMEANS_N_INIT = 10
# TypiClust's neighbourhood size for typicality and its cap on the number of clusters (the
# paper's code: K_NN = 20, MAX_NUM_CLUSTERS = 500)
TYPICLUST_K = 20
TYPICLUST_MAX_CLUSTERS = 500
# ProbCover's default radius: the median distance of a point to its 20th nearest neighbour
PROBCOVER_K = 20
PROBCOVER_QUANTILE = 0.5


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Add a strategy to the registry under ``name`` (the CLI's ``--strategy`` choices)."""
    def add(fn: Strategy) -> Strategy:
        if name in _STRATEGIES:
            raise ValueError(f"selection strategy {name!r} is already registered")
        _STRATEGIES[name] = fn
        return fn
    return add


def strategy_names() -> tuple[str, ...]:
    """The registered strategies, in registration order."""
    return tuple(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; a ValueError listing the choices otherwise."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown selection strategy {name!r}; choose one of "
                         f"{', '.join(_STRATEGIES)}") from None


def select(strategy: str, features: np.ndarray, budget: int, seed: int,
           labelled: Optional[Sequence[int]] = None, **options) -> np.ndarray:
    """Run the strategy named ``strategy``: ``budget`` indices into ``features``, in labelling
    order, none of them in ``labelled``."""
    return get_strategy(strategy)(features, budget, seed, labelled=labelled, **options)


def _validated(features: np.ndarray, budget: int,
               labelled: Optional[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised float64 features, sorted unique labelled indices), or a ValueError."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (images x dimensions), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features are empty (shape {x.shape})")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"features must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinite values")
    lab = np.asarray([] if labelled is None else labelled)
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError("labelled must be integer indices into the features")
    lab = np.unique(lab.astype(np.int64))
    if lab.size and (lab[0] < 0 or lab[-1] >= len(x)):
        raise ValueError(f"labelled indices must lie in [0, {len(x)}), got "
                         f"{int(lab[0])}..{int(lab[-1])}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget must be an integer, got {budget!r}")
    free = len(x) - len(lab)
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    if budget > free:
        raise ValueError(f"budget {budget} exceeds the {free} unlabelled images "
                         f"({len(x)} in all, {len(lab)} already labelled)")
    from sklearn.preprocessing import normalize
    return normalize(x), lab


def _fill(picks: list[int], n: int, labelled: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Top ``picks`` up to ``budget`` with seeded random unpicked, unlabelled images (when a
    strategy runs out: duplicate features leave clusters empty, coverage is complete)."""
    if len(picks) < budget:
        taken = set(picks) | set(labelled.tolist())
        rest = [int(i) for i in np.random.default_rng(seed).permutation(n) if int(i) not in taken]
        picks = picks + rest[:budget - len(picks)]
    return np.asarray(picks[:budget], dtype=np.int64)


def kmeans_clusters(features: np.ndarray, n_clusters: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each image, centres) of scikit-learn's KMeans on the L2-normalised features,
    with ``KMEANS_N_INIT`` restarts and ``random_state=seed``: the clusters ``kmeans`` and
    ``typiclust`` pick from, for a picks table's cluster column."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import normalize

    x = normalize(np.asarray(features, dtype=np.float64))
    with warnings.catch_warnings():  # duplicate images: fewer distinct clusters than asked
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=n_clusters, n_init=KMEANS_N_INIT, random_state=seed).fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_


def _uncovered_by_size(clusters: np.ndarray, n_clusters: int,
                       labelled: np.ndarray) -> list[int]:
    """Clusters holding no labelled image, largest first (ties: lower cluster id)."""
    sizes = np.bincount(clusters, minlength=n_clusters)
    covered = set(clusters[labelled].tolist())
    order = sorted(range(n_clusters), key=lambda c: (-sizes[c], c))
    return [c for c in order if sizes[c] > 0 and c not in covered]


@register_strategy("random")
def random_selection(features: np.ndarray, budget: int, seed: int,
                     labelled: Optional[Sequence[int]] = None) -> np.ndarray:
    """The first ``budget`` unlabelled images of ``numpy.random.default_rng(seed)``'s
    permutation: the baseline the study's random draws correspond to."""
    x, lab = _validated(features, budget, labelled)
    return _fill([], len(x), lab, budget, seed)


@register_strategy("kmeans")
def kmeans_selection(features: np.ndarray, budget: int, seed: int,
                     labelled: Optional[Sequence[int]] = None) -> np.ndarray:
    """The member nearest each k-means centre, largest cluster first. With a labelled set,
    ``budget + len(labelled)`` clusters and those holding a labelled image are skipped."""
    x, lab = _validated(features, budget, labelled)
    n_clusters = budget + len(lab)
    clusters, centres = kmeans_clusters(x, n_clusters, seed)
    picks = []
    for c in _uncovered_by_size(clusters, n_clusters, lab)[:budget]:
        members = np.flatnonzero(clusters == c)
        dist = np.linalg.norm(x[members] - centres[c], axis=1)
        picks.append(int(members[np.argmin(dist)]))
    return _fill(picks, len(x), lab, budget, seed)


def typicality(features: np.ndarray, k: int = TYPICLUST_K) -> np.ndarray:
    """TypiClust's typicality of each row: 1 / mean Euclidean distance to its ``k`` nearest
    other rows (``k`` capped at rows - 1; a lone row is infinitely typical)."""
    x = np.asarray(features, dtype=np.float64)
    k = min(k, len(x) - 1)
    if k < 1:
        return np.full(len(x), np.inf)
    return 1.0 / (neighbour_distances(x, k).mean(axis=1) + 1e-12)


@register_strategy("typiclust")
def typiclust_selection(features: np.ndarray, budget: int, seed: int,
                        labelled: Optional[Sequence[int]] = None, k: int = TYPICLUST_K,
                        max_clusters: int = TYPICLUST_MAX_CLUSTERS) -> np.ndarray:
    """TPC-RP: k-means into ``min(budget + len(labelled), max_clusters)`` clusters; then, one
    pick at a time, the cluster with the fewest labelled images (ties: the largest) gives its
    most typical unlabelled image (typicality within the cluster, ``k`` capped by its size).

    Departure from the paper's code: clusters of 5 or fewer images are not dropped, only reached
    last (they come last by size); a budget larger than ``max_clusters`` cycles the clusters."""
    x, lab = _validated(features, budget, labelled)
    if k < 1 or max_clusters < 1:
        raise ValueError(f"k and max_clusters must be at least 1, got {k} and {max_clusters}")
    n_clusters = min(budget + len(lab), max_clusters, len(x))
    clusters, _ = kmeans_clusters(x, n_clusters, seed)
    sizes = np.bincount(clusters, minlength=n_clusters)
    counts = np.bincount(clusters[lab], minlength=n_clusters)
    taken = np.zeros(len(x), dtype=bool)
    taken[lab] = True
    members_of = [np.flatnonzero(clusters == c) for c in range(n_clusters)]
    free = sizes - counts  # unlabelled images left in each cluster
    typical: dict[int, np.ndarray] = {}
    picks: list[int] = []
    while len(picks) < budget:
        open_ = np.flatnonzero(free > 0)
        if not open_.size:
            break
        c = int(min(open_, key=lambda c: (counts[c], -sizes[c], c)))
        members = members_of[c]
        if c not in typical:
            typical[c] = typicality(x[members], k)  # the whole cluster's density
        score = np.where(taken[members], -np.inf, typical[c])
        pick = int(members[np.argmax(score)])
        picks.append(pick)
        taken[pick] = True
        counts[c] += 1
        free[c] -= 1
    return _fill(picks, len(x), lab, budget, seed)


def default_delta(features: np.ndarray, k: int = PROBCOVER_K,
                  quantile: float = PROBCOVER_QUANTILE) -> float:
    """ProbCover's ball radius without labels: the ``quantile`` of the distance from each
    L2-normalised image to its ``k``-th nearest neighbour (k capped at N - 1), so that a typical
    ball holds about ``k`` neighbours. Small balls are what the paper's purity rule selects for
    (a ball should hold one class), and the coverage graph stays about k edges per image."""
    from sklearn.preprocessing import normalize

    x = normalize(np.asarray(features, dtype=np.float64))
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    k = min(k, len(x) - 1)
    if k < 1:
        return 0.0
    return float(np.quantile(neighbour_distances(x, k)[:, k - 1], quantile))


@register_strategy("probcover")
def probcover_selection(features: np.ndarray, budget: int, seed: int,
                        labelled: Optional[Sequence[int]] = None,
                        delta: Optional[float] = None) -> np.ndarray:
    """Greedy maximum coverage: each image covers the images within ``delta`` of it
    (L2-normalised features); repeatedly pick the image whose ball holds the most uncovered
    images (ties: the lowest index), and mark its ball covered. Images in a labelled image's
    ball start covered. Once everything is covered, the rest of the budget is a seeded random
    draw (as in the paper's code). ``delta`` defaults to :func:`default_delta`."""
    x, lab = _validated(features, budget, labelled)
    if delta is None:
        delta = default_delta(x)
    if not np.isfinite(delta) or delta < 0:
        raise ValueError(f"delta must be a finite radius >= 0, got {delta}")
    # symmetric sparse ball graph, self included: row i = the images image i covers
    graph = radius_graph(x, delta).astype(np.int64)
    uncovered = np.ones(len(x), dtype=np.int64)
    for i in lab:
        uncovered[graph.indices[graph.indptr[i]:graph.indptr[i + 1]]] = 0
    degree = graph @ uncovered
    chosen = np.zeros(len(x), dtype=bool)
    chosen[lab] = True
    picks: list[int] = []
    while len(picks) < budget:
        candidates = np.where(chosen, -1, degree)
        best = int(np.argmax(candidates))
        if candidates[best] <= 0:
            break  # everything is covered
        picks.append(best)
        chosen[best] = True
        ball = graph.indices[graph.indptr[best]:graph.indptr[best + 1]]
        newly = ball[uncovered[ball] == 1]
        uncovered[newly] = 0
        # the graph is symmetric: the balls that held a newly covered image are its neighbours
        degree -= np.asarray(graph[newly].sum(axis=0)).ravel()
    return _fill(picks, len(x), lab, budget, seed)
