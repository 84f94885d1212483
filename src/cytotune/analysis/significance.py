"""Significance tests over paired results, from maintained libraries (scipy, statsmodels,
scikit-posthocs): Wilcoxon signed-rank across seeds, Holm's adjustment across the comparisons of
one table, McNemar's test on two classifiers' correctness over the same images, and the Friedman
test with Nemenyi post-hoc over methods ranked on several data sets (a critical-difference
diagram's inputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

# below this many seeds a Wilcoxon signed-rank test is not reported (the floor; note
# that with 5 seeds the smallest two-sided exact p-value is 2/32 = 0.0625)
MIN_SEEDS_FOR_WILCOXON = 5


def wilcoxon_p(differences: Sequence[float]) -> Optional[float]:
    """Two-sided Wilcoxon signed-rank p-value of per-seed paired differences (scipy's exact
    distribution where it applies); None with fewer than :data:`MIN_SEEDS_FOR_WILCOXON` seeds;
    1.0 when every difference is 0 (nothing to tell apart)."""
    from scipy import stats

    data = np.asarray([d for d in differences if d is not None and math.isfinite(d)], dtype=float)
    if len(data) < MIN_SEEDS_FOR_WILCOXON:
        return None
    if np.all(data == 0):
        return 1.0
    return float(stats.wilcoxon(data).pvalue)


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm-adjusted p-values (statsmodels ``multipletests(method="holm")``) over the tests
    that were run; entries that are None (no test) stay None and do not count as tests."""
    from statsmodels.stats.multitest import multipletests

    present = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    out: list[Optional[float]] = [None] * len(pvalues)
    if present:
        adjusted = multipletests([pvalues[i] for i in present], method="holm")[1]
        for i, p in zip(present, adjusted):
            out[i] = float(p)
    return out


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on two classifiers' correctness over the same images: ``only_a`` images
    right by A alone, ``only_b`` by B alone; exact binomial test when the discordant images are
    fewer than 25, else the chi-square with continuity correction."""

    only_a: int
    only_b: int
    statistic: float
    pvalue: float
    exact: bool


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same images: {a.shape} vs {b.shape}")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    only_a, only_b = int(table[0, 1]), int(table[1, 0])
    exact = only_a + only_b < 25
    result = sm_mcnemar(table, exact=exact, correction=True)
    return McNemar(only_a, only_b, float(result.statistic), float(result.pvalue), exact)


@dataclass(frozen=True)
class Ranking:
    """Methods ranked over blocks (data sets or settings): ``average_ranks`` (1 = best), the
    Friedman test's p-value and the Nemenyi post-hoc p-value matrix (scikit-posthocs)."""

    average_ranks: pd.Series
    friedman_statistic: float
    friedman_p: float
    posthoc: pd.DataFrame
    blocks: int


def rank_methods(scores: pd.DataFrame, lower_is_better: bool = False) -> Ranking:
    """``scores``: one row per block (data set / setting), one column per method, no missing
    values; needs 3 or more blocks and 3 or more methods. Ties share their mean rank."""
    import scikit_posthocs as sp
    from scipy import stats

    if scores.isna().any().any():
        raise ValueError("every method needs a score on every data set to be ranked")
    if (scores.nunique(axis=1) == 1).all():
        raise ValueError("every method scores the same on every data set: nothing to rank")
    if len(scores) < 3 or scores.shape[1] < 3:
        raise ValueError(f"ranking needs >= 3 data sets and >= 3 methods (two are compared "
                         f"paired instead), got {len(scores)} and {scores.shape[1]}")
    values = -scores if not lower_is_better else scores
    ranks = values.rank(axis=1, method="average")
    result = stats.friedmanchisquare(*[scores[c].to_numpy() for c in scores.columns])
    statistic, pvalue = float(result.statistic), float(result.pvalue)
    posthoc = sp.posthoc_nemenyi_friedman(values.to_numpy())
    posthoc.index = posthoc.columns = list(scores.columns)
    return Ranking(ranks.mean().sort_values(), statistic, pvalue, posthoc, len(scores))
