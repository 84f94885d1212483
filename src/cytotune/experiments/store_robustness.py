"""Robustness rows in the result store: each finished run's metrics under perturbations.

A sweep with a ``robustness`` field evaluates every finished run's saved model under the chosen
perturbations (:mod:`cytotune.inference.robustness`) after training, and keeps one row per
(run, perturbation, severity) here, severity 0 being the clean test set. The table is added in
place the first time a row is written (stores without it read as having no rows), and a run's
rows are written in one transaction, so a run has either all its rows or none: an interrupted
evaluation resumes with the runs that have none.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd

from cytotune.training.rundir import json_safe

TABLE = "robustness"
_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {TABLE} (run_id TEXT NOT NULL, kind TEXT NOT NULL, "
           f"severity INTEGER NOT NULL, row_json TEXT NOT NULL, PRIMARY KEY (run_id, kind, "
           f"severity))")


def insert_robustness(con: sqlite3.Connection, run_id: str,
                      rows: Sequence[Mapping[str, Any]]) -> None:
    """Store one run's rows (each with ``kind`` and ``severity``), replacing any it had."""
    con.execute(_SCHEMA)  # one statement: executescript would end the caller's transaction
    con.execute(f"DELETE FROM {TABLE} WHERE run_id = ?", (run_id,))
    con.executemany(
        f"INSERT INTO {TABLE} (run_id, kind, severity, row_json) VALUES (?, ?, ?, ?)",
        [(run_id, str(r["kind"]), int(r["severity"]),
          json.dumps(json_safe(dict(r)), sort_keys=True, default=str))
         for r in rows])


def has_table(con: sqlite3.Connection) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (TABLE,)).fetchone() is not None


def evaluated_runs(con: sqlite3.Connection) -> dict[str, set[str]]:
    """run id -> the perturbation kinds it has rows for."""
    if not has_table(con):
        return {}
    out: dict[str, set[str]] = {}
    for run_id, kind in con.execute(f"SELECT DISTINCT run_id, kind FROM {TABLE}"):
        out.setdefault(run_id, set()).add(kind)
    return out


def read_robustness(con: sqlite3.Connection,
                    run_ids: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Every stored row as a table (``run_id``, ``kind``, ``severity`` and the row's metrics);
    empty for a store without the table."""
    if not has_table(con):
        return pd.DataFrame(columns=["run_id", "kind", "severity"])
    wanted = None if run_ids is None else set(run_ids)
    rows = []
    for run_id, row in con.execute(f"SELECT run_id, row_json FROM {TABLE} "
                                   f"ORDER BY run_id, kind, severity"):
        if wanted is None or run_id in wanted:
            rows.append({**json.loads(row), "run_id": run_id})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "kind", "severity"])
    return frame
