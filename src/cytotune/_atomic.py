"""Whole-file writes for the small result files (CSV tables, JSON figures) that several layers
write: readers see the old file or the new one, never a partial one, and a failed write leaves
the old file as it was. One helper rather than a copy per writer (prediction tables, the
leave-one-domain-out summary, benchmark results)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO, Union

if TYPE_CHECKING:  # only a type here: importing pandas made `cytotune --help` 3x slower
    import pandas as pd


def write_text_atomic(out: Union[str, Path], write: Callable[[TextIO], None]) -> Path:
    """Call ``write`` on a temporary text file beside ``out`` (creating its folder), then
    ``os.replace`` it onto ``out``. The temporary file is removed whatever happens."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            write(file)
        os.replace(name, out)
    finally:
        Path(name).unlink(missing_ok=True)
    return out


def write_csv_atomic(frame: pd.DataFrame, out: Union[str, Path]) -> Path:
    """Write ``frame`` (without its index) to ``out`` with :func:`write_text_atomic`."""
    return write_text_atomic(out, lambda file: frame.to_csv(file, index=False))
