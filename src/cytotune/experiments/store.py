"""The result store of sweeps: one SQLite file, one row per finished run.

Why SQLite (Python's stdlib ``sqlite3``):

- one file that holds every sweep's results; copy it, attach it to a report, open it in any
  SQLite client or ``pandas.read_sql``;
- transactional: a run's row is written whole or not at all, so a sweep killed at any moment
  leaves a consistent store (at most the runs in flight are lost, and they are simply re-run);
- safe for several processes writing at once: write-ahead logging (WAL) lets readers work while a
  writer commits, and a busy timeout makes a second writer wait for the lock instead of failing;
  two sweeps (or a sweep and a report) can share a store;
- queryable: key fields (data set, backbone, method, shots, fraction, seed, lr) are real columns;
- no server, no extra dependency.

Parquet would need either one file per run (thousands of small files, then a merge step) or a
rewrite of the whole file per appended run (not safe with two writers and not atomic against a
kill). CSV/JSON-lines appends are not transactional either.

Caveat: SQLite's locking needs a local file system (not NFS); on a cluster, keep the store on the
driver's disk and let workers return results to the driver (what the executors do).

Inserts are idempotent: ``INSERT OR IGNORE`` on the run id (the primary key), so a retried or
duplicated run never adds a second row. A run that fails is recorded in a separate ``failures``
table with its error, once per attempt; it does not count as done and is retried by the next
``run_sweep`` unless told otherwise.

Leases (schema 2): a worker claims a run before training it (:meth:`ResultStore.claim`, one
``BEGIN IMMEDIATE`` transaction: a run is claimed only when it is not done and holds no live
lease), keeps its leases alive with a heartbeat (:meth:`ResultStore.renew`, which pushes
``expires_at`` forward) and releases them when the run is recorded. A lease is dead when its
``expires_at`` has passed (a worker that stopped heartbeating: killed, hung, lost) or when its
owner is a process of this host that no longer exists; a dead lease is taken over. So several
sweep commands on one store split the work instead of each training every run. The owner is
``host:pid:uuid``; expiry compares wall clocks, so hosts sharing a store need synchronised clocks
(and a local file system, see above).
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import pandas as pd

from cytotune._process import pid_alive
from cytotune.experiments.store_predictions import insert_predictions, read_predictions
from cytotune.experiments.store_robustness import evaluated_runs, insert_robustness, read_robustness
from cytotune.experiments.store_frame import (EXTRA_METRICS, KEY_COLUMNS, SCALAR_METRICS,
                                              TIMING_COLUMNS, flatten_records as _flatten,
                                              num as _num)
from cytotune.experiments.store_check import (NotAStoreError, inspect_store_file,
                                              require_store_tables)

SCHEMA_VERSION = 3  # 2: the leases table; 3: per-image test predictions (both added in place)
DEFAULT_LEASE_TTL_S = 60.0
BUSY_TIMEOUT_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    dataset TEXT NOT NULL,
    backbone TEXT NOT NULL,
    method TEXT NOT NULL,
    shots INTEGER,
    fraction REAL,
    seed INTEGER NOT NULL,
    lr REAL NOT NULL,
    val_accuracy REAL,
    val_loss REAL,
    test_accuracy REAL,
    trainable_params INTEGER,
    config_json TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    timings_json TEXT NOT NULL,
    trainable_json TEXT NOT NULL,
    out_dir TEXT,
    device TEXT,
    worker TEXT,
    finished_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs (sweep, dataset, backbone, method, shots, fraction);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    sweep TEXT NOT NULL,
    dataset TEXT,
    backbone TEXT,
    method TEXT,
    shots INTEGER,
    fraction REAL,
    seed INTEGER,
    lr REAL,
    error TEXT NOT NULL,
    traceback TEXT,
    config_json TEXT,
    device TEXT,
    worker TEXT,
    failed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_by_run ON failures (run_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    heartbeat REAL NOT NULL,
    claimed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_owner ON leases (owner);
CREATE TABLE IF NOT EXISTS test_sets (
    test_set TEXT PRIMARY KEY,
    images_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT PRIMARY KEY,
    test_set TEXT NOT NULL,
    classes_json TEXT NOT NULL,
    labels BLOB NOT NULL,
    predicted BLOB NOT NULL
);
"""

# what ResultStore.claim says of each run it was asked for
CLAIMED, DONE, HELD, FAILED_ELSEWHERE = "claimed", "done", "held", "failed"


