"""``cytotune predict``, ``cytotune export`` and ``cytotune compare``: subcommands for ``cytotune.cli``.

Wiring (in ``cytotune.cli.build_parser`` / ``COMMANDS``)::

    from cytotune.inference.cli import register
    COMMANDS.update(register(sub))

Each command prints with rich and returns an exit code: 0 on success (unreadable input images
are reported, not fatal), 2 for a user error (bad run directory, input, or format).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cytotune._flags import add_bootstrap_options, add_on_off, add_progress

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def output_console() -> Console:
    """stdout's console: full width in a terminal, 160 columns in a file or pipe (the inference
    commands, select, audit and robustness share it)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def device_arg(value: str) -> str:
    """``--device`` of the inference commands: auto, cpu, cuda or cuda:N."""
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"--device takes auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def positive_int(value: str) -> int:
    """A whole number >= 1 (``--batch-size``)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {number}")
    return number


def _user_errors() -> tuple[type[BaseException], ...]:
    from cytotune.data import DataError
    from cytotune.models import ModelError
    from cytotune.training.config import ConfigError

    return (DataError, ModelError, ConfigError, ValueError, FileNotFoundError)


def cmd_predict(args: argparse.Namespace) -> int:
    from cytotune.inference.predict import STATUS_OK, UNREADABLE, predict

    console = output_console()
    try:
        frame = predict(args.run_dir, args.input, out=args.out, device=args.device,
                        batch_size=args.batch_size, num_workers=args.num_workers,
                        progress=args.progress, precision=args.precision)
    except _user_errors() as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        return 2
    bad = frame[frame["status"] != STATUS_OK]
    ok = frame[frame["status"] == STATUS_OK]
    table = Table(title=f"predictions: {len(ok)} of {len(frame)} images")
    table.add_column("predicted class")
    table.add_column("images", justify="right")
    counts = Counter(ok["predicted"])
    for name in [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]:
        table.add_row(escape(name), str(counts.get(name, 0)))
    console.print(table)
    if len(bad):
        unreadable = int(bad["status"].str.startswith(UNREADABLE).sum())
        others = (f" and {len(bad) - unreadable} without a prediction"
                  if unreadable < len(bad) else "")
        console.print(f"[yellow]{unreadable} unreadable image(s) skipped{others}[/yellow] (status "
                      f"column in the CSV):")
        for path, status in list(zip(bad["path"], bad["status"]))[:10]:
            console.print(f"  {escape(path)}: {escape(status)}")
        if len(bad) > 10:
            console.print(f"  ... and {len(bad) - 10} more")
    if "label" in frame.columns and len(ok):
        accuracy = float((ok["label"] == ok["predicted"]).mean())
        console.print(f"accuracy against the CSV's label column: {accuracy:.4f} ({len(ok)} images)")
    console.print(f"written to [bold]{escape(str(args.out))}[/bold]")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cytotune.inference.export import export
    from cytotune.inference.modelcard import licence_is_restrictive
    from cytotune.models import get_card

    console = output_console()
    try:
        result = export(args.run_dirs, args.out, format=args.format, overwrite=args.overwrite,
                        opset=args.opset)
    except _user_errors() as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        return 2
    info = result.info
    console.print(f"exported [bold]{escape(info['model_card'])}[/bold] ({info['method']}, "
                  f"{len(info['class_names'])} classes) as {result.format} to "
                  f"[bold]{escape(str(result.out_dir))}[/bold]: {', '.join(result.files)}")
    if result.format == "onnx":
        check = info["onnx"]
        console.print(f"onnxruntime vs PyTorch: max |probability difference| "
                      f"{check['max_abs_diff_probabilities']:.2e} on {check['checked_images']} "
                      f"images (tolerance {check['tolerance_probabilities']:g})")
    if len(info["runs"]) > 1:
        console.print(f"model card metrics over {len(info['runs'])} seeds")
    if info["licence"] and (info["gated"] or licence_is_restrictive(get_card(info["model_card"]))):
        console.print(f"[bold red]licence:[/bold red] the backbone is licensed "
                      f"{escape(info['licence'])}{' and gated' if info['gated'] else ''}; its terms "
                      f"apply to the exported weights: read MODEL_CARD.md before sharing them")
    return 0


def register(subparsers) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``predict`` and ``export`` subcommands; returns {name: function(args) -> exit code}."""
    p = subparsers.add_parser(
        "predict", help="predict new images with a trained run",
        description="Predict images with the model of a run directory: an image, a folder "
                    "(recursive) or a CSV with a 'path' column. Unreadable files are reported "
                    "and kept in the CSV with status 'unreadable: <reason>'.")
    p.add_argument("run_dir", help="run directory written by `cytotune train --out`")
    p.add_argument("input", help="an image file, a folder of images, or a CSV with a 'path' column")
    p.add_argument("--out", default="predictions.csv",
                   help="CSV to write (default: predictions.csv); written atomically")
    p.add_argument("--device", type=device_arg, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    p.add_argument("--num-workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="autocast precision (default: the run's own setting, whose 'auto' is "
                        "bf16 on CUDA and fp32 on a CPU)")
    add_progress(p)

    e = subparsers.add_parser(
        "export", help="export a trained run as one standalone model",
        description="Export the merged backbone and head of a run as safetensors (loadable with "
                    "plain timm / open_clip / transformers) or ONNX, with README.md and "
                    "MODEL_CARD.md. Extra run directories (other seeds of the same setting) add "
                    "their metrics to the model card.")
    e.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="the run to export, then optionally other seeds for the model card")
    e.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors")
    e.add_argument("--out", required=True, help="output folder")
    add_on_off(e, "--overwrite", default=False, help="replace a non-empty output folder")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    c = subparsers.add_parser(
        "compare", help="compare two runs on the same test images (paired)",
        description="Compare two runs' test predictions image by image: balanced accuracy, "
                    "accuracy and macro-F1 of both, the difference (A minus B) with a paired "
                    "bootstrap interval over the test images, and McNemar's test on which "
                    "images each gets right. Runs on different test images (or labels) are "
                    "refused, naming the first image that differs.")
    c.add_argument("run_a", metavar="RUN_A", help="run directory (its predictions.csv) or a "
                                                  "predictions CSV (path, label, predicted)")
    c.add_argument("run_b", metavar="RUN_B", help="the other run directory or CSV")
    add_bootstrap_options(c)
    c.add_argument("--out", default=None, help="also write the table to this CSV (atomically)")
    return {"predict": cmd_predict, "export": cmd_export, "compare": cmd_compare}


def cmd_compare(args: argparse.Namespace) -> int:
    from cytotune._atomic import write_csv_atomic
    from cytotune.analysis import BootstrapSpec
    from cytotune.inference.compare import CompareError, compare_runs

    console = output_console()
    spec = BootstrapSpec(resamples=args.resamples, level=args.level, seed=args.boot_seed)
    try:
        result = compare_runs(args.run_a, args.run_b, spec)
        if args.out:
            write_csv_atomic(result.table, args.out)
    except (CompareError, OSError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        return 2
    name_a, name_b = result.names
    console.print(f"A: {escape(name_a)}\nB: {escape(name_b)}\n{result.images} test images, "
                  f"{len(result.classes)} classes; interval: {escape(spec.describe())}, paired "
                  f"by image")
    table = Table(title="test metrics (%), A minus B")
    for column in ("metric", "A", "B", "difference", f"{spec.level:.0%} interval", "verdict"):
        table.add_column(column)
    for r in result.table.itertuples(index=False):
        table.add_row(r.metric, f"{r.A:.2f}", f"{r.B:.2f}", f"{r.difference:+.2f}",
                      f"[{r.low:+.2f}, {r.high:+.2f}]", r.verdict)
    console.print(table)
    m = result.mcnemar
    console.print(f"McNemar ({'exact binomial' if m.exact else 'chi-square, continuity-corrected'}"
                  f"): {m.only_a} images right by A alone, {m.only_b} by B alone, "
                  f"p = {m.pvalue:.4g}")
    if args.out:
        console.print(f"table written to {escape(str(args.out))}")
    return 0
