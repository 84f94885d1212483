"""Evidence for `cytotune audit` on a real labelled data set (MLCC by default): does it find
labels flipped on purpose, and do its near-duplicate groups match the groups the file names
know?

    .venv/bin/python scripts/audit_evidence.py --data /work/shared/data/mlcc --layout mlcc \\
        --model efficientnet-lite0 --cache-dir /tmp/cytotune-audit-cache --seeds 5

(a) Flipped labels: for each seed, ``--flip`` (5 %) of the images get another class, drawn at
random (seeded); the audit's label-issue stage (out-of-fold probe + cleanlab) runs on the
flipped labels, and the flipped images are looked for at the top k of its ranking (cleanlab's
flagged images first, in its order, then the others by label quality), for k = the number
flipped and twice that: precision (flipped among the top k) and recall (top k among the
flipped), beside a seeded random ranking and its expectation (precision = flipped / N).
The original labels may hold errors of their own: a flagged image that was not flipped counts
against precision here.

(b) Near-duplicate groups against the layout's file-name groups (MLCC: ``HSIL_10_1 ...
HSIL_10_19`` are augmented copies of one source): for each cosine threshold, pairwise
precision and recall of "same group" (scikit-learn's pair confusion matrix; an image in no
near-duplicate group is a group of its own) and the adjusted Rand index.

Features come from the feature cache (``--cache-dir``), extracted once; prints a table per part
and, with ``--json``, writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


# ---- (a) flipped labels ------------------------------------------------------------------------
def flip_labels(codes: np.ndarray, n_classes: int, fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(labels with ``round(fraction x N)`` of them moved to another class, chosen uniformly
    among the other classes; the sorted flipped indices)."""
    if not 0 < fraction < 1:
        raise ValueError(f"--flip must lie in (0, 1), got {fraction}")
    if n_classes < 2:
        raise ValueError("flipping labels needs at least 2 classes")
    rng = np.random.default_rng(seed)
    codes = np.asarray(codes, dtype=np.int64)
    count = max(1, int(round(fraction * len(codes))))
    flipped = np.sort(rng.choice(len(codes), size=count, replace=False))
    out = codes.copy()
    out[flipped] = (codes[flipped] + rng.integers(1, n_classes, size=count)) % n_classes
    return out, flipped


