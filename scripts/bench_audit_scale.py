"""Time the data audit (`cytotune audit`'s three feature stages) on synthetic clustered features
at growing sizes: per-image cost and its ratio to the smallest size, per stage and in total.

    .venv/bin/python scripts/bench_audit_scale.py             # 1k, 2k, 3k, 5k, 10k, 50k
    .venv/bin/python scripts/bench_audit_scale.py --sizes 1000,50000 --threads 1

Stages (cytotune.analysis.audit): label issues (out-of-fold logistic-regression probabilities
and cleanlab; the probe is fitted by L-BFGS up to ``audit.MINIBATCH_MIN_IMAGES`` images and by
minibatch Adam above), near-duplicate groups (cosine >= 0.98), outliers (distance to the nearest class
centroid, as the CLI runs it) and, outside the total, unlabelled outliers (k nearest
neighbours, the API's path without labels). Neighbour queries are exact up to
``cytotune.data.neighbours.ANN_MIN_IMAGES`` images and faiss HNSW above; the script also prints
the HNSW k-NN recall against brute force on a sample of rows (not timed) and how many of the
planted near-duplicate pairs the near-duplicate stage found. ``--compare SIZES`` instead runs the
label-issue stage with both probes at each size (3 % of the labels flipped, after a warm-up of
both on 300 images) and prints how far their flagged sets agree and how well each finds the
flips.

Warm-up (imports, the first cleanlab/scikit-learn/torch call, faiss's thread pool, BLAS) is run
and timed once apart, on a small set through both the exact path with the L-BFGS probe and the
approximate path with the minibatch probe, before any size is measured. Thread pools (BLAS,
OpenMP, faiss, torch) are limited to ``--threads`` so that the figures do not depend on what else
the machine runs at the same time as far as possible.

The features: ``--classes`` classes of ``--clusters-per-class`` Gaussian clusters each in
``--dim`` dimensions, on a low-rank subspace with a decaying spectrum (as CNN features have)
plus a little isotropic noise, 5 % of the labels flipped, and 1 % of the images given a
near-copy (cosine about 0.999) as planted duplicates.
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np


def synthetic(n: int, dim: int, seed: int, classes: int = 4, clusters_per_class: int = 10,
              rank: int = 512, flip: float = 0.05, copies: float = 0.01
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (n, dim) float32, given labels (n,), planted near-duplicate pairs (m, 2)).
    The last ``copies x n`` rows are near-copies of earlier rows (same label)."""
    rng = np.random.default_rng(seed)
    rank = min(rank, dim)
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T  # (rank, dim), orthonormal rows
    spectrum = np.arange(1, rank + 1) ** -0.65  # MLCC Lite0 features: slope -0.63
    n_clusters = classes * clusters_per_class
    class_centres = rng.normal(size=(classes, rank)) * spectrum * 3.0
    cluster_centres = (np.repeat(class_centres, clusters_per_class, axis=0)
                       + rng.normal(size=(n_clusters, rank)) * spectrum * 2.0)
    n_copies = int(round(copies * n))
    n_base = n - n_copies
    cluster = rng.integers(0, n_clusters, size=n_base)
    latent = cluster_centres[cluster] + rng.normal(size=(n_base, rank)) * spectrum * 3.0
    x = latent @ basis + 0.01 * rng.normal(size=(n_base, dim))
    x += 2.0 * np.ones(dim) / np.sqrt(dim)  # a shared offset: pooled activations are positive
    truth = cluster // clusters_per_class
    source = rng.choice(n_base, size=n_copies, replace=False)
    copy = x[source] + 0.02 * np.linalg.norm(x[source], axis=1, keepdims=True) \
        * rng.normal(size=(n_copies, dim)) / np.sqrt(dim)
    x = np.concatenate([x, copy]).astype(np.float32)
    truth = np.concatenate([truth, truth[source]])
    labels = truth.copy()
    flipped = rng.choice(n, size=int(round(flip * n)), replace=False)
    labels[flipped] = (truth[flipped] + rng.integers(1, classes, size=len(flipped))) % classes
    pairs = np.c_[source, n_base + np.arange(n_copies)]
    return x, np.array([f"class{c}" for c in labels]), pairs


