"""``cytotune bench``: cytotune against a reference-style baseline, measured in one process.

See :mod:`cytotune.benchmark.cases` for the cases and :mod:`cytotune.benchmark.reference` for
what the baseline does. The benchmark sits beside ``experiments``: it uses the training stack and
nothing uses it.
"""
from cytotune.benchmark.cases import CASES, BenchSettings, run_benchmark

__all__ = ["CASES", "BenchSettings", "run_benchmark"]
