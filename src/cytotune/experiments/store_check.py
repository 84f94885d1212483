"""Checking that a file is a cytotune result store before anything is written to it.

``cytotune report`` and ``sweep --dry-run`` must write nothing, and no command may add
cytotune's tables to another program's SQLite database, or answer a folder, a text file or a
truncated store with a traceback. Everything here reads the file through an SQLite URI with
``mode=ro`` (never creating or changing it) and turns what is wrong into one
:class:`NotAStoreError` naming the file.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Optional

STORE_TABLES = ("runs", "failures", "meta")  # what every cytotune store holds (schema 1 on)


class NotAStoreError(ValueError):
    """The path given as a result store is not one (a folder, not SQLite, damaged, another
    program's database); the message names the file. A ValueError, so the CLI prints it as one
    ``error:`` line."""


def _folder_message(path: Path) -> str:
    return (f"{path} is a folder, not a result store (the SQLite file `cytotune sweep --store` "
            f"writes); name a file")


def _table_names(con: sqlite3.Connection) -> set[str]:
    return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not str(row[0]).startswith("sqlite_")}


def _refuse_foreign_tables(path: Path, tables: set[str]) -> None:
    """An SQLite file holding tables but not a cytotune store's is another program's database:
    cytotune's tables are never added to it."""
    if tables and not {"runs", "meta"} <= tables:
        raise NotAStoreError(f"{path} is an SQLite database of something else (tables "
                             f"{', '.join(sorted(tables))}), not a cytotune result store; "
                             f"choose another store file")


def inspect_store_file(path: Path) -> Optional[set[str]]:
    """The table names of the SQLite file at ``path``, read without writing anything (None
    when there is no such file; an empty set for an empty database). A folder, a file that is
    not SQLite, a damaged or truncated one (``PRAGMA quick_check``), or another program's
    database is a :class:`NotAStoreError` naming it."""
    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        raise NotAStoreError(_folder_message(path))
    if not path.is_file():
        raise NotAStoreError(f"{path} is not a regular file, so not a result store")
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                              isolation_level=None)
        try:
            tables = _table_names(con)
            check = [row[0] for row in con.execute("PRAGMA quick_check")]
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise NotAStoreError(_unreadable(path, err)) from None
    if check != ["ok"]:
        raise NotAStoreError(f"{path} is a damaged SQLite file (truncated or overwritten?): "
                             f"{check[0]}; restore it from a copy")
    _refuse_foreign_tables(path, tables)
    return tables


def _unreadable(path: Path, err: sqlite3.Error) -> str:
    text = " ".join(str(err).split())
    if "not a database" in text:
        return f"{path} is not a result store: not an SQLite database ({text})"
    if "malformed" in text or "corrupt" in text:
        return (f"{path} is a damaged SQLite file (truncated or overwritten?): {text}; restore "
                f"it from a copy")
    return f"cannot read the result store {path}: {text}"


def require_store_tables(path: Path, tables: Optional[set[str]]) -> None:
    """Refuse a missing file (``tables`` None: a FileNotFoundError) or one without every
    table of :data:`STORE_TABLES` (an empty database included: nothing to read, and a report
    of it would be an empty page that looks like a result)."""
    if tables is None:
        raise FileNotFoundError(f"no result store at {path} (no such file)")
    if not all(t in tables for t in STORE_TABLES):
        held = f"it holds only {', '.join(sorted(tables))}" if tables else "an empty database"
        raise NotAStoreError(f"{path} is not a cytotune result store ({held}; a store holds the "
                             f"tables {', '.join(STORE_TABLES)}): give the file `cytotune sweep "
                             f"--store` wrote")
