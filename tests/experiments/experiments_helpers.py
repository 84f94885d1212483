"""Helpers shared by the sweep tests (imported by module name)."""
from __future__ import annotations

import math
from pathlib import Path

# Few steps, tiny batches, random init: a run takes a fraction of a second on a CPU.
FAST_BASE = {
    "model": {"pretrained": False},
    "optim": {"steps": 4, "val_every": 2, "batch_size": 8, "linear_epochs": 4},
    "num_workers": 0,
    "device": "cpu",
}


def small_sweep(name: str, datasets: dict, backbones: list, cache_dir: Path, **grid) -> dict:
    values = {"name": name,
              "datasets": {k: {"source": str(v)} for k, v in datasets.items()},
              "backbones": list(backbones), "method": "lora", "shots": [1, 2], "seeds": [1, 2],
              "lrs": [1e-3, 1e-2],
              "base": {**FAST_BASE, "cache_dir": str(cache_dir), "lora": {"rank": 2}}}
    values.update(grid)
    return values


def hand_record(run_id: str, *, sweep="s", dataset="d", backbone="b", method="linear", shots=None,
                fraction=None, seed=1, lr=1e-3, val=0.5, test=0.5, val_loss=None, **extra_test):
    """A store record built by hand (no training)."""
    val_metrics = {"accuracy": val, "balanced_accuracy": val, "macro_f1": val, "auroc": math.nan,
                   "ece": 0.1, "n": 10}
    if val_loss is not None:
        val_metrics["loss"] = val_loss
    test_metrics = {"accuracy": test, "balanced_accuracy": test, "macro_f1": test, "auroc": test,
                    "ece": 0.05, "n": 20, **extra_test}
    return {"run_id": run_id, "sweep": sweep, "dataset": dataset, "backbone": backbone,
            "method": method, "shots": shots, "fraction": fraction, "seed": seed, "lr": lr,
            "config": {"seed": seed, "optim": {"lr": lr}},
            "metrics": {"val": val_metrics, "test": test_metrics, "best_step": 1, "steps": 2},
            "timings": {"feature_extraction_s": 1.0, "training_s": 2.0, "total_s": 3.5},
            "trainable_parameters": {"total": 100, "backbone": 0, "head": 100}}
