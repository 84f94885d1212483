"""The result store's runs as a flat table (``ResultStore.records``): key fields, scalar metrics
per split, timings and trainable parameters as columns."""
from __future__ import annotations

import json
import math
from typing import Any, Optional

import pandas as pd

KEY_COLUMNS = ("dataset", "backbone", "method", "shots", "fraction", "seed", "lr")
# Scalar metrics flattened into ``records()`` as val_<name> / test_<name> columns.
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "loss", "n")
# Scalar metrics also flattened as ood_<name> (out-of-domain test, runs with test domains) and,
# for multi-label runs, average precision as val_/test_/ood_average_precision.
EXTRA_METRICS = ("average_precision",)
TIMING_COLUMNS = ("decode_s", "feature_extraction_s", "training_s", "evaluation_s", "total_s")


def num(value: Any) -> Optional[float]:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def flatten_records(raw: pd.DataFrame, full: bool) -> pd.DataFrame:
    columns = ["run_id", "sweep", *KEY_COLUMNS]
    frame = raw[columns].copy()
    frame["shots"] = frame["shots"].astype("Int64")
    frame["fraction"] = frame["fraction"].astype(float)
    metrics = [json.loads(m) for m in raw["metrics_json"]]
    timings = [json.loads(t) for t in raw["timings_json"]]
    for split, prefix in (("val", "val"), ("test", "test"), ("test_ood", "ood")):
        for name in SCALAR_METRICS + EXTRA_METRICS:
            if prefix != "ood" or name != "loss":
                frame[f"{prefix}_{name}"] = pd.Series(
                    [num((m.get(split) or {}).get(name)) for m in metrics], dtype=object).astype(float)
    frame["val_loss"] = raw["val_loss"].astype(float)  # the column is the source of truth
    extra_timings = sorted({k for t in timings for k in t} - set(TIMING_COLUMNS))
    for name in (*TIMING_COLUMNS, *extra_timings):
        frame[name] = pd.Series([num(t.get(name)) for t in timings], dtype=object).astype(float)
    frame["trainable_params"] = raw["trainable_params"].astype("Int64")
    for name in ("out_dir", "device", "worker", "finished_at"):
        frame[name] = raw[name]
    if full:
        for name in ("config_json", "metrics_json", "timings_json", "trainable_json"):
            frame[name] = raw[name]
    return frame.reset_index(drop=True)