def flip_groups(codes: np.ndarray, groups: Sequence, n_classes: int, fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`flip_labels`, but whole groups at a time (every copy of a source gets the same
    wrong class), groups drawn at random until at least ``round(fraction x N)`` images are
    flipped: the error a mislabelled source image makes in a data set of augmented copies."""
    if not 0 < fraction < 1:
        raise ValueError(f"--flip must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    codes = np.asarray(codes, dtype=np.int64)
    ids = pd.factorize(pd.Series(list(groups), dtype=object))[0]
    target = max(1, int(round(fraction * len(codes))))
    out, chosen = codes.copy(), []
    for g in rng.permutation(ids.max() + 1):
        if len(chosen) >= target:
            break
        members = np.flatnonzero(ids == g)
        shift = int(rng.integers(1, n_classes))
        out[members] = (codes[members] + shift) % n_classes
        chosen.extend(members.tolist())
    return out, np.sort(np.asarray(chosen, dtype=np.int64))


def at_k(ranking: Sequence[int], truth: Sequence[int], k: int) -> tuple[float, float]:
    """(precision, recall) of the first ``k`` of ``ranking`` against the set ``truth``."""
    top = set(int(i) for i in list(ranking)[:k])
    hits = len(top & set(int(i) for i in truth))
    return hits / k, hits / max(1, len(truth))


def audit_ranking(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[list[int], int]:
    """(every image, most suspicious first: cleanlab's flagged ones in its order, then the rest
    by cleanlab's label quality, lowest first; how many were flagged)."""
    from cleanlab.rank import get_label_quality_scores

    from cytotune.analysis.audit import label_issues, oof_probabilities

    flagged = label_issues(features, labels, seed)["index"].tolist()
    probs, _, _ = oof_probabilities(features, labels, seed)
    codes = np.unique(labels, return_inverse=True)[1]
    quality = get_label_quality_scores(codes, probs, method="self_confidence")
    taken = set(flagged)
    rest = [int(i) for i in np.argsort(quality, kind="stable") if int(i) not in taken]
    return flagged + rest, len(flagged)


def flip_experiment(features: np.ndarray, labels: Sequence[str], fraction: float,
                    seeds: Sequence[int], groups: Sequence | None = None) -> pd.DataFrame:
    """One row per (seed, cut, ranking): k, flipped, flagged, precision, recall. Cuts: the top
    k = flipped and k = 2 x flipped of the cleanlab ranking and of a seeded random one (and the
    random ranking's expectation), and cleanlab's own flagged set. With ``groups``, whole
    groups are flipped (:func:`flip_groups`) instead of single images."""
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    n = len(codes)
    rows = []
    for seed in seeds:
        if groups is None:
            noisy, flipped = flip_labels(codes, len(classes), fraction, seed)
        else:
            noisy, flipped = flip_groups(codes, groups, len(classes), fraction, seed)
        ranking, flagged = audit_ranking(features, classes[noisy], seed)
        chance = np.random.default_rng(10_000 + seed).permutation(n).tolist()
        common = {"seed": seed, "flipped": len(flipped), "flagged": flagged}
        for cut, k in (("k = flipped", len(flipped)), ("k = 2 x flipped", 2 * len(flipped))):
            for name, order in (("cleanlab", ranking), ("random", chance)):
                precision, recall = at_k(order, flipped, k)
                rows.append({**common, "ranking": name, "cut": cut, "k": k,
                             "precision": precision, "recall": recall})
            rows.append({**common, "ranking": "random (expected)", "cut": cut, "k": k,
                         "precision": len(flipped) / n, "recall": min(1.0, k / n)})
        precision, recall = at_k(ranking, flipped, flagged) if flagged else (float("nan"), 0.0)
        rows.append({**common, "ranking": "cleanlab", "cut": "flagged set", "k": flagged,
                     "precision": precision, "recall": recall})
    return pd.DataFrame(rows)


def summary(flips: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max over seeds of precision and recall per (ranking, cut)."""
    return (flips.groupby(["ranking", "cut"], sort=False)[["k", "precision", "recall"]]
            .agg(["mean", "min", "max"]).round(3))


# ---- (b) near duplicates against file-name groups ---------------------------------------------
def partition(groups: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """A cluster id per image: its group's, or a fresh one for an image in no group."""
    out = np.full(n, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        out[np.asarray(members, dtype=np.int64)] = g
    alone = out < 0
    out[alone] = len(groups) + np.arange(int(alone.sum()))
    return out


def compare_groups(found: Sequence[Sequence[int]], truth: Sequence, n: int) -> dict:
    """Pairwise precision/recall of "same group" and the adjusted Rand index of the found
    groups (lists of indices) against ``truth`` (a group id per image)."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.metrics.cluster import pair_confusion_matrix

    if len(truth) != n:
        raise ValueError(f"truth gives {len(truth)} group ids for {n} images")
    pred = partition(found, n)
    true = pd.factorize(pd.Series(list(truth), dtype=object))[0]
    (_, fp), (fn, tp) = pair_confusion_matrix(true, pred)  # counts of ordered pairs
    return {"groups": len(found), "grouped_images": int(sum(len(g) for g in found)),
            "pairs_found": int((tp + fp) // 2), "pairs_true": int((tp + fn) // 2),
            "pair_precision": float(tp / (tp + fp)) if tp + fp else float("nan"),
            "pair_recall": float(tp / (tp + fn)) if tp + fn else float("nan"),
            "ari": float(adjusted_rand_score(true, pred))}


def duplicate_experiment(features: np.ndarray, truth: Sequence, thresholds: Sequence[float]
                         ) -> pd.DataFrame:
    """One row per cosine threshold: :func:`compare_groups` of ``near_duplicates``."""
    from cytotune.analysis.audit import near_duplicates

    return pd.DataFrame([{"threshold": t, **compare_groups(near_duplicates(features, t), truth,
                                                           len(features))}
                         for t in thresholds])


# ---- (c) what the features look like, and the approximate path on them ------------------------
def feature_profile(features: np.ndarray, k: int = 10) -> dict:
    """Shape of the L2-normalised features that the synthetic ones of
    ``scripts/bench_audit_scale.py`` imitate: the slope of log singular value against log rank
    (ranks 5-300), the variance share of the first 128 components (the HNSW path's PCA), the
    median distance to the nearest other image, and the HNSW path's ``k``-NN recall against
    brute force over every image (threshold lowered so that the path is taken)."""
    from sklearn.preprocessing import normalize

    from cytotune.data import neighbours

    x = normalize(np.asarray(features, dtype=np.float64))
    sv = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    ranks = np.arange(5, min(300, len(sv)))
    slope = float(np.polyfit(np.log(ranks), np.log(sv[ranks - 1]), 1)[0])
    share = float(np.sum(sv[:neighbours.ANN_DIM] ** 2) / np.sum(sv ** 2))
    saved, neighbours.ANN_MIN_IMAGES = neighbours.ANN_MIN_IMAGES, min(100, len(x) - 1)
    try:
        nearest = neighbours.neighbour_distances(x, 1)[:, 0]
        recall = neighbours.knn_recall(x, k, sample=len(x))
    finally:
        neighbours.ANN_MIN_IMAGES = saved
    return {"spectrum_slope": slope, "variance_in_pca": share,
            "median_nearest_distance": float(np.median(nearest)), f"hnsw_{k}nn_recall": recall}


# ---- the data set ------------------------------------------------------------------------------
def load(data: str, layout: str, model: str, cache_dir: str, batch_size: int
         ) -> tuple[np.ndarray, list[str], list[str], list]:
    """(features, labels, paths, file-name group of each image) through ``embed`` (feature
    cache) and the layout's reader (its ``groups``)."""
    from cytotune.data.layouts import load_dataset
    from cytotune.inference.labelling import make_config
    from cytotune.training.embed import embed

    config = make_config(data=data, model=model, layout=layout, cache_dir=cache_dir)
    emb = embed(config, split="all", batch_size=batch_size)
    dataset = load_dataset(data, layout)
    if dataset.groups is None:
        raise ValueError(f"--data {data}: the {layout} layout gives no file-name groups")
    group_of = {os.path.realpath(p): g for p, g in zip(dataset.paths, dataset.groups)}
    missing = [p for p in emb.paths if os.path.realpath(p) not in group_of]
    if missing:
        raise ValueError(f"--data {data}: {len(missing)} embedded images have no group, "
                         f"e.g. {missing[0]}")
    return (emb.features.numpy(), emb.label_names(), list(emb.paths),
            [group_of[os.path.realpath(p)] for p in emb.paths])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/mlcc")
    p.add_argument("--layout", default="mlcc")
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--cache-dir", default="/tmp/cytotune-audit-cache")
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N of the label flips")
    p.add_argument("--flip", type=float, default=0.05, help="fraction of labels flipped")
    p.add_argument("--thresholds", default="0.8,0.85,0.9,0.925,0.95,0.98",
                   help="cosine thresholds of the near-duplicate comparison")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default=None, help="write the figures here as JSON")
    args = p.parse_args(argv)
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        print(f"error: --thresholds {args.thresholds!r}: give comma-separated numbers",
              file=sys.stderr)
        return 2
    if args.seeds < 1 or not 0 < args.flip < 1 or not thresholds \
            or not all(-1 <= t <= 1 for t in thresholds):
        print("error: --seeds must be >= 1, --flip in (0, 1), --thresholds in [-1, 1]",
              file=sys.stderr)
        return 2
    try:
        features, labels, _, groups = load(args.data, args.layout, args.model, args.cache_dir,
                                           args.batch_size)
    except Exception as err:  # one line, whatever the data set's reader or the model raised
        print(f"error: --data {args.data}: {err}", file=sys.stderr)
        return 1
    seeds = range(1, args.seeds + 1)
    flips = flip_experiment(features, labels, args.flip, seeds)
    group_flips = flip_experiment(features, labels, args.flip, seeds, groups=groups)
    dups = duplicate_experiment(features, groups, thresholds)
    profile = feature_profile(features)
    pd.set_option("display.width", 200)
    print(f"{len(labels)} images, {len(set(labels))} classes, {len(set(groups))} file-name "
          f"groups; {args.model} features")
    print(f"\n(a) {args.flip:.0%} of the images given a wrong label, seeds 1..{args.seeds}: per "
          "seed")
    print(flips.round(3).to_string(index=False))
    print("\nover seeds (mean, min, max)")
    print(summary(flips).to_string())
    print(f"\n(a') the same with whole file-name groups flipped (at least {args.flip:.0%} of the "
          "images; every copy of a source image mislabelled alike), over seeds")
    print(summary(group_flips).to_string())
    print("\n(b) near-duplicate groups against the file-name groups")
    print(dups.round(3).to_string(index=False))
    print("\n(c) the features: " + ", ".join(f"{k} {v:.4g}" for k, v in profile.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"flips": flips.to_dict("records"),
                                               "group_flips": group_flips.to_dict("records"),
                                               "duplicates": dups.to_dict("records"),
                                               "features": profile},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
