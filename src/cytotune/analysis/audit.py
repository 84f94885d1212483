"""Which labels look wrong, which images repeat, which are far from every class: a data audit
over cached features.

- :func:`label_issues`: cleanlab's confident learning (``find_label_issues``) on out-of-fold
  probabilities of a logistic-regression probe, so that no image is scored by a probe that saw
  its label. The probe is fitted by L-BFGS up to :data:`MINIBATCH_MIN_IMAGES` images (MLCC's
  950 among them) and by minibatch Adam (a fixed number of passes) above, where L-BFGS's cost
  per image grew 2x by 5,000 images and 4x by 50,000 (docs/measurements.md).
- :func:`near_duplicates` (cosine similarity of features) and :func:`exact_duplicates` (sha256
  of file bytes): groups that should share a ``group`` column so that a split keeps them together.
- :func:`outliers`: distance to the nearest class centroid, or to the k nearest neighbours when
  there are no labels.

Every step is a neighbour query or a per-class pass (no N x N dense matrix), so memory grows
linearly with the number of images; above :data:`cytotune.data.neighbours.ANN_MIN_IMAGES`
images the neighbour queries are approximate (faiss HNSW), so time does too (about: HNSW is
O(log N) per image).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from cytotune.data.neighbours import neighbour_distances, radius_graph

DEFAULT_FOLDS = 5
# training images up to which the probe keeps C = 1; above, C = PROBE_C_IMAGES / images
PROBE_C_IMAGES = 1000
# above this many images the out-of-fold probe is fitted by minibatch Adam (a fixed number of
# passes over the data: cost per image flat), at or below by L-BFGS (as before; MLCC's 950).
# L-BFGS's cost per image grows with the data (2x the 1k figure at 5k), so the switch sits
# just above the 1k basis of the scale target; read at call time so that a test can lower it
MINIBATCH_MIN_IMAGES = 1500
# the minibatch probe: passes over the training folds, most images per step, Adam's first step
# size (cosine-decayed to zero over the run); measured in docs/measurements.md ("audit scale")
MINIBATCH_EPOCHS = 10
MINIBATCH_BATCH = 512
MINIBATCH_LR = 0.01
# fewest Adam steps per pass: below MINIBATCH_MIN_STEPS x MINIBATCH_BATCH training images the
# batches shrink instead (see minibatch_batch), so small data still gets enough steps
MINIBATCH_MIN_STEPS = 20
SOLVERS = ("auto", "lbfgs", "minibatch")
# cosine similarity at or above which two images count as near-duplicates
NEAR_DUPLICATE_SIMILARITY = 0.98


def _features(features: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Finite 2-D float features of ``dtype``, or a ValueError saying what is wrong."""
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty 2-D array (images x dimensions), "
                         f"got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"features must be real numbers, got dtype {x.dtype}")
    x = x.astype(dtype, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinite values")
    return x


def _labels(labels: Sequence, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(class names in sorted order, integer code of each image) for ``n`` images."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must give one label per image: {n} images, labels of shape "
                         f"{y.shape}")
    if pd.isna(pd.Series(y)).any():
        raise ValueError("labels contain missing values")
    classes, codes = np.unique(y, return_inverse=True)
    return classes, codes


def uses_minibatch(n_images: Optional[int], solver: str = "auto") -> bool:
    """Whether an audit of ``n_images`` fits its probe by minibatch Adam: ``solver`` says so, or
    (``"auto"``) there are more than :data:`MINIBATCH_MIN_IMAGES` images."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if solver != "auto":
        return solver == "minibatch"
    return n_images is not None and n_images > MINIBATCH_MIN_IMAGES


def minibatch_batch(n_train: Optional[int]) -> int:
    """Images per Adam step of the minibatch probe on ``n_train`` training images:
    :data:`MINIBATCH_BATCH`, or ``n_train // MINIBATCH_MIN_STEPS`` when that is smaller, so that
    every pass has at least :data:`MINIBATCH_MIN_STEPS` steps. With a fixed batch of 512, the
    1,600 training images of a 2,000-image audit got 4 steps a pass (40 in all); here 20 (200),
    while each image is still seen :data:`MINIBATCH_EPOCHS` times, so the cost per image stays
    flat."""
    if n_train is None:
        return MINIBATCH_BATCH
    return max(1, min(MINIBATCH_BATCH, int(n_train) // max(1, MINIBATCH_MIN_STEPS)))


def probe(n_train: Optional[int] = None, n_images: Optional[int] = None, seed: int = 0,
          solver: str = "auto"):
    """The probe whose out-of-fold probabilities feed cleanlab: standardised features into a
    multinomial logistic regression (the study's linear probe, without the tuning), with
    ``C`` = :func:`probe_c` of the images it is fitted on. Up to :data:`MINIBATCH_MIN_IMAGES`
    images in the audit (``n_images``), scikit-learn's L-BFGS; above, the same objective by
    minibatch Adam (:class:`~cytotune.analysis.minibatch_logistic.MinibatchLogisticRegression`,
    seeded by ``seed``, batches of :func:`minibatch_batch`), whose cost per image does not grow
    with the data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if uses_minibatch(n_images, solver):
        from cytotune.analysis.minibatch_logistic import MinibatchLogisticRegression

        # sklearn: 0.5 ||w||^2 + C sum(loss); divided by C n: mean loss + ||w||^2 / (2 C n)
        l2 = 1.0 / (probe_c(n_train) * max(1, n_train or 1))
        return make_pipeline(StandardScaler(), MinibatchLogisticRegression(
            l2=l2, epochs=MINIBATCH_EPOCHS, batch_size=minibatch_batch(n_train),
            lr=MINIBATCH_LR, seed=seed))
    return make_pipeline(StandardScaler(),
                         LogisticRegression(C=probe_c(n_train), max_iter=2000))


def probe_c(n_train: Optional[int]) -> float:
    """The probe's inverse penalty: 1 (scikit-learn's default) up to :data:`PROBE_C_IMAGES`
    training images, ``PROBE_C_IMAGES / n_train`` above, i.e. a fixed penalty per image. With
    C = 1 at any size the penalty shrinks against the summed loss as images are added and
    L-BFGS needs more iterations (83, 247, 446, 495, 492 at 800, 4k, 8k, 16k, 40k training
    images of synthetic 1280-D features), with the fixed per-image penalty fewer (83, 196, 205,
    195, 184): a fit of 40k images in 14 s instead of 24 s (``scripts/bench_audit_scale.py
    --probe-iterations``). Small data sets are fitted as before."""
    if n_train is None or n_train <= PROBE_C_IMAGES:
        return 1.0
    return PROBE_C_IMAGES / n_train


def fold_plan(codes: np.ndarray, seed: int, folds: int = DEFAULT_FOLDS):
    """(StratifiedKFold, folds used, note): fewer folds when the smallest class has fewer
    images than ``folds`` (each fold must be able to hold out one image of every class while
    the probe still sees that class); a ValueError when a class has a single image."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    counts = np.bincount(codes)
    if len(counts) < 2:
        raise ValueError("a label audit needs at least 2 classes")
    smallest = int(counts.min())
    if smallest < 2:
        raise ValueError("every class needs at least 2 images for out-of-fold probabilities; "
                         f"class #{int(counts.argmin())} has {smallest}")
    used = min(folds, smallest)
    note = "" if used == folds else (f"{used} folds instead of {folds}: the smallest class has "
                                     f"{smallest} images")
    return StratifiedKFold(n_splits=used, shuffle=True, random_state=seed), used, note


def oof_probabilities(features: np.ndarray, labels: Sequence, seed: int,
                      folds: int = DEFAULT_FOLDS, solver: str = "auto"
                      ) -> tuple[np.ndarray, np.ndarray, str]:
    """(out-of-fold class probabilities (N, classes), class names, note): each image's row comes
    from a :func:`probe` fitted on the other folds only (scikit-learn ``cross_val_predict``).
    ``solver``: ``"auto"`` (L-BFGS up to :data:`MINIBATCH_MIN_IMAGES` images, minibatch Adam
    above), or ``"lbfgs"`` / ``"minibatch"`` at any size (to compare them)."""
    from sklearn.model_selection import cross_val_predict

    minibatch = uses_minibatch(np.shape(features)[0] if np.ndim(features) else None, solver)
    # float32 for the minibatch probe: it trains in float32, and half the bytes to scan
    x = _features(features, np.float32 if minibatch else np.float64)
    classes, codes = _labels(labels, len(x))
    cv, used, note = fold_plan(codes, seed, folds)
    n_train = len(x) - -(-len(x) // used)  # the smallest training fold
    model = probe(n_train, len(x), seed, "minibatch" if minibatch else "lbfgs")
    probs = cross_val_predict(model, x, codes, cv=cv, method="predict_proba")
    return probs, classes, note


def label_issues(features: np.ndarray, labels: Sequence, seed: int,
                 folds: int = DEFAULT_FOLDS, solver: str = "auto") -> pd.DataFrame:
    """Probable label errors, most likely first: cleanlab's ``find_label_issues`` (ranked by
    self-confidence) on out-of-fold probabilities. Columns: index (row in ``features``),
    given_label, suggested_label (the probe's top class), given_prob, suggested_prob and
    label_quality (cleanlab's self-confidence score, low = suspicious). ``attrs`` holds the
    folds used and a note when they had to be fewer than asked. ``solver``: the probe's fit
    (see :func:`oof_probabilities`)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs, classes, note = oof_probabilities(features, labels, seed, folds, solver)
    _, codes = _labels(labels, len(probs))
    # n_jobs=1: cleanlab's default forks a process pool, which can deadlock in a process that
    # already runs torch's threads (`cytotune audit` hung); the result does not depend on it
    ranked = np.asarray(find_label_issues(labels=codes, pred_probs=probs, n_jobs=1,
                                          return_indices_ranked_by="self_confidence"),
                        dtype=np.int64)
    quality = get_label_quality_scores(codes, probs, method="self_confidence")
    top = probs.argmax(axis=1)
    rows = np.arange(len(probs))
    table = pd.DataFrame({
        "index": ranked,
        "given_label": classes[codes[ranked]],
        "suggested_label": classes[top[ranked]],
        "given_prob": probs[rows, codes][ranked],
        "suggested_prob": probs[rows, top][ranked],
        "label_quality": quality[ranked],
    })
    table.attrs["folds"] = fold_plan(codes, seed, folds)[1]
    table.attrs["note"] = note
    return table


def _groups(graph) -> list[list[int]]:
    """Connected components of a sparse graph with 2 or more members, each sorted, ordered by
    their first member."""
    from scipy.sparse.csgraph import connected_components

    _, component = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(component.tolist()):
        members.setdefault(c, []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def near_duplicates(features: np.ndarray,
                    threshold: float = NEAR_DUPLICATE_SIMILARITY) -> list[list[int]]:
    """Groups of images whose features have cosine similarity >= ``threshold``, linked
    transitively (connected components: A~B and B~C put A, B, C in one group). On L2-normalised
    features cosine >= t is Euclidean distance <= sqrt(2 - 2t): a radius neighbour query."""
    from sklearn.preprocessing import normalize

    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    x = normalize(_features(features))
    radius = float(np.sqrt(max(0.0, 2.0 - 2.0 * threshold)))
    radius *= 1 + 1e-9  # rounding: an exact copy at threshold 1 must still count
    return _groups(radius_graph(x, radius))


def exact_duplicates(paths: Sequence[Union[str, Path]]) -> list[list[int]]:
    """Groups of files (indices into ``paths``) with identical bytes, by sha256; a ValueError
    naming the file that cannot be read."""
    by_hash: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as err:
            raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
        by_hash.setdefault(digest.hexdigest(), []).append(i)
    return sorted((m for m in by_hash.values() if len(m) > 1), key=lambda m: m[0])


def outliers(features: np.ndarray, labels: Optional[Sequence] = None,
             k: int = 10) -> pd.DataFrame:
    """Images far from the rest, most outlying first. With labels: the Euclidean distance of
    each L2-normalised image to the nearest class centroid (an image far from *every* class,
    whatever its own label), with that class. Without: the mean distance to its ``k`` nearest
    neighbours. Columns: index, score, and nearest_class when labelled."""
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import normalize

    x = normalize(_features(features))
    if labels is not None:
        classes, codes = _labels(labels, len(x))
        centroids = np.stack([x[codes == c].mean(axis=0) for c in range(len(classes))])
        dist, nearest = NearestNeighbors(n_neighbors=1).fit(centroids).kneighbors(x)
        table = pd.DataFrame({"index": np.arange(len(x)), "score": dist[:, 0],
                              "nearest_class": classes[nearest[:, 0]]})
    else:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if len(x) < 2:
            raise ValueError("outliers without labels need at least 2 images")
        k = min(k, len(x) - 1)
        dist = neighbour_distances(x, k)
        table = pd.DataFrame({"index": np.arange(len(x)), "score": dist.mean(axis=1)})
    return table.sort_values(["score", "index"], ascending=[False, True],
                             kind="stable").reset_index(drop=True)
