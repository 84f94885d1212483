"""Predictions for many image files: ``cytotune predict RUN_DIR INPUT --out predictions.csv``.

INPUT is one image, a folder (searched recursively for image files) or a CSV list with a
``path`` column (relative paths resolve against the CSV's folder; a ``label`` column is carried
over). Files are decoded exactly as training decoded them (``cytotune.data.images``) and run in
batches; an unreadable file is reported and skipped, and keeps its row with status
``unreadable: <reason>`` and empty probabilities. Broken symbolic links and link loops are
listed too, so they are reported the same way (``unreadable: broken symbolic link ...``) rather
than vanishing from the folder listing. An image whose probabilities are not all finite (a
model that overflows) gets status ``error: non-finite probabilities`` and no predicted class,
never ``ok``. The CSV is written atomically.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from cytotune._atomic import write_csv_atomic
from cytotune.data import DataError, decode_images
from cytotune.data.readers import IMAGE_EXTENSIONS, link_problem, list_images
from cytotune.data.tables import read_csv_frame

log = logging.getLogger("cytotune")
STATUS_OK = "ok"
UNREADABLE = "unreadable"
NON_FINITE = "error: non-finite probabilities"


@dataclass
class PredictionInputs:
    """The image files to predict, in output order, and columns carried over from a CSV."""

    paths: list[Path]
    extra: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"label": [...]}
    source: str = ""


def collect_inputs(input_path: Union[str, Path]) -> PredictionInputs:
    """The images named by ``input_path``: an image file, a folder (recursive) or a CSV list."""
    path = Path(input_path).expanduser()
    problem = link_problem(path)
    if problem is not None:
        raise DataError(f"input {path} is a {problem}")
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist (give an image, a folder of images "
                                f"or a CSV file with a 'path' column)")
    if path.is_dir():
        paths = list_images(path)
        if not paths:
            raise DataError(f"folder {path} contains no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}, searched recursively)")
        return PredictionInputs(paths=paths, source=f"folder {path}")
    if path.suffix.lower() == ".csv":
        frame = read_csv_frame(path)
        if "path" not in frame.columns:
            raise DataError(f"CSV file {path} has no 'path' column (columns: "
                            f"{', '.join(frame.columns) or 'none'})")
        if frame.empty:
            raise DataError(f"CSV file {path} lists no images")
        empty = [i + 2 for i, p in enumerate(frame["path"]) if not p]
        if empty:
            raise DataError(f"CSV file {path}: empty path in row(s) {empty[:10]} (header is row 1)")
        base = path.parent
        paths = [Path(p).expanduser() if Path(p).expanduser().is_absolute() else base / p
                 for p in frame["path"]]
        extra = {"label": list(frame["label"])} if "label" in frame.columns else {}
        return PredictionInputs(paths=paths, extra=extra, source=f"CSV {path}")
    return PredictionInputs(paths=[path], source=f"image {path}")


def predict_files(model, paths: Sequence[Union[str, Path]], batch_size: int = 64,
                  num_workers: int = 2,
                  on_progress: Optional[Callable[[int], None]] = None) -> pd.DataFrame:
    """One row per path, in order: ``path, predicted, prob_<class>..., status``.

    ``model`` is a :class:`~cytotune.inference.CytotuneModel`. Images are decoded in chunks of
    ``batch_size`` (``num_workers`` decoding threads); unreadable files get status
    ``unreadable: <reason>`` and empty probabilities. ``on_progress(n)`` is called after each chunk
    with the number of files it held.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in paths]
    pre = model.preprocessing
    n, c = len(paths), model.num_classes
    probs = np.full((n, c), np.nan, dtype=np.float32)
    status = [STATUS_OK] * n
    unnormalised = 0
    for start in range(0, n, batch_size):
        chunk = paths[start:start + batch_size]
        decoded = decode_images(chunk, resize_size=pre.effective_resize, crop_size=pre.image_size,
                                interpolation=pre.interpolation, skip_bad=True,
                                num_workers=num_workers, warn_bad=False,  # the status says it
                                transform=getattr(model, "stain", None))  # as training decoded
        unnormalised += len(decoded.unnormalised)
        bad = {str(p): link_problem(Path(p)) or reason for p, reason in decoded.bad}
        for offset, p in enumerate(chunk):
            if str(p) in bad:
                status[start + offset] = f"{UNREADABLE}: {bad[str(p)]}"
        if len(decoded):
            rows = start + decoded.kept
            probs[rows] = model.predict_pixels(decoded.pixels, batch_size=batch_size).numpy()
            for row in rows[~np.isfinite(probs[rows]).all(axis=1)].tolist():
                status[row] = NON_FINITE
                probs[row] = np.nan  # none of the row's values is a usable probability
        if on_progress is not None:
            on_progress(len(chunk))
    if unnormalised:
        log.warning("stain normalisation (%s) could not be applied to %d of %d images (too "
                    "little stain); they were predicted unnormalised", model.stain.method,
                    unnormalised, n)
    if model.task.multi_label:
        # multi-label: every label whose sigmoid output is >= 0.5, joined by "|"
        predicted = ["|".join(n for n, p in zip(model.class_names, row) if p >= 0.5)
                     if s == STATUS_OK else "" for row, s in zip(probs, status)]
    else:
        best = np.nan_to_num(probs, nan=-1.0).argmax(1) if c else np.zeros(n, dtype=np.int64)
        predicted = [model.class_names[i] if s == STATUS_OK else "" for i, s in zip(best, status)]
    frame = pd.DataFrame({"path": [str(p) for p in paths], "predicted": predicted})
    for j, name in enumerate(model.class_names):
        frame[f"prob_{name}"] = probs[:, j]
    frame["status"] = status
    return frame


def _check_out(out: Path, run_dir: Path) -> None:
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a CSV file name")
    try:
        inside = out.resolve().parent == run_dir.resolve()
    except OSError:
        inside = False
    if inside:
        raise ValueError(f"--out {out} is inside the run directory {run_dir}; write predictions "
                         f"elsewhere so the run's own files (predictions.csv) stay intact")


def predict(run_dir: Union[str, Path], input_path: Union[str, Path],
            out: Optional[Union[str, Path]] = None, device: str = "auto", batch_size: int = 64,
            num_workers: int = 2, progress: bool = False, model=None,
            precision: Optional[str] = None) -> pd.DataFrame:
    """Predict every image named by ``input_path`` with the model of ``run_dir``.

    Returns the table (``path, [label,] predicted, prob_<class>..., status``) and writes it to
    ``out`` (atomically) when given. ``progress`` shows a rich progress bar. ``model``: an already
    loaded model of this run (skips loading). ``precision``: "auto", "fp32" or "bf16" instead of
    the run's own setting.
    """
    from cytotune.inference.model import load_run
    from cytotune.inference.run import read_run

    run_dir = Path(run_dir).expanduser()
    # a bad run directory (or a damaged weight file) fails before any image is listed
    run = read_run(run_dir) if model is None else None
    if out is not None:
        _check_out(Path(out).expanduser(), run_dir)
    inputs = collect_inputs(input_path)
    if run is not None:
        model = load_run(run, device=device, precision=precision)
    if progress:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task("predict", total=len(inputs.paths))
            frame = predict_files(model, inputs.paths, batch_size, num_workers,
                                  on_progress=lambda k: bar.advance(task, k))
    else:
        frame = predict_files(model, inputs.paths, batch_size, num_workers)
    for position, (column, values) in enumerate(inputs.extra.items(), start=1):
        frame.insert(position, column, values)
    if out is not None:
        write_csv_atomic(frame, out)
    return frame
