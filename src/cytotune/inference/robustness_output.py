"""What ``cytotune robustness`` writes: robustness.csv, robustness.png, robustness.md and
robustness.json (what was evaluated, and the mark that the folder is this command's).

``--out`` is checked before any work: a file, the run directory or a folder inside it, the data
or a folder inside it, and a non-empty folder this command did not write are refused. An earlier
robustness folder is updated in place. All files are rendered to temporary files first and only
then moved into place (``os.replace``) one after the other, robustness.json last: a failure while
rendering (a full disk, a bad value) leaves the files already there as they were.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pandas as pd

from cytotune.inference.robustness import CLEAN, RobustnessError, RobustnessResult
from cytotune.training.rundir import json_safe

PathLike = Union[str, Path]
CSV_FILE, FIGURE_FILE, TABLE_FILE, MARKER_FILE = ("robustness.csv", "robustness.png",
                                                  "robustness.md", "robustness.json")
OUTPUT_FILES = (CSV_FILE, FIGURE_FILE, TABLE_FILE, MARKER_FILE)
TOOL = "cytotune robustness"


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _is_ours(folder: Path) -> bool:
    try:
        value = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(value, dict) and value.get("tool") == TOOL


def check_out(out: PathLike, run_dir: PathLike, data: Optional[PathLike] = None) -> Path:
    """``out`` resolved, or a :class:`RobustnessError` saying why this command may not write
    there (see the module docstring)."""
    path = Path(out).expanduser()
    resolved = path.resolve()
    if path.exists() and not path.is_dir():
        raise RobustnessError(f"--out {path} is a file; give a folder to write the robustness "
                              f"files into")
    run = Path(run_dir).expanduser().resolve()
    if _within(resolved, run):
        raise RobustnessError(f"--out {path} is inside the run directory {run}; write elsewhere "
                              f"so the run's own files stay as training wrote them")
    if data is not None:
        source = Path(data).expanduser().resolve()
        if _within(source, resolved) or (source.is_dir() and _within(resolved, source)):
            raise RobustnessError(f"--out {path} overlaps the data {source}; a figure written "
                                  f"there would be read as an image: choose an --out outside it")
    if path.is_dir():
        try:
            entries = sorted(p.name for p in path.iterdir())
        except OSError as err:
            raise RobustnessError(f"cannot read --out {path}: {err.strerror or err}") from None
        if entries and not _is_ours(path):
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more"
                                              if len(entries) > 5 else "")
            raise RobustnessError(f"--out {path} holds files `cytotune robustness` did not write "
                                  f"({shown}); choose an empty or new folder")
    return path


# ---- rendering -----------------------------------------------------------------------------
def _pct(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.1f}"


def table_rows(result: RobustnessResult) -> list[list[str]]:
    """The short table (percent) shared by robustness.md and the console."""
    rows = []
    for r in result.table.itertuples(index=False):
        low, high = r.balanced_accuracy_drop_low, r.balanced_accuracy_drop_high
        drop = ("" if r.kind == CLEAN else
                f"{100 * r.balanced_accuracy_drop:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
        rows.append([r.kind, str(r.severity), r.description, _pct(r.balanced_accuracy), drop,
                     _pct(r.accuracy), _pct(r.ece)])
    return rows


TABLE_HEADER = ("kind", "severity", "perturbation", "bal. acc. %", "drop (pts) [interval]",
                "acc. %", "ECE %")


def markdown(result: RobustnessResult) -> str:
    """robustness.md: what was evaluated and the table."""
    lines = [f"# Robustness of {result.model} ({result.method})", "",
             f"Run `{result.run_dir}`, {result.images} images ({result.source}). Drop = clean "
             f"minus perturbed balanced accuracy, in points (positive: worse); interval: "
             f"{result.spec.describe()}, paired by image.", "",
             "| " + " | ".join(TABLE_HEADER) + " |",
             "| " + " | ".join("---" for _ in TABLE_HEADER) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in table_rows(result)]
    return "\n".join(lines) + "\n"


def draw_figure(result: RobustnessResult, path: Path) -> None:
    """Balanced accuracy and ECE vs severity, one line per kind, clean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    table = result.table
    clean = table[table["kind"] == CLEAN].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    try:
        for ax, metric, label in ((axes[0], "balanced_accuracy", "balanced accuracy (%)"),
                                  (axes[1], "ece", "expected calibration error (%)")):
            for kind, rows in table[table["kind"] != CLEAN].groupby("kind", sort=False):
                ax.plot(rows["severity"], 100 * rows[metric], marker="o", label=kind)
            ax.axhline(100 * clean[metric], color="black", linestyle="--", linewidth=1,
                       label="clean")
            ax.set_xlabel("severity")
            ax.set_xticks(sorted(set(table.loc[table["kind"] != CLEAN, "severity"])))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{result.model} ({result.method}): {result.images} images", fontsize=10)
        fig.savefig(path, dpi=120, format="png")
    finally:
        plt.close(fig)


def write_outputs(result: RobustnessResult, out: PathLike) -> list[Path]:
    """Write the four files into ``out`` (checked by :func:`check_out` first); returns them."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    marker = json.dumps(json_safe({**result.summary(), "files": list(OUTPUT_FILES)}), indent=2,
                        allow_nan=False) + "\n"
    writers: dict[str, Callable[[Path], None]] = {
        CSV_FILE: lambda p: result.table.to_csv(p, index=False),
        FIGURE_FILE: lambda p: draw_figure(result, p),
        TABLE_FILE: lambda p: p.write_text(markdown(result), encoding="utf-8"),
        MARKER_FILE: lambda p: p.write_text(marker, encoding="utf-8"),
    }
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            handle, temp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            os.close(handle)
            staged[name] = Path(temp)
            write(staged[name])
        for name in OUTPUT_FILES:  # the marker last: a folder marked ours holds a whole set
            os.replace(staged.pop(name), out / name)
    finally:
        for temp in staged.values():
            temp.unlink(missing_ok=True)
    return [out / name for name in OUTPUT_FILES]


def read_table(out: PathLike) -> pd.DataFrame:
    """robustness.csv of an output folder (for tests and the sweep report)."""
    return pd.read_csv(Path(out) / CSV_FILE)
