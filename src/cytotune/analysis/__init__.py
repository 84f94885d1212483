"""Statistics over results: intervals, paired comparisons and rankings; and over cached
features: which labels look wrong (audit). Which images to label first is a sampler of the data
layer (:mod:`cytotune.data.selection`), since a training run's budget mode uses it too.

Pure functions over arrays and tables (a run's test outcome, per-seed values, feature matrices);
nothing here reads a result store or trains a study run: the report, ``cytotune compare`` and
the select/audit commands hand them plain values.
"""
from cytotune.analysis.bootstrap import (BootstrapSpec, Interval, cell_interval, cell_intervals,
                                         paired_interval, paired_intervals, seed_interval)
from cytotune.analysis.audit import (exact_duplicates, label_issues, near_duplicates,
                                     oof_probabilities, outliers)
from cytotune.analysis.outcomes import COUNT_METRICS, Outcome, count_metric
from cytotune.analysis.significance import McNemar, Ranking, holm, mcnemar, rank_methods, wilcoxon_p

__all__ = ["BootstrapSpec", "COUNT_METRICS", "Interval", "McNemar", "Outcome", "Ranking",
           "cell_interval", "cell_intervals", "count_metric", "holm", "mcnemar",
           "paired_interval", "paired_intervals", "rank_methods", "seed_interval", "wilcoxon_p",
           # audit
           "exact_duplicates", "label_issues", "near_duplicates", "oof_probabilities", "outliers"]
