"""``cytotune bench``: cytotune against a reference-style baseline, measured in one process.

See :mod:`cytotune.benchmark.cases` for the cases and :mod:`cytotune.benchmark.reference` for
what the baseline does. The benchmark sits beside ``experiments``: it uses the training stack and
nothing uses it.
"""
from typing import TYPE_CHECKING

from cytotune._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers; at run time each name is
    # imported on first use, so a light part does not pull in torch through the rest
    from cytotune.benchmark.cases import CASES, BenchSettings, run_benchmark

_EXPORTS = {
    "CASES": "cytotune.benchmark.settings",
    "BenchSettings": "cytotune.benchmark.settings",
    "run_benchmark": "cytotune.benchmark.cases",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["CASES", "BenchSettings", "run_benchmark"]
