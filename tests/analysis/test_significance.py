"""Wilcoxon against scipy, Holm and McNemar against hand computations, Friedman against scipy."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cytotune.analysis import holm, mcnemar, rank_methods, wilcoxon_p


def test_wilcoxon_is_scipys_signed_rank_test():
    diffs = [2.1, -0.4, 3.3, 1.2, 0.8, 2.9]
    assert wilcoxon_p(diffs) == pytest.approx(stats.wilcoxon(diffs).pvalue)
    # five seeds: the exact two-sided test cannot go below 2/2^5
    assert wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(0.0625)


def test_wilcoxon_needs_five_seeds_and_calls_all_zero_differences_equal():
    assert wilcoxon_p([1.0, 2.0, 3.0, 4.0]) is None
    assert wilcoxon_p([0.0] * 6) == 1.0
    assert wilcoxon_p([1.0, 2.0, float("nan"), 3.0, 4.0]) is None  # NaN is not a seed


def test_holm_matches_a_hand_computation():
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([None, None]) == [None, None]


def test_mcnemar_matches_a_hand_computation():
    a = np.array([True] * 30 + [True] * 8 + [False] * 2 + [False] * 10)
    b = np.array([True] * 30 + [False] * 8 + [True] * 2 + [False] * 10)
    result = mcnemar(a, b)
    # exact: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert (result.only_a, result.only_b, result.exact) == (8, 2, True)
    assert result.pvalue == pytest.approx(2 * 56 / 1024)
    # many discordant images: chi-square with continuity correction, (|b - c| - 1)^2 / (b + c)
    a = np.array([True] * 40 + [False] * 20)
    b = np.array([False] * 40 + [True] * 20)
    result = mcnemar(a, b)
    assert not result.exact
    assert result.statistic == pytest.approx((abs(40 - 20) - 1) ** 2 / 60)
    assert result.pvalue == pytest.approx(stats.chi2.sf((abs(40 - 20) - 1) ** 2 / 60, 1))
    with pytest.raises(ValueError, match="same images"):
        mcnemar([True], [True, False])


def test_friedman_ranking_matches_scipy_and_hand_ranks():
    scores = pd.DataFrame({"lora": [80, 75, 90, 70], "linear": [70, 76, 85, 60],
                           "knn": [60, 65, 85, 50]}, index=["a", "b", "c", "d"])
    ranking = rank_methods(scores)
    expected = stats.friedmanchisquare(scores["lora"], scores["linear"], scores["knn"])
    assert ranking.friedman_p == pytest.approx(expected.pvalue)
    # ranks per row (1 = best): a 1,2,3; b 2,1,3; c 1,2.5,2.5; d 1,2,3
    assert ranking.average_ranks.to_dict() == pytest.approx(
        {"lora": 1.25, "linear": 1.875, "knn": 2.875})
    assert list(ranking.posthoc.columns) == ["lora", "linear", "knn"]
    assert ranking.blocks == 4
    lower = rank_methods(scores, lower_is_better=True)
    assert lower.average_ranks.index[0] == "knn"
    with pytest.raises(ValueError, match=">= 3 data sets"):
        rank_methods(scores.iloc[:2])
    with pytest.raises(ValueError, match=">= 3 methods"):
        rank_methods(scores[["lora", "linear"]])
    with pytest.raises(ValueError, match="nothing to rank"):  # scipy's Friedman would be NaN
        rank_methods(pd.DataFrame([[20.0] * 3] * 3, columns=["a", "b", "c"]))
