"""Statistics over results: intervals, paired comparisons and rankings.

Pure functions over arrays and tables (a run's test outcome, per-seed values); nothing here
reads a result store or trains: the report and ``cytotune compare`` hand them plain values.
"""
from cytotune.analysis.bootstrap import (BootstrapSpec, Interval, cell_interval, cell_intervals,
                                         paired_interval, paired_intervals, seed_interval)
from cytotune.analysis.outcomes import COUNT_METRICS, Outcome, count_metric
from cytotune.analysis.significance import McNemar, Ranking, holm, mcnemar, rank_methods, wilcoxon_p

__all__ = ["BootstrapSpec", "COUNT_METRICS", "Interval", "McNemar", "Outcome", "Ranking",
           "cell_interval", "cell_intervals", "count_metric", "holm", "mcnemar",
           "paired_interval", "paired_intervals", "rank_methods", "seed_interval", "wilcoxon_p"]
