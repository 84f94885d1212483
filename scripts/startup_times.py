"""Time how long cytotune commands take to start: best of N runs, each in a fresh interpreter.

    PYTHONPATH=src python scripts/startup_times.py [--repeats 3]

"before" is the reference cost of the old start-up path, in which `cytotune.cli` imported torch
and the training and benchmark code before parsing (`import torch, cytotune.training.runner,
cytotune.benchmark.cases`); "now" is the command itself.
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


def best_of(argv: list[str], repeats: int) -> tuple[float, int]:
    """Shortest wall time of ``repeats`` runs of ``argv`` and the last exit code."""
    best, code = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        best = min(best, time.perf_counter() - start)
    return best, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    py = [sys.executable]
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "s.sqlite")
        commands = {"cytotune --help": ["--help"], "cytotune models": ["models"],
                    "cytotune sweep --list": ["sweep", "--list"],
                    "cytotune sweep demo_sweep --dry-run": ["sweep", "demo_sweep", "--store", store,
                                                            "--dry-run"]}
        before, _ = best_of([*py, "-c", OLD_PATH], args.repeats)
        print(f"reference: old start-up path ({OLD_PATH}): {before:.2f} s "
              f"(best of {args.repeats})")
        print(f"{'command':38} {'before (s)':>11} {'now (s)':>8}  exit")
        for name, argv in commands.items():
            now, code = best_of([*py, "-m", "cytotune.cli", *argv], args.repeats)
            print(f"{name:38} {'>= ' + format(before, '.2f'):>11} {now:8.2f}  {code}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