@contextmanager
def threads(count: int) -> Iterator[None]:
    """BLAS/OpenMP pools and faiss's limited to ``count`` threads."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    before, torch_before = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(count)
    torch.set_num_threads(count)  # the minibatch probe's
    try:
        with threadpool_limits(count):
            yield
    finally:
        faiss.omp_set_num_threads(before)
        torch.set_num_threads(torch_before)


def compare_probes(x: np.ndarray, truth: np.ndarray, seed: int, flip: float = 0.03
                   ) -> dict[str, float]:
    """Flag label issues in ``x`` with ``flip`` of the ``truth`` labels moved to another class
    (seeded), once with each probe (L-BFGS and minibatch Adam, whatever the size): seconds,
    flagged count, precision and recall of the flips for each, and the flagged sets' overlap
    (Jaccard, and the share of L-BFGS's flagged set the minibatch probe flags too)."""
    from cytotune.analysis import audit

    truth = np.asarray(truth)
    classes, codes = np.unique(truth, return_inverse=True)
    rng = np.random.default_rng(seed + 1)
    flipped = rng.choice(len(codes), size=int(round(flip * len(codes))), replace=False)
    given = codes.copy()
    given[flipped] = (codes[flipped] + rng.integers(1, len(classes), size=len(flipped))) \
        % len(classes)
    flips, out, sets = set(flipped.tolist()), {}, {}
    for solver in ("lbfgs", "minibatch"):
        start = time.perf_counter()
        found = set(audit.label_issues(x, classes[given], seed, solver=solver)["index"].tolist())
        out[f"{solver} s"] = time.perf_counter() - start
        out[f"{solver} flagged"] = len(found)
        out[f"{solver} precision"] = len(found & flips) / max(1, len(found))
        out[f"{solver} recall"] = len(found & flips) / max(1, len(flips))
        sets[solver] = found
    a, b = sets["lbfgs"], sets["minibatch"]
    out["jaccard"] = len(a & b) / max(1, len(a | b))
    out["lbfgs flags also flagged by minibatch"] = len(a & b) / max(1, len(a))
    out["flipped"] = len(flips)
    return out


def run_stages(x: np.ndarray, labels: np.ndarray, seed: int) -> tuple[dict[str, float], dict]:
    """Seconds of each stage, and what the stages found."""
    from cytotune.analysis import audit

    seconds, found = {}, {}
    start = time.perf_counter()
    found["issues"] = len(audit.label_issues(x, labels, seed))
    seconds["label issues"] = time.perf_counter() - start
    start = time.perf_counter()
    found["groups"] = audit.near_duplicates(x)
    seconds["near dups"] = time.perf_counter() - start
    start = time.perf_counter()
    audit.outliers(x, labels)
    seconds["outliers"] = time.perf_counter() - start
    start = time.perf_counter()
    audit.outliers(x)
    seconds["outliers (no labels)"] = time.perf_counter() - start
    return seconds, found


def warm_up(dim: int, seed: int, n: int = 500) -> tuple[float, float]:
    """(seconds of a first exact audit of ``n`` images with the L-BFGS probe, seconds of a first
    approximate one with the minibatch probe, both thresholds lowered): imports (torch's among
    them), first calls and thread pools, paid once per process."""
    from cytotune.analysis import audit
    from cytotune.data import neighbours

    x, labels, _ = synthetic(n, dim, seed + 1)
    start = time.perf_counter()
    run_stages(x, labels, seed)
    exact = time.perf_counter() - start
    saved, neighbours.ANN_MIN_IMAGES = neighbours.ANN_MIN_IMAGES, n // 2
    saved_probe, audit.MINIBATCH_MIN_IMAGES = audit.MINIBATCH_MIN_IMAGES, n // 2
    try:
        start = time.perf_counter()
        run_stages(x, labels, seed)
        ann = time.perf_counter() - start
    finally:
        neighbours.ANN_MIN_IMAGES = saved
        audit.MINIBATCH_MIN_IMAGES = saved_probe
    return exact, ann


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,2000,3000,5000,10000,50000",
                   help="comma-separated image counts; the first is the ratios' basis")
    p.add_argument("--dim", type=int, default=1280, help="feature dimension (EfficientNet-Lite0)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/faiss threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ann-min", type=int, default=None,
                   help="images above which neighbour queries are approximate (default: "
                        "cytotune.data.neighbours.ANN_MIN_IMAGES)")
    p.add_argument("--also-exact", action="store_true",
                   help="at sizes on the approximate path, time the exact neighbour stages too "
                        "(the quadratic cost the HNSW path replaces)")
    p.add_argument("--probe-iterations", action="store_true",
                   help="only print the L-BFGS iterations of the audit's probe on 80 %% of each "
                        "size, with C = 1 and with the per-image C it uses, then stop")
    p.add_argument("--compare", default=None, metavar="SIZES",
                   help="only compare the two label-issue probes (L-BFGS, minibatch) at these "
                        "comma-separated sizes, 3 %% of the labels flipped, then stop")
    p.add_argument("--recall-sample", type=int, default=200,
                   help="rows whose HNSW neighbours are checked against brute force")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --sizes {args.sizes!r}: give comma-separated integers")
    if not sizes or min(sizes) < 100:
        raise SystemExit(f"error: --sizes {args.sizes!r}: each size must be at least 100")
    if args.compare is not None:
        try:
            args.compare = [int(s) for s in args.compare.split(",") if s.strip()]
        except ValueError:
            raise SystemExit(f"error: --compare {args.compare!r}: give comma-separated integers")
        if not args.compare or min(args.compare) < 100:
            raise SystemExit(f"error: --compare {args.compare!r}: each size must be at least 100")
    from cytotune.data import neighbours

    saved = neighbours.ANN_MIN_IMAGES
    if args.ann_min is not None:
        neighbours.ANN_MIN_IMAGES = args.ann_min
    try:
        return _run(args, sizes)
    finally:
        neighbours.ANN_MIN_IMAGES = saved


