"""``cytotune robustness RUN --out DIR``: a sub-command for ``cytotune.cli`` (``register``).

Cheap to import (argparse and rich only): the evaluation, in
:mod:`cytotune.inference.robustness`, is imported when the command runs, so --help stays
torch-free. User errors print one ``error:`` line and return 2.
"""
from __future__ import annotations

import argparse
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cytotune._flags import add_bootstrap_options, add_progress
from cytotune.data.perturb_kinds import PERTURBATIONS
from cytotune.inference.cli import device_arg, output_console, positive_int

KINDS_HELP = ", ".join(PERTURBATIONS)


def register(subparsers) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``robustness``; returns {name: handler(args) -> exit code}."""
    p = subparsers.add_parser(
        "robustness", help="how a trained run degrades under stain, blur, JPEG, noise, scale "
                           "and brightness shifts",
        description="Evaluate a run on perturbed copies of its test images (or of --data): "
                    "HED stain shift, defocus blur, JPEG re-compression, Gaussian noise, "
                    "down-and-up scaling and brightness, each at fixed severities. The perturbed "
                    "images are the same for every run (fixed per image, kind and severity), so "
                    "runs compare paired. Writes robustness.csv (balanced accuracy, accuracy, "
                    "ECE, the drop from clean with a paired bootstrap interval), robustness.png "
                    "and robustness.md into --out.")
    p.add_argument("run_dir", metavar="RUN", help="run directory written by `cytotune train --out`")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="labelled images to evaluate on, read with the run's layout; their "
                        "classes must be the run's (default: the run's own test split)")
    p.add_argument("--layout", default=None,
                   help="layout of --data: bcfc, mlcc, sipakmed, hicervix, folder, csv "
                        "(default: the run's)")
    p.add_argument("--kinds", default="all",
                   help=f"perturbations, comma-separated: {KINDS_HELP} (default: all)")
    p.add_argument("--severities", default="1-5",
                   help="severities 0-5 (0: unperturbed), e.g. 1-5 or 1,3,5 (default: 1-5)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write robustness.csv/.png/.md into (new, empty, or an earlier "
                        "robustness folder)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    p.add_argument("--num-workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="autocast precision (default: the run's own setting)")
    add_bootstrap_options(p)
    add_progress(p)
    return {"robustness": cmd_robustness}


def _user_errors() -> tuple[type[BaseException], ...]:
    from cytotune.data import DataError
    from cytotune.models import ModelError
    from cytotune.training.config import ConfigError

    return (DataError, ModelError, ConfigError, ValueError, OSError)


def cmd_robustness(args: argparse.Namespace) -> int:
    """Check everything cheap first (options, run, --out), then evaluate and write."""
    console = output_console()
    try:
        return _run(args, console)
    except _user_errors() as err:
        console.print(f"[red]error:[/red] {escape(' '.join(str(err).split()))}",
                      highlight=False, soft_wrap=True)
        return 2


def _run(args: argparse.Namespace, console: Console) -> int:
    from cytotune.analysis import BootstrapSpec
    from cytotune.inference.robustness import (evaluate_robustness, parse_kinds,
                                               parse_severities)
    from cytotune.inference.robustness_output import (TABLE_HEADER, check_out, table_rows,
                                                      write_outputs)
    from cytotune.inference.run import read_run

    kinds, severities = parse_kinds(args.kinds), parse_severities(args.severities)
    if args.layout is not None and args.data is None:
        raise ValueError("--layout goes with --data (the run's own test split is read with the "
                         "run's layout)")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    spec = BootstrapSpec(resamples=args.resamples, level=args.level, seed=args.boot_seed)
    run = read_run(args.run_dir)
    out = check_out(args.out, run.path, args.data if args.data else run.config.data.source)
    if args.progress:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with Progress(TextColumn("perturbing and predicting"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                      transient=True) as bar:
            task = bar.add_task("robustness", total=None)
            result = evaluate_robustness(
                run.path, data=args.data, kinds=kinds, severities=severities, spec=spec,
                layout=args.layout, device=args.device, batch_size=args.batch_size,
                num_workers=args.num_workers, precision=args.precision,
                on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        result = evaluate_robustness(run.path, data=args.data, kinds=kinds, severities=severities,
                                     spec=spec, layout=args.layout, device=args.device,
                                     batch_size=args.batch_size, num_workers=args.num_workers,
                                     precision=args.precision)
    files = write_outputs(result, out)
    table = Table(title=f"robustness of {result.model} ({result.method}): {result.images} "
                        f"images, {result.source}")
    for column in TABLE_HEADER:
        table.add_column(column, justify="left" if column in ("kind", "perturbation") else "right")
    for row in table_rows(result):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    console.print(f"drop = clean minus perturbed balanced accuracy (points); interval: "
                  f"{escape(spec.describe())}, paired by image", highlight=False, soft_wrap=True)
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} unreadable image(s) skipped[/yellow]: "
                      + escape(", ".join(str(p) for p, _ in result.skipped[:5])), soft_wrap=True)
    console.print(f"written to [bold]{escape(str(out))}[/bold]: "
                  f"{', '.join(f.name for f in files)}", highlight=False, soft_wrap=True)
    return 0
