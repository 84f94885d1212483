"""Per-image test predictions in the result store (schema 3): what the report's intervals over
test images and its comparisons paired by image read.

Compact on purpose: a store may hold tens of thousands of runs of a few hundred to a few
thousand test images each. The image list is stored once per test set (table ``test_sets``,
keyed by the list's digest), and each run's labels and predictions as little-endian uint16 class
indices (table ``predictions``), written in the same transaction as the run's row.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any, Iterable, Mapping, Optional

import numpy as np


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def insert_predictions(con: sqlite3.Connection, record: Mapping[str, Any]) -> None:
    """Store ``record["predictions"]`` (from :func:`cytotune.experiments.store_records.
    make_record`; nothing when absent). Idempotent, like the run's own row."""
    kept = record.get("predictions")
    if not kept:
        return
    images = _json(list(kept["images"]))
    test_set = hashlib.sha256(images.encode("utf-8")).hexdigest()[:32]
    con.execute("INSERT OR IGNORE INTO test_sets (test_set, images_json) VALUES (?, ?)",
                (test_set, images))
    con.execute("INSERT OR IGNORE INTO predictions (run_id, test_set, classes_json, labels, "
                "predicted) VALUES (?, ?, ?, ?, ?)",
                (record["run_id"], test_set, _json(list(kept["classes"])),
                 np.asarray(kept["labels"], dtype="<u2").tobytes(),
                 np.asarray(kept["predicted"], dtype="<u2").tobytes()))


def read_predictions(con: sqlite3.Connection, run_ids: Optional[Iterable[str]] = None) \
        -> dict[str, dict[str, Any]]:
    """run id -> images, classes, labels and predictions (int arrays) of the runs that kept
    them; {} for a store from before schema 3 (opened read-only, so never migrated)."""
    wanted = None if run_ids is None else set(run_ids)
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"test_sets", "predictions"} <= tables:
        return {}
    sets = {k: json.loads(v) for k, v in con.execute("SELECT test_set, images_json FROM test_sets")}
    out: dict[str, dict[str, Any]] = {}
    for run_id, test_set, classes, labels, predicted in con.execute(
            "SELECT run_id, test_set, classes_json, labels, predicted FROM predictions"):
        if wanted is not None and run_id not in wanted:
            continue
        out[run_id] = {"images": sets[test_set], "classes": json.loads(classes),
                       "labels": np.frombuffer(labels, dtype="<u2").astype(np.int64),
                       "predicted": np.frombuffer(predicted, dtype="<u2").astype(np.int64)}
    return out