def _run(args: argparse.Namespace, sizes: list[int]) -> int:
    """The measurements of :func:`main`, its options parsed."""
    from cytotune.analysis.audit import NEAR_DUPLICATE_SIMILARITY
    from cytotune.data import neighbours

    if args.compare:
        with threads(args.threads):
            # imports and first calls of both probes (torch's among them), not in the seconds
            compare_probes(*synthetic(300, args.dim, args.seed, flip=0.0)[:2], args.seed)
            for n in args.compare:
                x, truth, _ = synthetic(n, args.dim, args.seed, flip=0.0)
                r = compare_probes(x, truth, args.seed)
                print(f"{n} images, {r['flipped']} labels flipped (3 %): " + "; ".join(
                    f"{s} {r[s + ' s']:.2f} s, flagged {r[s + ' flagged']}, precision "
                    f"{r[s + ' precision']:.3f}, recall {r[s + ' recall']:.3f}"
                    for s in ("lbfgs", "minibatch"))
                    + f"; flagged sets: Jaccard {r['jaccard']:.3f}, "
                    f"{r['lbfgs flags also flagged by minibatch']:.3f} of L-BFGS's flagged "
                    "also flagged by minibatch", flush=True)
        return 0
    if args.probe_iterations:
        from cytotune.analysis.audit import probe, probe_c

        with threads(args.threads):
            for n in sizes:
                x, labels, _ = synthetic(n, args.dim, args.seed)
                train = int(0.8 * n)
                counts = []
                for model in (probe(), probe(train)):  # C = 1, and the audit's C
                    start = time.perf_counter()
                    model.fit(x[:train], labels[:train])
                    counts.append((int(model[-1].n_iter_[0]), time.perf_counter() - start))
                print(f"{train} training images: C = 1: {counts[0][0]} iterations, "
                      f"{counts[0][1]:.2f} s; C = {probe_c(train):.3g}: {counts[1][0]} "
                      f"iterations, {counts[1][1]:.2f} s", flush=True)
        return 0
    with threads(args.threads):
        exact_s, ann_s = warm_up(args.dim, args.seed, min(500, min(sizes)))
        print(f"warm-up (once per process, not in the figures below): first exact L-BFGS "
              f"audit of {min(500, min(sizes))} images {exact_s:.2f} s, first approximate "
              f"minibatch one {ann_s:.2f} s; threads {args.threads}; exact up to "
              f"{neighbours.ANN_MIN_IMAGES} images, HNSW above",
              flush=True)
        rows = []
        for n in sizes:
            x, labels, pairs = synthetic(n, args.dim, args.seed)
            seconds, found = run_stages(x, labels, args.seed)
            group_of = {i: g for g, members in enumerate(found["groups"]) for i in members}
            hit = sum(1 for a, b in pairs if a in group_of and group_of.get(a) == group_of.get(b))
            recall = (neighbours.knn_recall(x, 10, sample=args.recall_sample, seed=args.seed)
                      if neighbours.uses_ann(n) else 1.0)
            rows.append((n, seconds))
            from cytotune.analysis.audit import uses_minibatch

            print(f"{n} images ({'HNSW' if neighbours.uses_ann(n) else 'exact'}, "
                  f"{'minibatch' if uses_minibatch(n) else 'L-BFGS'} probe): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
                  + f"; flagged {found['issues']} label issues (5 % flipped), "
                  f"{hit}/{len(pairs)} planted near-copies grouped "
                  f"(cosine >= {NEAR_DUPLICATE_SIMILARITY}), 10-NN recall {recall:.4f}",
                  flush=True)
            if args.also_exact and neighbours.uses_ann(n):
                saved, neighbours.ANN_MIN_IMAGES = neighbours.ANN_MIN_IMAGES, n
                try:
                    from cytotune.analysis import audit

                    start = time.perf_counter()
                    exact_groups = audit.near_duplicates(x)
                    dup_s = time.perf_counter() - start
                    start = time.perf_counter()
                    audit.outliers(x)
                    far_s = time.perf_counter() - start
                finally:
                    neighbours.ANN_MIN_IMAGES = saved
                same = "same groups" if exact_groups == found["groups"] else "groups differ"
                print(f"  exact path at {n}: near dups {dup_s:.2f} s ({same} as HNSW), "
                      f"outliers (no labels) {far_s:.2f} s", flush=True)
    stages = list(rows[0][1])
    timed = [s for s in stages if s != "outliers (no labels)"]
    base_n, base = rows[0]
    base_total = sum(base[s] for s in timed)
    print(f"\nms per image (ratio to {base_n}); total = label issues + near dups + outliers")
    print("images | " + " | ".join(stages) + " | total")
    for n, seconds in rows:
        cells = [f"{1e3 * seconds[s] / n:.3f} ({(seconds[s] / n) / (base[s] / base_n):.2f}x)"
                 for s in stages]
        total = sum(seconds[s] for s in timed)
        cells.append(f"{1e3 * total / n:.3f} ({(total / n) / (base_total / base_n):.2f}x)")
        print(f"{n} | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