def new_owner() -> str:
    """A lease owner id unique to this process and call: ``host:pid:uuid``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _owner_is_gone(owner: str) -> bool:
    """True when ``owner`` names a process of this host that no longer exists (its leases are
    dead at once, without waiting for them to expire)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return not pid_alive(int(pid_text))


_RUN_COLUMNS = ("run_id", "sweep", *KEY_COLUMNS, "val_accuracy", "val_loss", "test_accuracy",
                "trainable_params", "config_json", "metrics_json", "timings_json",
                "trainable_json", "out_dir", "device", "worker", "finished_at")
_FAILURE_COLUMNS = ("run_id", "sweep", *KEY_COLUMNS, "error", "traceback", "config_json",
                    "device", "worker", "failed_at")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json(value: Any) -> str:
    # NaN (e.g. an undefined AUROC) is kept: Python's json reads it back
    return json.dumps(value, sort_keys=True, default=str)


class ResultStore:
    """Runs of any number of sweeps in one SQLite file (created on first use).

    Every method opens its own short-lived connection, so a store object can be shared by
    threads, pickled to worker processes, and used by several processes at once.
    """

    read_only = False  # set by open_read_only: no pragma, table or row is ever written

    def __init__(self, path: str | Path, *, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path).expanduser()
        self.timeout = float(timeout)
        # a folder, a file that is not SQLite, a damaged one or another program's database is
        # refused before anything (even the journal mode) is written to it
        inspect_store_file(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),))
            # an older store gained the new tables above (CREATE ... IF NOT EXISTS): say so
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version' "
                        "AND CAST(value AS INTEGER) < ?", (str(SCHEMA_VERSION), SCHEMA_VERSION))
        self._check_version(self._meta("schema_version"))

    @classmethod
    def open_read_only(cls, path: str | Path, *,
                       timeout: float = BUSY_TIMEOUT_S) -> "ResultStore":
        """An existing store opened for reading only (SQLite URI ``mode=ro``), for ``report``
        and ``sweep --dry-run``: nothing is created or changed, not even the journal mode (SQLite
        itself may leave its ``-wal``/``-shm`` files beside a WAL store it read). A missing
        path is a FileNotFoundError; a folder, a file that is not SQLite, a damaged or
        truncated one, or an SQLite file without cytotune's tables is a
        :class:`NotAStoreError` naming it. Writing methods fail."""
        store = cls.__new__(cls)
        store.path, store.timeout, store.read_only = Path(path).expanduser(), float(timeout), True
        require_store_tables(store.path, inspect_store_file(store.path))
        store._check_version(store._meta("schema_version"))
        return store

    def _check_version(self, version: Optional[str]) -> None:
        if version is not None and (not version.isdigit() or int(version) > SCHEMA_VERSION):
            raise NotAStoreError(f"{self.path}: store schema {version} is newer than this "
                                 f"cytotune supports ({SCHEMA_VERSION}); upgrade cytotune")

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    def __getstate__(self):
        return {"path": self.path, "timeout": self.timeout, "read_only": self.read_only}

    def __setstate__(self, state):
        self.path, self.timeout = state["path"], state["timeout"]
        self.read_only = state.get("read_only", False)

    # ---- connection ---------------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:  # a URI, so that mode=ro holds: the file is never created or written
            con = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True,
                                  timeout=self.timeout, isolation_level=None)
        else:
            con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if not self.read_only:
                self._set_wal(con)
                con.execute("PRAGMA synchronous = NORMAL")
            yield con
        finally:
            con.close()

    def _set_wal(self, con: sqlite3.Connection) -> None:
        # switching the journal mode needs a moment of exclusive access: retry while busy
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                con.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # take the write lock now (waits up to the timeout)
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _meta(self, key: str) -> Optional[str]:
        with self._connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # ---- writing ------------------------------------------------------------------------------
    def insert(self, record: Mapping[str, Any]) -> bool:
        """Add a finished run (a record from
        :func:`cytotune.experiments.store_records.make_record`); False if its id is present."""
        return self.insert_many([record]) == 1

    def insert_many(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Add finished runs in one transaction; returns how many were new."""
        records = list(records)
        rows = [self._run_row(r) for r in records]
        if not rows:
            return 0
        placeholders = ", ".join("?" for _ in _RUN_COLUMNS)
        with self._transaction() as con:
            before = con.total_changes
            con.executemany(f"INSERT OR IGNORE INTO runs ({', '.join(_RUN_COLUMNS)}) "
                            f"VALUES ({placeholders})", rows)
            added = con.total_changes - before
            for record in records:
                insert_predictions(con, record)
            return added

    def record_failure(self, run: Mapping[str, Any], error: str, traceback: Optional[str] = None,
                       *, device: Optional[str] = None, worker: Optional[str] = None) -> None:
        """Record a failed attempt of a run (``run`` holds its key fields and optionally
        ``config``)."""
        row = (run["run_id"], run["sweep"], *(run.get(k) for k in KEY_COLUMNS), str(error),
               traceback, _json(run["config"]) if run.get("config") is not None else None,
               device, worker, utc_now())
        placeholders = ", ".join("?" for _ in _FAILURE_COLUMNS)
        with self._transaction() as con:
            con.execute(f"INSERT INTO failures ({', '.join(_FAILURE_COLUMNS)}) "
                        f"VALUES ({placeholders})", row)

    @staticmethod
    def _run_row(record: Mapping[str, Any]) -> tuple:
        metrics = record["metrics"]
        val, test = metrics.get("val", {}), metrics.get("test", {})
        trainable = record.get("trainable_parameters") or {}
        shots = record.get("shots")
        fraction = record.get("fraction")
        values = {
            "run_id": record["run_id"], "sweep": record["sweep"], "dataset": record["dataset"],
            "backbone": record["backbone"], "method": record["method"],
            "shots": None if shots is None else int(shots),
            "fraction": None if fraction is None else float(fraction),
            "seed": int(record["seed"]), "lr": float(record["lr"]),
            "val_accuracy": _num(val.get("accuracy")), "val_loss": _num(val.get("loss")),
            "test_accuracy": _num(test.get("accuracy")),
            "trainable_params": trainable.get("total"),
            "config_json": _json(record["config"]), "metrics_json": _json(metrics),
            "timings_json": _json(record.get("timings") or {}),
            "trainable_json": _json(trainable), "out_dir": record.get("out_dir"),
            "device": record.get("device"), "worker": record.get("worker"),
            "finished_at": record.get("finished_at") or utc_now(),
        }
        return tuple(values[c] for c in _RUN_COLUMNS)

    # ---- leases -------------------------------------------------------------------------------
    def claim(self, run_ids: Iterable[str], owner: str, ttl: float = DEFAULT_LEASE_TTL_S, *,
              failed_since: Optional[str] = None) -> dict[str, str]:
        """Claim runs for ``owner`` in one transaction; per run id: ``"claimed"`` (the lease is
        ``owner``'s now, for ``ttl`` seconds; also when it already was), ``"done"`` (in the
        store), ``"held"`` (another owner's live lease) or ``"failed"`` (a failure recorded at or
        after ``failed_since``, an ISO time, while not done: another worker tried it in this
        round)."""
        ids = list(dict.fromkeys(run_ids))
        now = time.time()
        status: dict[str, str] = {}
        with self._transaction() as con:
            for run_id in ids:
                if con.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                    status[run_id] = DONE
                    continue
                row = con.execute("SELECT owner, expires_at FROM leases WHERE run_id = ?",
                                  (run_id,)).fetchone()
                if row is not None and row[0] != owner and row[1] > now \
                        and not _owner_is_gone(row[0]):
                    status[run_id] = HELD
                    continue
                if failed_since is not None and (row is None or row[0] != owner) and con.execute(
                        "SELECT 1 FROM failures WHERE run_id = ? AND failed_at >= ?",
                        (run_id, failed_since)).fetchone():
                    status[run_id] = FAILED_ELSEWHERE
                    continue
                con.execute("INSERT OR REPLACE INTO leases (run_id, owner, expires_at, heartbeat, "
                            "claimed_at) VALUES (?, ?, ?, ?, ?)",
                            (run_id, owner, now + ttl, now, now))
                status[run_id] = CLAIMED
        return status

    def renew(self, owner: str, ttl: float = DEFAULT_LEASE_TTL_S) -> int:
        """The heartbeat: every lease of ``owner`` now expires ``ttl`` seconds from now; returns
        how many it holds."""
        now = time.time()
        with self._transaction() as con:
            return con.execute("UPDATE leases SET expires_at = ?, heartbeat = ? WHERE owner = ?",
                               (now + ttl, now, owner)).rowcount

    def release(self, run_ids: Iterable[str], owner: str) -> None:
        """Drop ``owner``'s leases of these runs (a lease taken over by another is left alone)."""
        ids = list(run_ids)
        if not ids:
            return
        with self._transaction() as con:
            con.executemany("DELETE FROM leases WHERE run_id = ? AND owner = ?",
                            [(r, owner) for r in ids])

    def release_all(self, owner: str) -> None:
        """Drop every lease of ``owner`` (a sweep stopping: others may take its runs at once)."""
        with self._transaction() as con:
            con.execute("DELETE FROM leases WHERE owner = ?", (owner,))

    def leases(self) -> pd.DataFrame:
        """The current leases (live or not): run_id, owner, expires_at, heartbeat, claimed_at
        (seconds since the epoch) and ``live``."""
        with self._connect() as con:
            frame = pd.read_sql_query("SELECT * FROM leases ORDER BY claimed_at", con)
        now = time.time()
        frame["live"] = [(e > now and not _owner_is_gone(o))
                         for o, e in zip(frame["owner"], frame["expires_at"])]
        return frame

    # ---- reading ------------------------------------------------------------------------------
    def done_ids(self, sweep: Optional[str] = None) -> set[str]:
        """Ids of the finished runs (of one sweep, or all)."""
        query, args = "SELECT run_id FROM runs", ()
        if sweep is not None:
            query, args = query + " WHERE sweep = ?", (sweep,)
        with self._connect() as con:
            return {row[0] for row in con.execute(query, args)}

    def failed_ids(self, sweep: Optional[str] = None, *, include_done: bool = False) -> set[str]:
        """Ids of runs with a recorded failure (by default only those not finished since)."""
        query = "SELECT DISTINCT run_id FROM failures"
        if not include_done:
            query += " WHERE run_id NOT IN (SELECT run_id FROM runs)"
        args: tuple = ()
        if sweep is not None:
            query += (" AND" if not include_done else " WHERE") + " sweep = ?"
            args = (sweep,)
        with self._connect() as con:
            return {row[0] for row in con.execute(query, args)}

    def __len__(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def __contains__(self, run_id: object) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def sweeps(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT sweep FROM runs ORDER BY rowid")]

    def get(self, run_id: str) -> Optional[dict[str, Any]]:
        """One finished run as a record (config, metrics, timings decoded), or None."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        for name in ("config", "metrics", "timings", "trainable"):
            out[name if name != "trainable" else "trainable_parameters"] = json.loads(
                out.pop(f"{name}_json"))
        return out

    def records(self, sweep: Optional[str] = None, *, full: bool = False) -> pd.DataFrame:
        """One row per finished run, in insertion order: key fields, ``val_*`` and ``test_*``
        scalar metrics, timings, trainable parameters; ``full`` adds the JSON columns
        (``config_json``, ``metrics_json``, ...)."""
        query, args = "SELECT rowid AS _order, * FROM runs", ()
        if sweep is not None:
            query, args = query + " WHERE sweep = ?", (sweep,)
        with self._connect() as con:
            raw = pd.read_sql_query(query + " ORDER BY rowid", con, params=args)
        return _flatten(raw, full)

    def predictions(self, run_ids: Optional[Iterable[str]] = None) -> dict[str, dict[str, Any]]:
        """Per-image test predictions of finished runs that kept them (stores written before
        schema 3 have none): run id -> ``{"images": [...], "classes": [...], "labels": int
        array, "predicted": int array}`` (:mod:`.store_predictions`)."""
        with self._connect() as con:
            return read_predictions(con, run_ids)

    def add_robustness(self, run_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Keep a run's perturbation rows (:mod:`.store_robustness`), all in one transaction."""
        with self._transaction() as con:
            insert_robustness(con, run_id, rows)

    def robustness(self, run_ids: Optional[Iterable[str]] = None) -> pd.DataFrame:
        """Stored perturbation rows, one per (run, kind, severity); empty where none."""
        with self._connect() as con:
            return read_robustness(con, run_ids)

    def robustness_done(self) -> dict[str, set[str]]:
        """run id -> the perturbation kinds it was evaluated under."""
        with self._connect() as con:
            return evaluated_runs(con)

    def failures(self, sweep: Optional[str] = None) -> pd.DataFrame:
        """Every recorded failed attempt, oldest first, with a ``resolved`` column (the run has
        finished since)."""
        query = ("SELECT f.*, (f.run_id IN (SELECT run_id FROM runs)) AS resolved "
                 "FROM failures f")
        args: tuple = ()
        if sweep is not None:
            query, args = query + " WHERE f.sweep = ?", (sweep,)
        with self._connect() as con:
            frame = pd.read_sql_query(query + " ORDER BY f.id", con, params=args)
        frame["resolved"] = frame["resolved"].astype(bool)
        frame["shots"] = frame["shots"].astype("Int64")
        return frame


class StoreWriteError(OSError):
    """The result store could not be written (disk full, read-only, ...); the message names the
    store and where the finished runs' results were kept."""
