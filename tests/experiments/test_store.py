"""The SQLite result store: idempotent inserts, failures apart, several writers at once."""
from __future__ import annotations

import math
import multiprocessing
import sqlite3

import pandas as pd

from cytotune.experiments import ResultStore
from experiments_helpers import hand_record


def test_insert_is_idempotent_and_records_are_flat(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    first = hand_record("a", shots=4, seed=1, lr=1e-3, val=0.5, test=0.75, val_loss=0.9)
    assert store.insert(first) is True
    assert store.insert({**first, "metrics": {"val": {"accuracy": 0.0}, "test": {}}}) is False
    assert store.insert_many([first, hand_record("b", fraction=25.0, seed=2)]) == 1
    assert store.done_ids() == {"a", "b"} and len(store) == 2 and "a" in store
    frame = store.records()
    assert list(frame["run_id"]) == ["a", "b"]
    row = frame.iloc[0]
    assert row["shots"] == 4 and pd.isna(frame.iloc[1]["shots"])
    assert frame.iloc[1]["fraction"] == 25.0 and math.isnan(row["fraction"])
    assert row["test_accuracy"] == 0.75 and row["val_accuracy"] == 0.5  # the first insert kept
    assert row["val_loss"] == 0.9 and math.isnan(frame.iloc[1]["val_loss"])
    assert row["feature_extraction_s"] == 1.0 and row["training_s"] == 2.0
    assert row["trainable_params"] == 100
    assert math.isnan(row["val_auroc"])  # NaN survives the JSON round trip
    full = store.records(full=True)
    assert "config_json" in full and "metrics_json" in full
    got = store.get("a")
    assert got["metrics"]["test"]["accuracy"] == 0.75 and got["config"]["seed"] == 1
    assert store.get("missing") is None


def test_failures_are_kept_apart_and_resolved_by_a_later_success(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    keys = {"run_id": "x", "sweep": "s", "dataset": "d", "backbone": "b", "method": "lora",
            "shots": 2, "fraction": None, "seed": 1, "lr": 1e-3, "config": {"seed": 1}}
    store.record_failure(keys, "DataError: too few images", "Traceback ...")
    store.record_failure(keys, "DataError: too few images")
    assert store.failed_ids() == {"x"} and store.done_ids() == set()
    failures = store.failures()
    assert len(failures) == 2 and not failures["resolved"].any()
    assert failures.iloc[0]["error"] == "DataError: too few images"
    store.insert(hand_record("x", sweep="s"))
    assert store.failed_ids() == set() and store.failed_ids(include_done=True) == {"x"}
    assert store.failures()["resolved"].all()


def test_store_uses_wal_and_survives_pickling(tmp_path):
    import pickle

    store = ResultStore(tmp_path / "r.sqlite")
    copy = pickle.loads(pickle.dumps(store))
    copy.insert(hand_record("a"))
    assert store.done_ids() == {"a"}
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path: str, prefix: str, count: int, shared: int, barrier) -> None:
    store = ResultStore(path)
    barrier.wait()
    for i in range(count):
        store.insert(hand_record(f"{prefix}-{i}", seed=i))
        if i < shared:  # both writers also insert the same ids: one row each, no error
            store.insert(hand_record(f"shared-{i}", seed=i))


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "r.sqlite")
    ResultStore(path)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    count, shared = 150, 40
    procs = [ctx.Process(target=_writer, args=(path, p, count, shared, barrier)) for p in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ResultStore(path)
    ids = store.done_ids()
    expected = ({f"a-{i}" for i in range(count)} | {f"b-{i}" for i in range(count)}
                | {f"shared-{i}" for i in range(shared)})
    assert ids == expected
    frame = store.records()
    assert len(frame) == len(expected) and frame["run_id"].is_unique
