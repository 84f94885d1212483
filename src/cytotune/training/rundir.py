"""Run directories written atomically: a killed run leaves either nothing or a whole run.

Everything goes into a hidden sibling folder first; the final ``os.replace`` makes it appear under
its real name in one step. A finished run is never overwritten unless asked, and then the old
one is only removed after the new one is complete.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "metrics.json"


class RunExistsError(FileExistsError):
    """The output folder already holds a finished run."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunWriter:
    """Collects a run's files in a staging folder; ``commit()`` publishes them atomically."""

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False):
        self.out_dir = Path(out_dir).resolve()
        if self.out_dir.exists() and not overwrite:
            if (self.out_dir / COMPLETE_MARKER).exists():
                raise RunExistsError(f"{self.out_dir} already holds a finished run; "
                                     "choose another --out or pass --overwrite")
            if any(self.out_dir.iterdir()):
                raise RunExistsError(f"{self.out_dir} exists and is not empty (and is not a run); "
                                     "choose another --out")
        self.overwrite = overwrite
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.staging = self.out_dir.parent / f".{self.out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()
        self._log_handler: logging.Handler | None = None

    def path(self, name: str) -> Path:
        return self.staging / name

    def write_text(self, name: str, text: str) -> None:
        self.path(name).write_text(text, encoding="utf-8")

    def write_json(self, name: str, value: Any) -> None:
        self.write_text(name, json.dumps(_json_safe(value), indent=2, allow_nan=False) + "\n")

    def attach_log(self, logger: logging.Logger) -> None:
        handler = logging.FileHandler(self.path("train.log"), encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        self._log_handler = handler
        self._logger = logger

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            self._logger.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def commit(self) -> Path:
        self._detach_log()
        trash = None
        if self.out_dir.exists():
            trash = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out_dir, trash)
        os.replace(self.staging, self.out_dir)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return self.out_dir

    def abort(self) -> None:
        self._detach_log()
        shutil.rmtree(self.staging, ignore_errors=True)
