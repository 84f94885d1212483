#!/usr/bin/env python3
"""Make docs/report_screenshot.png: a report of a hand-made result store, checked and
photographed in headless Chromium (scripts/check_report_html.py).

    PYTHONPATH=src python scripts/report_screenshot.py [--out docs/report_screenshot.png]

The store holds made-up numbers (no training, no data): a shots sweep comparing the linear probe
and LoRA on two backbones and two data sets, zero-shot runs of the vision-language backbone, and
the linear probe on all data. It shows the page's layout, not results: the top of the page in a
1,366 px wide window (the width the page must fit, scripts/check_report_html.py).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_report_html  # noqa: E402

from cytotune.experiments import ResultStore, make_report  # noqa: E402

DATASETS = {"mlcc": 4, "bcfc": 6}
BACKBONES = {"clip-vit-b16": 0.0, "uni": 0.04}
SHOTS = (1, 2, 4, 8, 16)


def _record(run_id: str, *, sweep: str, dataset: str, backbone: str, method: str, shots, seed: int,
            lr: float, val: float, test: float) -> dict:
    classes = DATASETS[dataset]
    confusion = [[1 if i == j else 0 for j in range(classes)] for i in range(classes)]
    metrics = {"val": {"accuracy": val, "balanced_accuracy": val, "macro_f1": val - 0.02,
                       "auroc": math.nan, "ece": 0.1, "n": 10},
               "test": {"accuracy": test, "balanced_accuracy": test - 0.01,
                        "macro_f1": test - 0.02, "auroc": min(0.99, test + 0.15), "ece": 0.06,
                        "n": 200, "confusion_matrix": confusion},
               "best_step": 1, "steps": 2}
    return {"run_id": run_id, "sweep": sweep, "dataset": dataset, "backbone": backbone,
            "method": method, "shots": shots, "fraction": None, "seed": seed, "lr": lr,
            "config": {"seed": seed, "optim": {"lr": lr}}, "metrics": metrics,
            "timings": {"feature_extraction_s": 4.0, "training_s": 30.0 * (shots or 1),
                        "total_s": 40.0 * (shots or 1)},
            "trainable_parameters": {"total": 1000, "backbone": 0, "head": 1000}}


def records(seed: int = 0) -> list[dict]:
    """Made-up runs: accuracy rising with log(shots), LoRA ahead from 4 shots, seed noise."""
    rng = np.random.default_rng(seed)
    out = []
    for d_i, (dataset, classes) in enumerate(DATASETS.items()):
        chance = 1.0 / classes
        for backbone, lift in BACKBONES.items():
            for s in (1, 2, 3):
                for method in ("linear", "lora"):
                    for shots in SHOTS:
                        gain = 0.07 * math.log2(shots) + (0.02 * (math.log2(shots) - 1)
                                                          if method == "lora" else 0.0)
                        for lr in (1e-3, 1e-2):
                            acc = min(0.97, chance + 0.2 + gain + lift - 0.05 * d_i
                                      + rng.normal(0, 0.015 + 0.02 / shots))
                            out.append(_record(f"{dataset}-{backbone}-{method}-{shots}-{s}-{lr}",
                                               sweep="fewshot", dataset=dataset,
                                               backbone=backbone, method=method, shots=shots,
                                               seed=s, lr=lr, val=acc + rng.normal(0, 0.01),
                                               test=acc))
                if backbone.startswith("clip"):
                    out.append(_record(f"{dataset}-{backbone}-zs-{s}", sweep="fewshot",
                                       dataset=dataset, backbone=backbone, method="zero-shot",
                                       shots=None, seed=s, lr=0.0, val=chance + 0.1,
                                       test=chance + 0.08 + rng.normal(0, 0.01)))
                out.append(_record(f"{dataset}-{backbone}-all-{s}", sweep="linear_all",
                                   dataset=dataset, backbone=backbone, method="linear",
                                   shots=None, seed=s, lr=1e-3, val=0.85,
                                   test=0.86 + lift - 0.05 * d_i + rng.normal(0, 0.008)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/report_screenshot.png"))
    parser.add_argument("--height", type=int, default=1900)
    args = parser.parse_args(argv)
    chromium = check_report_html.find_chromium()
    if chromium is None:
        print("no Chromium found; install one (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cytotune-report-") as tmp:
        store = ResultStore(Path(tmp) / "demo.sqlite")
        store.insert_many(records())
        report = make_report(store, Path(tmp) / "report", title="cytotune experiments (made-up "
                                                                "numbers: layout only)")
        tables = [*report.tables, *(f"best__{m}" for m in report.best)]
        result = check_report_html.evaluate(
            check_report_html.render_facts(report.html, chromium), tables,
            [p.name for p in report.figures])
        for line in result.lines():
            print(line)
        shot = check_report_html.screenshot(report.html, chromium, args.out,
                                            width=check_report_html.WINDOW_WIDTH,
                                            height=args.height)
    print(f"screenshot: {shot} ({shot.stat().st_size // 1024} KiB)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
