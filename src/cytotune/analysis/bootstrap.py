"""Intervals for a cell's mean over seeds, and for the paired difference of two cells.

Two sources of variation make a reported mean uncertain: which training images (and learning
rate) a seed drew, and which test images the test split happens to hold. The interval here is a
**two-level (hierarchical) percentile bootstrap**: each resample draws the seeds with
replacement and, within each drawn seed, that run's test images with replacement, computes the
metric per drawn run and averages over the drawn seeds. For accuracy, balanced accuracy and
macro-F1 a resample of test images is a multinomial draw over the run's (label, prediction)
cells (exactly what resampling images does, without materialising them), which keeps a report of
thousands of runs fast.

Paired differences resample the *same* seeds for both settings and, where both runs carry
per-image predictions for the same test images, the same images (a draw over joint (label,
prediction A, prediction B) cells); runs known only by their confusion matrix are resampled
independently within a seed (seed-paired only, which is conservative). ``basis`` says which.

Metrics that need probabilities (AUROC, ECE) get a one-level bootstrap over seeds
(:func:`scipy.stats.bootstrap`, percentile), which leaves out the test images' own error.

With few seeds (5 is common) any bootstrap over seeds is somewhat narrow; the report states
the method, the number of resamples, the level and the random seed beside every table.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from cytotune.analysis.outcomes import COUNT_METRICS, Outcome, count_metric, count_metrics

BASIS_IMAGES = "seeds x test images"
BASIS_IMAGES_PAIRED = "seeds x test images, paired by image"
BASIS_IMAGES_UNPAIRED = "seeds (paired) x test images (unpaired: no per-image predictions)"
BASIS_SEEDS = "seeds only"
BASIS_NONE = "one seed, no per-image outcome: no interval"


@dataclass(frozen=True)
class BootstrapSpec:
    """How intervals are drawn: ``resamples`` bootstrap resamples, a central ``level`` interval
    (0.95 = 95 %), and the random ``seed`` the resampling starts from (each cell draws its own
    stream from it and the cell's key, so an interval does not depend on the other cells).
    2,000 resamples by default: the end points of a 95 % percentile interval then move by a few
    hundredths of its width between random seeds of the resampling, and a report of 10,000 runs
    with its paired comparisons stays well within half a minute on two cores (docs/report.md)."""

    resamples: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) \
                or self.resamples < 100:
            raise ValueError(f"resamples must be an integer >= 100, got {self.resamples!r}")
        if not (isinstance(self.level, (int, float)) and 0.5 <= float(self.level) < 1.0):
            raise ValueError(f"level must lie in [0.5, 1), e.g. 0.95, got {self.level!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def describe(self) -> str:
        return (f"{self.level:.0%} percentile bootstrap, {self.resamples} resamples, "
                f"random seed {self.seed}")

    def rng(self, key: str) -> np.random.Generator:
        digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
        return np.random.default_rng([self.seed, digest])


@dataclass(frozen=True)
class Interval:
    """A point ``estimate`` (the mean over seeds, as a fraction) with its interval."""

    estimate: float
    low: float
    high: float
    basis: str

    @property
    def excludes_zero(self) -> bool:
        """For a difference: the interval lies strictly on one side of 0 (an exact tie, or an
        interval touching 0, is never resolved)."""
        return (self.low > 0.0) or (self.high < 0.0)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def _seed_slots(n_seeds: int, spec: BootstrapSpec, rng: np.random.Generator) -> np.ndarray:
    """(resamples, seeds): which seed fills each slot of each resample."""
    if n_seeds == 1:
        return np.zeros((spec.resamples, 1), dtype=np.int64)
    return rng.integers(0, n_seeds, size=(spec.resamples, n_seeds))


class _CellDraws:
    """Resampled confusion counts of one run (or, paired, of two runs over the same images):
    the run's distinct (label, prediction[, prediction B]) cells and their counts."""

    def __init__(self, a: Outcome, b: Optional[Outcome] = None) -> None:
        c = a.n_classes
        self.n, self.classes = a.n, c
        if b is None:
            codes = a.labels * c + a.predicted
            cells, counts = np.unique(codes, return_counts=True)
            self.index_a, self.index_b = cells, None
        else:
            codes = (a.labels * c + a.predicted) * c + b.predicted
            cells, counts = np.unique(codes, return_counts=True)
            label, pred_a, pred_b = cells // (c * c), (cells // c) % c, cells % c
            self.index_a, self.index_b = label * c + pred_a, label * c + pred_b
        self.probs = counts / counts.sum()

    def _scatter(self, draws: np.ndarray, index: np.ndarray) -> np.ndarray:
        """(k, C, C) confusion counts from (k, cells) draws: a product with the cells' one-hot
        map (cells of a paired draw can share a (label, prediction) pair of one run)."""
        onehot = np.zeros((len(index), self.classes * self.classes))
        onehot[np.arange(len(index)), index] = 1.0
        return (draws @ onehot).reshape(len(draws), self.classes, self.classes)

    def metrics(self, k: int, metrics: Sequence[str], rng: np.random.Generator) \
            -> dict[str, np.ndarray]:
        """k resampled values of each metric (paired: of A's metric minus B's), all from the
        same k draws of the images."""
        draws = rng.multinomial(self.n, self.probs, size=k).astype(np.float64)
        out = count_metrics(self._scatter(draws, self.index_a), metrics)
        if self.index_b is not None:
            minus = count_metrics(self._scatter(draws, self.index_b), metrics)
            out = {m: out[m] - minus[m] for m in metrics}
        return out


def _hierarchical(samplers: Sequence[Sequence[_CellDraws]], metrics: Sequence[str],
                  spec: BootstrapSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap distribution of the mean over seeds, per metric; ``samplers[j]`` draws seed
    j's value (one sampler: a run or a paired pair; two: independent runs whose difference is
    taken). The draws do not depend on ``metrics``: each metric's distribution is the same
    whichever others are asked for."""
    slots = _seed_slots(len(samplers), spec, rng)
    values = {m: np.zeros(slots.shape) for m in metrics}
    for j, seed_samplers in enumerate(samplers):
        mask = slots == j
        k = int(mask.sum())
        if not k:
            continue
        drawn = seed_samplers[0].metrics(k, metrics, rng)
        for other in seed_samplers[1:]:
            minus = other.metrics(k, metrics, rng)
            drawn = {m: drawn[m] - minus[m] for m in metrics}
        for m in metrics:
            values[m][mask] = drawn[m]
    return {m: v.mean(axis=1) for m, v in values.items()}


def _check_count_metrics(metrics: Sequence[str]) -> None:
    wrong = [m for m in metrics if m not in COUNT_METRICS]
    if wrong or not metrics:
        raise ValueError(f"an image-level bootstrap needs count metrics "
                         f"({', '.join(COUNT_METRICS)}), not {', '.join(wrong) or 'none'}: use "
                         f"seed_interval")


def cell_intervals(outcomes: Sequence[Outcome], metrics: Sequence[str], spec: BootstrapSpec,
                   key: str = "") -> dict[str, Interval]:
    """Mean of each metric over seeds (one outcome per seed) with its hierarchical bootstrap
    interval over seeds and test images, all metrics from the same draws. ``key`` names the
    cell (its random stream)."""
    _check_count_metrics(metrics)
    if not outcomes:
        raise ValueError("a cell needs at least one run")
    values = _hierarchical([[_CellDraws(o)] for o in outcomes], metrics, spec, spec.rng(key))
    out = {}
    for metric in metrics:
        estimate = float(np.mean([count_metric(o.confusion(), metric) for o in outcomes]))
        out[metric] = Interval(estimate, *_percentiles(values[metric], spec.level), BASIS_IMAGES)
    return out


def cell_interval(outcomes: Sequence[Outcome], metric: str, spec: BootstrapSpec,
                  key: str = "") -> Interval:
    """:func:`cell_intervals` of one metric."""
    return cell_intervals(outcomes, [metric], spec, key)[metric]


def _same_images(a: Outcome, b: Outcome) -> bool:
    return (a.image_ids is not None and b.image_ids is not None
            and a.n_classes == b.n_classes and a.image_ids == b.image_ids
            and np.array_equal(a.labels, b.labels))


def align_by_image(a: Outcome, b: Outcome) -> tuple[Outcome, Outcome]:
    """``b`` reordered to ``a``'s image order when both name the same set of images (as two
    runs' prediction tables do, possibly sorted differently); unchanged otherwise."""
    if a.image_ids is None or b.image_ids is None or a.image_ids == b.image_ids \
            or len(a.image_ids) != len(b.image_ids) or set(a.image_ids) != set(b.image_ids):
        return a, b
    where = {image: i for i, image in enumerate(b.image_ids)}
    order = np.array([where[image] for image in a.image_ids])
    return a, Outcome(b.labels[order], b.predicted[order], b.n_classes, a.image_ids)


def paired_intervals(a: Sequence[Outcome], b: Sequence[Outcome], metrics: Sequence[str],
                     spec: BootstrapSpec, key: str = "") -> dict[str, Interval]:
    """Mean over seeds of (A's metric minus B's), ``a[i]`` and ``b[i]`` being the same seed,
    with a paired hierarchical bootstrap interval per metric: seeds resampled jointly, test
    images jointly where both runs of a seed carry per-image predictions of the same images
    (else independently within the seed; ``basis`` says which)."""
    _check_count_metrics(metrics)
    if len(a) != len(b) or not a:
        raise ValueError(f"paired runs must match seed for seed: {len(a)} vs {len(b)}")
    samplers, paired = [], True
    for run_a, run_b in zip(a, b):
        run_a, run_b = align_by_image(run_a, run_b)
        if _same_images(run_a, run_b):
            samplers.append([_CellDraws(run_a, run_b)])
        else:
            paired = False
            samplers.append([_CellDraws(run_a), _CellDraws(run_b)])
    values = _hierarchical(samplers, metrics, spec, spec.rng(key))
    basis = BASIS_IMAGES_PAIRED if paired else BASIS_IMAGES_UNPAIRED
    out = {}
    for metric in metrics:
        estimate = float(np.mean([count_metric(x.confusion(), metric)
                                  - count_metric(y.confusion(), metric) for x, y in zip(a, b)]))
        out[metric] = Interval(estimate, *_percentiles(values[metric], spec.level), basis)
    return out


def paired_interval(a: Sequence[Outcome], b: Sequence[Outcome], metric: str,
                    spec: BootstrapSpec, key: str = "") -> Interval:
    """:func:`paired_intervals` of one metric."""
    return paired_intervals(a, b, [metric], spec, key)[metric]


def seed_interval(values: Sequence[float], spec: BootstrapSpec, key: str = "") -> Interval:
    """Mean of per-seed values (or of per-seed paired differences) with a one-level percentile
    bootstrap over seeds (:func:`scipy.stats.bootstrap`); one seed has no interval (NaN)."""
    from scipy import stats

    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(data) == 0:
        return Interval(math.nan, math.nan, math.nan, BASIS_NONE)
    estimate = float(data.mean())
    if len(data) == 1:
        return Interval(estimate, math.nan, math.nan, BASIS_NONE)
    if np.all(data == data[0]):  # every resample has the same mean; scipy warns on it
        return Interval(float(data[0]), float(data[0]), float(data[0]), BASIS_SEEDS)
    result = stats.bootstrap((data,), np.mean, n_resamples=spec.resamples,
                             confidence_level=spec.level, method="percentile",
                             rng=spec.rng(key))
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), BASIS_SEEDS)
