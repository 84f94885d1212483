"""Records for the result store: one from a finished run's result (:func:`make_record`) or read
back from its run directory (:func:`record_from_run_dir`), and records kept aside on disk when
the store cannot be written (:func:`save_pending`, replayed by :func:`load_pending`).
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

from cytotune.experiments.store import KEY_COLUMNS, ResultStore, StoreWriteError, _json, utc_now

def _with_val_loss(metrics: dict[str, Any], history: list[dict]) -> dict[str, Any]:
    """The validation loss of the kept step (from the run's validation history) added to the
    validation metrics as ``loss``: lr selection uses it to break ties in validation accuracy."""
    best = metrics.get("best_step")
    val_loss = next((h.get("val_loss") for h in history if h.get("step") == best), None)
    if val_loss is None and history:
        val_loss = history[-1].get("val_loss")
    if val_loss is not None and "loss" not in (metrics.get("val") or {}):
        metrics.setdefault("val", {})["loss"] = float(val_loss)
    return metrics


def make_record(run: Mapping[str, Any], result: Any, *, device: Optional[str] = None,
                worker: Optional[str] = None) -> dict[str, Any]:
    """A store record (plain, JSON-able, picklable) from a run's key fields and its RunResult
    (validation loss of the kept step added, see :func:`_with_val_loss`)."""
    metrics = _with_val_loss(json.loads(json.dumps(result.metrics, default=_plain)),
                             list(result.history or []))
    return {
        **{k: run.get(k) for k in ("run_id", "sweep", *KEY_COLUMNS)},
        "config": result.config.to_dict(),
        "metrics": metrics,
        "timings": {k: float(v) for k, v in result.timings.items()},
        "trainable_parameters": {k: int(v) for k, v in result.trainable_parameters.items()},
        "out_dir": str(result.out_dir) if result.out_dir else None,
        "device": device,
        "worker": worker,
        "finished_at": utc_now(),
        "predictions": kept_predictions(getattr(result, "predictions", None),
                                        list(getattr(result, "class_names", None) or [])),
    }


def kept_predictions(table: Any, class_names: list[str]) -> Optional[dict[str, Any]]:
    """What the store keeps of a run's per-image test predictions (its predictions.csv
    table): image ids, class names and class indices of the label and the prediction, for
    intervals over test images and comparisons paired by image. None for multi-label runs
    (labels joined by "|") or a table without the columns."""
    if table is None or not class_names or not {"path", "label", "predicted"} <= set(table):
        return None
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index.get(str(v)) for v in table["label"]]
    predicted = [index.get(str(v)) for v in table["predicted"]]
    if any(v is None for v in labels + predicted):
        return None  # a multi-label run, or a class outside the run's own names
    return {"images": [str(p) for p in table["path"]], "classes": list(class_names),
            "labels": labels, "predicted": predicted}


# keys of a run directory's metrics.json that are not metrics (cytotune.training.runner._write_run)
# metrics.json entries that are not metrics (the environment and fingerprints are: the report
# compares them, so a run read back must keep them as a live run records them)
_RUN_DIR_EXTRAS = ("class_names", "trainable_parameters", "timings", "memory", "history")


def record_from_run_dir(run: Mapping[str, Any], out_dir: str | Path,
                        config: Mapping[str, Any]) -> dict[str, Any]:
    """The store record of a finished run read back from its run directory (metrics.json), as
    :func:`make_record` builds it from the RunResult: a sweep whose store write failed (or that
    was killed between publishing a run and recording it) gets the run back without retraining.
    ``config``: the run's config as the sweep planned it (checked against config.yaml by the
    caller). Non-finite metrics were written as null and stay so (read as missing)."""
    out_dir = Path(out_dir)
    saved = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics = _with_val_loss({k: v for k, v in saved.items() if k not in _RUN_DIR_EXTRAS},
                             list(saved.get("history") or []))
    environment = saved.get("environment") or {}
    return {
        **{k: run.get(k) for k in ("run_id", "sweep", *KEY_COLUMNS)},
        "config": dict(config),
        "metrics": metrics,
        "timings": {k: float(v) for k, v in (saved.get("timings") or {}).items() if v is not None},
        "trainable_parameters": {k: int(v) for k, v in
                                 (saved.get("trainable_parameters") or {}).items()},
        "out_dir": str(out_dir),
        "device": environment.get("device"),
        "worker": "read back from its run directory",
        "finished_at": utc_now(),
        "predictions": _predictions_from_run_dir(out_dir, saved.get("class_names") or []),
    }


def _predictions_from_run_dir(out_dir: Path, class_names: list[str]) -> Optional[dict[str, Any]]:
    """:func:`kept_predictions` of a run directory's predictions.csv (None when unreadable:
    the run's metrics are still recorded, only its per-image outcome is missing)."""
    import pandas as pd

    try:
        table = pd.read_csv(out_dir / "predictions.csv", dtype={"label": str, "predicted": str},
                            keep_default_na=False)
    except (OSError, ValueError):
        return None
    return kept_predictions(table, list(class_names))


# ---- when the store cannot be written ------------------------------------------------------------

def pending_dirs(store_path: str | Path) -> list[Path]:
    """Where finished runs' records are kept while their store cannot be written: beside the
    store, else (same full disk, read-only folder) in the system's temporary folder, under a
    name derived from the store's path."""
    import hashlib
    import tempfile

    path = Path(store_path).expanduser().resolve()
    digest = hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()
    return [path.parent / f".{path.name}.pending",
            Path(tempfile.gettempdir()) / "cytotune-pending" / f"{path.name}-{digest}"]


def save_pending(store_path: str | Path, records: list[Mapping[str, Any]]) -> Optional[Path]:
    """Write ``records`` to the first of :func:`pending_dirs` that takes them (atomically: a
    temporary file renamed); the file, or None when none could be written."""
    if not records:
        return None
    name = f"{uuid.uuid4().hex}.json"
    for folder in pending_dirs(store_path):
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(_json(list(records)), encoding="utf-8")
            os.replace(tmp, folder / name)
            return folder / name
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
    return None


def load_pending(store: "ResultStore") -> int:
    """Insert the records kept by :func:`save_pending` for this store and delete their files;
    returns how many runs were new. A file that cannot be inserted stays for the next try."""
    added = 0
    for folder in pending_dirs(store.path):
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.json")):
            try:
                records = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            added += store.insert_many(records)
            file.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass
    return added


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def raise_store_error(store: ResultStore, error: BaseException, unsaved: list[dict[str, Any]],
                       console: Optional[Any]) -> None:
    """Keep the finished runs the store refused and raise one clear error naming the store
    (printed first on ``console``, a rich Console, when given)."""
    news = ""
    if unsaved:
        kept = save_pending(store.path, unsaved)
        in_dirs = sum(1 for r in unsaved if r.get("out_dir"))
        if kept is not None:
            news = (f"; {len(unsaved)} finished runs kept in {kept}, recorded by the next sweep "
                    f"on this store without retraining")
        else:
            news = (f"; {in_dirs} of {len(unsaved)} finished runs kept in their run directories "
                    f"(read back by the next sweep), the others could not be kept anywhere")
    message = (f"cannot write to the result store {store.path}: {error}{news}; free space or "
               f"make it writable and run the sweep again")
    if console is not None:
        console.print(f"[red]error[/red]: {message}")
    raise StoreWriteError(message) from None
