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


# ---- leases ---------------------------------------------------------------------------------------
def test_a_run_is_claimed_once_until_done_released_or_its_lease_is_dead(tmp_path):
    import subprocess
    import sys
    import time

    from cytotune.experiments.store import CLAIMED, DONE, HELD, new_owner

    store = ResultStore(tmp_path / "r.sqlite")
    a, b = new_owner(), new_owner()
    assert store.claim(["x", "y"], a, ttl=60) == {"x": CLAIMED, "y": CLAIMED}
    assert store.claim(["x", "y", "z"], b, ttl=60) == {"x": HELD, "y": HELD, "z": CLAIMED}
    assert store.claim(["x"], a, ttl=60) == {"x": CLAIMED}  # its own lease: renewed
    store.insert(hand_record("x"))
    store.release(["y"], a)
    assert store.claim(["x", "y"], b, ttl=60) == {"x": DONE, "y": CLAIMED}
    assert set(store.leases()["run_id"]) == {"x", "y", "z"}

    # an expired lease (no heartbeat) is taken over; a heartbeat keeps one alive
    other = "elsewhere:1:abc"  # another host: only expiry can free its leases
    assert store.claim(["e", "h"], other, ttl=0.5) == {"e": CLAIMED, "h": CLAIMED}
    assert store.claim(["e"], a, ttl=60) == {"e": HELD}
    time.sleep(0.3)
    store.release(["h"], "not-the-owner")  # someone else's release leaves it alone
    time.sleep(0.4)
    assert store.claim(["e"], a, ttl=60) == {"e": CLAIMED}
    c = new_owner()
    store.claim(["k"], c, ttl=0.5)
    for _ in range(4):
        time.sleep(0.2)
        assert store.renew(c, ttl=0.5) == 1
        assert store.claim(["k"], a, ttl=60) == {"k": HELD}

    # a lease of a process of this host that is gone is dead at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = f"{__import__('socket').gethostname()}:{dead.stdout.strip()}:0"
    store.claim(["g"], gone, ttl=3600)
    assert store.claim(["g"], a, ttl=60) == {"g": CLAIMED}

    store.release_all(b)
    assert set(store.leases()["owner"]) == {a, c, other}  # "h" expired, not taken yet


def test_a_schema_1_store_gains_the_leases_and_predictions_tables(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, sweep TEXT NOT NULL, dataset TEXT NOT NULL,
            backbone TEXT NOT NULL, method TEXT NOT NULL, shots INTEGER, fraction REAL,
            seed INTEGER NOT NULL, lr REAL NOT NULL, val_accuracy REAL, val_loss REAL,
            test_accuracy REAL, trainable_params INTEGER, config_json TEXT NOT NULL,
            metrics_json TEXT NOT NULL, timings_json TEXT NOT NULL, trainable_json TEXT NOT NULL,
            out_dir TEXT, device TEXT, worker TEXT, finished_at TEXT NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
    """)
    con.commit()
    con.close()
    store = ResultStore(path)
    assert store._meta("schema_version") == "3"  # leases (2), then per-image predictions (3)
    assert store.claim(["a"], "h:1:x", ttl=5) == {"a": "claimed"}
    record = hand_record("a")
    record["predictions"] = {"images": ["x.png", "y.png"], "classes": ["p", "q"],
                             "labels": [0, 1], "predicted": [1, 1]}
    store.insert(record)
    assert len(store) == 1 and integrity(path) == "ok"
    assert store.predictions()["a"]["predicted"].tolist() == [1, 1]


def integrity(path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


# ---- issue 31, items 7 and 8: opening what may not be a store ----------------------------------
def test_a_read_only_store_reads_and_never_writes(tmp_path):
    import pickle

    import pytest

    path = tmp_path / "s.sqlite"
    ResultStore(path).insert(hand_record("a"))
    before = path.read_bytes()
    store = ResultStore.open_read_only(path)
    assert len(store) == 1 and store.get("a")["run_id"] == "a" and store.failures().empty
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.insert(hand_record("b"))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        pickle.loads(pickle.dumps(store)).insert(hand_record("b"))  # read-only travels along
    assert path.read_bytes() == before and "b" not in ResultStore(path)


def test_read_only_open_refuses_what_is_not_a_store_and_leaves_it_as_it_was(tmp_path):
    import pytest

    from cytotune.experiments.store import NotAStoreError

    foreign = tmp_path / "other.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    cases = {foreign: "of something else", empty: "empty database", tmp_path: "is a folder"}
    for path, says in cases.items():
        with pytest.raises(NotAStoreError, match=says):
            ResultStore.open_read_only(path)
    with pytest.raises(FileNotFoundError, match="no result store"):
        ResultStore.open_read_only(tmp_path / "missing.sqlite")
    with pytest.raises(NotAStoreError, match="of something else"):
        ResultStore(foreign)  # nor does a writing sweep add its tables to it
    with pytest.raises(NotAStoreError, match="is a folder"):
        ResultStore(tmp_path)
    assert foreign.read_bytes() == before and empty.stat().st_size == 0
    assert not (tmp_path / "missing.sqlite").exists()


def test_read_only_open_of_a_newer_schema_is_one_clear_error(tmp_path):
    import pytest

    from cytotune.experiments.store import SCHEMA_VERSION, NotAStoreError

    path = tmp_path / "s.sqlite"
    ResultStore(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    for opener in (ResultStore, ResultStore.open_read_only):
        with pytest.raises(NotAStoreError, match="newer than this cytotune supports"):
            opener(path)


def test_a_store_from_before_predictions_opened_read_only_has_none(tmp_path):
    path = tmp_path / "v2.sqlite"
    ResultStore(path).insert(hand_record("a"))
    con = sqlite3.connect(path)
    con.executescript("DROP TABLE predictions; DROP TABLE test_sets; "
                      "UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    con.commit()
    con.close()
    store = ResultStore.open_read_only(path)
    assert store.predictions() == {} and len(store) == 1
