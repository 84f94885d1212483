"""Time how long cytotune commands take to start: best of N runs, each in a fresh interpreter.

    PYTHONPATH=src python scripts/startup_times.py [--repeats 3]

"before" is the reference cost of the old start-up path, in which `cytotune.cli` imported torch
and the training and benchmark code before parsing (`import torch, cytotune.training.runner,
cytotune.benchmark.cases`); "now" is the command itself; "x pass" is "now" over the time of a
bare `python -c pass` (the interpreter's own start), so a command's own start-up cost shows on
a machine of any speed. Runs are interleaved (a round of every command, repeated), so a change
of machine load touches them alike.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OLD_PATH = "import torch, cytotune.training.runner, cytotune.benchmark.cases"


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall time of one run of ``argv`` and its exit code."""
    start = time.perf_counter()
    code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - start, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    py = [sys.executable]
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "s.sqlite")
        cli = [*py, "-m", "cytotune.cli"]
        commands = {"python -c pass": [*py, "-c", "pass"],
                    "old start-up path": [*py, "-c", OLD_PATH],
                    "cytotune --help": [*cli, "--help"],
                    "cytotune train --help": [*cli, "train", "--help"],
                    "cytotune sweep --help": [*cli, "sweep", "--help"],
                    "cytotune models": [*cli, "models"],
                    "cytotune sweep --list": [*cli, "sweep", "--list"],
                    # the plan alone: the time estimate (issue 32) calibrates backbones
                    "cytotune sweep demo_sweep --dry-run --no-estimate": [
                        *cli, "sweep", "demo_sweep", "--store", store, "--dry-run",
                        "--no-estimate"]}
        best = {name: float("inf") for name in commands}
        codes = {name: 0 for name in commands}
        for _ in range(args.repeats):
            for name, argv in commands.items():
                seconds, codes[name] = timed(argv)
                best[name] = min(best[name], seconds)
    bare, before = best.pop("python -c pass"), best.pop("old start-up path")
    print(f"python -c pass: {bare:.3f} s; old start-up path ({OLD_PATH}): {before:.2f} s "
          f"(best of {args.repeats})")
    print(f"{'command':38} {'before (s)':>11} {'now (s)':>8} {'x pass':>7}  exit")
    for name, now in best.items():
        print(f"{name:38} {'>= ' + format(before, '.2f'):>11} {now:8.3f} {now / bare:7.1f}  "
              f"{codes[name]}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
