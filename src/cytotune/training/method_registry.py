"""Training-method names without their implementations.

Configs, sweeps and the CLI check a method name here, which imports nothing heavy; the
functions themselves are registered in :mod:`cytotune.training.methods` (``METHODS``), imported
only when a run happens. :func:`cytotune.training.methods.register_method` adds a name to both.
"""
from __future__ import annotations

# name -> whether the method trains; in registration order (the order error messages list them)
_TRAINS: dict[str, bool] = {}
# methods that train nothing (zero-shot): no learning rate, seed or sample size changes their
# test result, so sweeps run them once per (data set, backbone); the same set object is
# cytotune.training.methods.TRAINING_FREE
TRAINING_FREE: set[str] = set()


def declare_method(name: str, *, trains: bool = True) -> None:
    """Make ``name`` a known method (``trains=False``: it learns nothing from the training
    split); declaring a known name again updates it."""
    _TRAINS[name] = trains
    if trains:
        TRAINING_FREE.discard(name)
    else:
        TRAINING_FREE.add(name)


def method_names() -> list[str]:
    """The known methods, in registration order."""
    return list(_TRAINS)


def is_known_method(name: str) -> bool:
    return name in _TRAINS


# methods fitted in closed form or over a small validation grid on the cached features: they
# take no optimiser steps of the run's schedule, so no step plan or learning rate applies
# (Tip-Adapter-F fine-tunes its cache keys on a fixed schedule of its own, the paper's)
FEATURE_PROBES: frozenset[str] = frozenset({"prototype", "knn", "logreg", "tip-adapter",
                                           "tip-adapter-f"})
# methods that can choose their hyper-parameter by cross-validation on the training images
# (config select_on: train-cv; linear: its learning rate, chosen by the report on the runs' CV
# scores); the others choose on validation, or choose nothing (below)
CV_SELECTION: frozenset[str] = frozenset({"knn", "logreg", "linear"})
# feature probes with no hyper-parameter to choose (select_on does not apply to them)
CHOOSES_NOTHING: frozenset[str] = frozenset({"prototype"})

for _name, _trains in (("linear", True), ("lora", True), ("zero-shot", False), ("full", True),
                       ("prototype", True), ("knn", True), ("logreg", True),
                       ("tip-adapter", True),  # Tip-Adapter's cache is the training split
                       ("tip-adapter-f", True)):
    declare_method(_name, trains=_trains)  # the built-ins of cytotune.training.methods

__all__ = ["TRAINING_FREE", "FEATURE_PROBES", "CV_SELECTION", "CHOOSES_NOTHING", "declare_method",
           "method_names", "is_known_method"]
