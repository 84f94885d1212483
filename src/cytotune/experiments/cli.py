"""``cytotune sweep`` and ``cytotune report``: sub-commands for the main CLI.

The main parser wires them in with::

    from cytotune.experiments.cli import register
    COMMANDS.update(register(sub))   # sub: the parser's add_subparsers() object

Each command function takes the parsed namespace and returns an exit code: 0 when everything
ran, 1 when ``sweep`` finished with failed runs (they are in the store's failures table). Bad
input raises ConfigError / ValueError / FileNotFoundError, which the main CLI prints (code 2).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import yaml

from cytotune._flags import add_bootstrap_options, add_on_off, add_progress

DEFAULT_STORE = "cytotune_results.sqlite"


def _console():
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _sota(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key.strip():
            raise ValueError
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DATASET=ACCURACY (in %), got {text!r}") from None


def _split_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep", help="run a sweep of runs (resumable; results go to a SQLite store)",
        description="Run every run of a sweep (YAML file or shipped experiment name) that the "
                    "store does not hold yet. Killed or failed runs are re-run next time.")
    p.add_argument("sweep", nargs="?", metavar="FILE_OR_NAME",
                   help="sweep YAML file, or a shipped experiment (see --list)")
    p.add_argument("--list", action="store_true",
                   help="list the shipped experiments (description, number of runs) and exit")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"result store (default {DEFAULT_STORE})")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs, what is done, which backbones have no weights here and "
                        "the estimated time on this machine; run nothing, write nothing but the "
                        "calibration cache (~/.cache/cytotune/calibration.json)")
    p.add_argument("--no-estimate", action="store_true",
                   help="with --dry-run: skip the time estimate (and its short calibration)")
    p.add_argument("--datasets", action="append", metavar="NAME[,NAME...]",
                   help="run only these data sets of the sweep (default: every data set whose "
                        "environment variables are set; the others are skipped with a line)")
    p.add_argument("--devices", nargs="+", metavar="DEVICE",
                   help="e.g. cuda:0 cuda:1 (one worker process per device); default: in process")
    p.add_argument("--set", dest="overrides", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE",
                   help="override a sweep option, e.g. seeds=[1] or base.optim.steps=100 (YAML value)")
    p.add_argument("--executor", default="local",
                   help="executor name: local (default) or ray (one Ray task per run)")
    p.add_argument("--address", default=None,
                   help="ray executor: the cluster to connect to, e.g. ray://HEAD:10001 or "
                        "HEAD:6379 (default: RAY_ADDRESS, else start a local Ray instance)")
    p.add_argument("--executor-option", dest="executor_options", action="append",
                   type=_key_value, default=[], metavar="KEY=VALUE",
                   help="executor setting (YAML value), e.g. gpus_per_run=0.5, max_retries=5, "
                        "run_retries=0 for ray")
    p.add_argument("--worker-setup", metavar="MODULE:FUNCTION",
                   help="called once in each worker before its first run")
    add_on_off(p, "--retry-failed", default=True,
               help="retry runs that failed before (--no-retry-failed: skip them)")
    p.add_argument("--pack", dest="pack_size", type=int, default=None, metavar="K",
                   help="train up to K image-tower LoRA runs of a data set and backbone packed on "
                        "one backbone (default: the sweep's pack_size, else 1); same results")
    add_progress(p, quiet_alias=True)  # --progress/--no-progress; --quiet still works
    return p


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="tables, figures and an HTML page from a result store",
        description="Select the learning rate on validation accuracy per setting and seed and "
                    "report the test metric as the mean over seeds with a 95 %% interval "
                    "(bootstrap over seeds and test images); settings on the same data are "
                    "compared paired (interval of the difference, Wilcoxon, Holm) and the "
                    "summary names a best method only where the data resolve one. Tables (CSV, "
                    "Markdown), figures (PNG, SVG), per-run CSVs and one HTML page.")
    p.add_argument("store", metavar="STORE", help="result store (SQLite file) written by `sweep`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="test metrics, the first the headline (the 'best' summary): "
                        "balanced_accuracy accuracy macro_f1 auroc ece average_precision "
                        "(default: balanced_accuracy accuracy macro_f1)")
    p.add_argument("--sweep", dest="sweeps", action="append", metavar="NAME",
                   help="only this sweep (repeatable)")
    p.add_argument("--sota", action="append", type=_sota, default=[], metavar="DATASET=ACC",
                   help="state-of-the-art accuracy (%%) drawn on the fraction figure, e.g. "
                        "hicervix=<HierSwin's level-3 accuracy>; no default (not in the study text)")
    p.add_argument("--sota-label", default=None, help="legend label of the --sota line")
    p.add_argument("--ddof", type=int, default=0, help="std over seeds: 0 population (default), 1 sample")
    p.add_argument("--select-by", default="accuracy",
                   help="validation metric the learning rate is chosen on (default accuracy; "
                        "auroc for multi-label sweeps); linear runs with select_on train-cv "
                        "are chosen on their cross-validated training accuracy instead")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="draw only these methods in the figures (space or comma separated; "
                        "tables keep every method)")
    p.add_argument("--backbones", nargs="+", metavar="BACKBONE",
                   help="draw only these backbones in the figures (tables keep every one)")
    p.add_argument("--figure-metrics", nargs="+", metavar="METRIC", default=None,
                   help="metrics drawn in figures (default: the headline metric; tables "
                        "cover every --metrics)")
    add_on_off(p, "--intervals", default=True,
               help="95 %% intervals per cell (bootstrap over seeds and test images), paired "
                    "comparisons and rankings; --no-intervals: mean±std only")
    add_bootstrap_options(p)
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    from cytotune.training.config import ConfigError

    console = _console()
    if args.list or not args.sweep:
        if not args.list:
            raise ConfigError("give a sweep file or experiment name (or --list)")
        _print_list(console)
        return 0
    # the runner (pandas, rich progress; torch once a run starts) only when something runs
    from cytotune.experiments.runner import run_sweep
    from cytotune.experiments.sweep import load_sweep

    executor_options = dict(getattr(args, "executor_options", None) or [])
    address = getattr(args, "address", None)
    if address is not None:
        if args.executor != "ray":
            raise ValueError("--address is an option of --executor ray")
        executor_options["address"] = address
    sweep = load_sweep(args.sweep, overrides=dict(args.overrides),
                       datasets=_split_list(getattr(args, "datasets", None)),
                       skip_unset_datasets=True)
    summary = run_sweep(sweep, args.store, executor=args.executor,
                        devices=_split_list(args.devices), dry_run=args.dry_run,
                        progress=args.progress, retry_failed=args.retry_failed,
                        worker_setup=args.worker_setup, console=console,
                        executor_options=executor_options,
                        pack_size=getattr(args, "pack_size", None),
                        estimate=not getattr(args, "no_estimate", False))
    if not args.progress:
        console.print(summary.line())
    return 1 if summary.failed or summary.not_run else 0


def _print_list(console) -> None:
    """``sweep --list``: each shipped sweep, its run count (planned, nothing read or trained)
    and its description."""
    from rich.markup import escape

    from cytotune.experiments.catalog import experiment_path
    from cytotune.experiments.listing import summarize_all

    for item in summarize_all():
        console.print(f"[bold]{item.name}[/bold]: {item.count()}"
                      + (f" [dim](full sweep; unset here: {', '.join(item.unset)})[/dim]"
                         if item.unset else ""), highlight=False, soft_wrap=True)
        text = item.description or (f"(not plannable: {item.error})" if item.error else "")
        if text:
            console.print(f"    {escape(text)}", highlight=False, soft_wrap=True)
    console.print("run one: [bold]cytotune sweep NAME --dry-run[/bold] (its runs and estimated "
                  "time); the files are in "
                  f"[dim]{escape(str(experiment_path('demo_sweep').parent))}[/dim]",
                  highlight=False, soft_wrap=True)


def cmd_report(args: argparse.Namespace) -> int:
    from cytotune.analysis import BootstrapSpec
    from cytotune.experiments.report import DEFAULT_METRICS, DEFAULT_SOTA_LABEL, make_report

    console = _console()
    report = make_report(args.store, args.out, metrics=_split_list(args.metrics) or DEFAULT_METRICS,
                         sweeps=args.sweeps, sota=dict(args.sota) or None,
                         sota_label=args.sota_label or DEFAULT_SOTA_LABEL, ddof=args.ddof,
                         select_by=args.select_by,
                         methods=_split_list(getattr(args, "methods", None)),
                         backbones=_split_list(getattr(args, "backbones", None)),
                         figure_metrics=_split_list(args.figure_metrics),
                         intervals=BootstrapSpec(resamples=args.resamples, level=args.level,
                                                 seed=args.boot_seed) if args.intervals else None)
    console.print(f"report written to [bold]{report.html}[/bold] ({len(report.tables)} tables, "
                  f"{len(report.figures)} figures)")
    for metric, best in report.best.items():  # what a reader wants first; the rest is listed
        if not best.empty:
            console.print(f"[bold]best method per data set and training data ({metric})[/bold]")
            console.print(best.to_string(), markup=False, highlight=False, soft_wrap=True)
    for line in report.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def register(subparsers) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``sweep`` and ``report`` to an ``add_subparsers()`` object; returns their handlers."""
    add_sweep_parser(subparsers)
    add_report_parser(subparsers)
    return {"sweep": cmd_sweep, "report": cmd_report}


def main(argv=None) -> int:
    """Stand-alone entry (``python -m cytotune.experiments.cli sweep ...``) until the main CLI
    wires these commands in."""
    import logging

    from cytotune.data import DataError
    from cytotune.models import ModelError
    from cytotune.training.config import ConfigError

    parser = argparse.ArgumentParser(prog="cytotune", description="cytotune sweeps and reports")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = register(sub)
    args = parser.parse_args(argv)
    from cytotune.training.rundir import (Terminated, handle_sigterm,
                                           os_error_message, restore_sigterm)

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    previous = handle_sigterm()
    try:
        return commands[args.command](args)
    except (ConfigError, DataError, ModelError, ValueError) as err:
        from rich.markup import escape

        _console().print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        return 2
    except OSError as err:
        _console().print(f"error: {os_error_message(err)}", markup=False, highlight=False,
                         soft_wrap=True)
        return 2
    except KeyboardInterrupt as err:
        _console().print("interrupted: finished runs are kept in the store; run the same "
                         "command again to resume", markup=False, highlight=False)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        restore_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())
