"""Training methods as registry entries: each turns prepared data and a backbone into a trained
classifier and its evaluations. A new method (full fine-tuning, zero-shot ...) is one module here
registered with :func:`register_method`; the runner reads the registry. The names alone live in
:mod:`cytotune.training.method_registry` (no torch), which sweeps and the CLI check.
"""
from __future__ import annotations

from typing import Callable

from cytotune.training.method_registry import TRAINING_FREE, declare_method
from cytotune.training.methods.base import (Classifier, MethodContext, MethodResult, SplitTensors,
                                            new_head)
from cytotune.training.methods.feature_probes import run_knn, run_logreg, run_prototype
from cytotune.training.methods.full import run_full_finetune
from cytotune.training.methods.linear import run_linear_probe
from cytotune.training.methods.lora import run_lora
from cytotune.training.methods.tip_adapter import run_tip_adapter, run_tip_adapter_f
from cytotune.training.methods.zero_shot import run_zero_shot

MethodFn = Callable[[MethodContext], MethodResult]

METHODS: dict[str, MethodFn] = {}


def register_method(name: str, fn: MethodFn, *, replace: bool = False,
                    trains: bool = True) -> MethodFn:
    """Make ``fn`` available as ``--method name`` (and ``method: name`` in configs and sweeps);
    ``trains=False`` marks a method that learns nothing from the training split."""
    if name in METHODS and not replace:
        raise ValueError(f"method {name!r} is already registered")
    METHODS[name] = fn
    declare_method(name, trains=trains)  # TRAINING_FREE is the name registry's set
    return fn


register_method("linear", run_linear_probe)
register_method("lora", run_lora)
register_method("zero-shot", run_zero_shot, trains=False)
register_method("full", run_full_finetune)
register_method("prototype", run_prototype)
register_method("knn", run_knn)
register_method("logreg", run_logreg)
register_method("tip-adapter", run_tip_adapter)
register_method("tip-adapter-f", run_tip_adapter_f)

__all__ = ["METHODS", "TRAINING_FREE", "register_method", "MethodContext", "MethodResult",
           "SplitTensors", "Classifier", "new_head", "run_linear_probe", "run_lora",
           "run_zero_shot", "run_full_finetune", "run_prototype", "run_knn", "run_logreg",
           "run_tip_adapter", "run_tip_adapter_f"]
