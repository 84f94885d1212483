"""The demo talks (issue 32): an overall ETA weighted by each run's planned work, and a closing
text saying what its numbers mean and what to try next."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from cytotune.demo import DemoSettings, closing_text, planned_runs


def _result(method: str, shots: int, out: Path, labels: list[str]):
    return SimpleNamespace(config=SimpleNamespace(method=method, shots=shots),
                           class_names=["a", "b", "c", "d"], out_dir=out / f"{method}-{shots}",
                           predictions=pd.DataFrame({"label": labels, "predicted": labels}))


def test_the_closing_text_gives_test_size_chance_majority_metrics_and_next_commands(tmp_path):
    labels = ["a"] * 6 + ["b"] * 2 + ["c"] * 1 + ["d"] * 1  # majority class: 6 of 10
    results = [_result("linear", 16, tmp_path, labels), _result("lora", 16, tmp_path, labels)]
    text = "\n".join(closing_text(results, tmp_path))
    assert "test images: 10 per run" in text and "4 classes" in text
    assert "chance: 0.250 (1/4)" in text and "commonest class: 0.600" in text
    for word in ("balanced accuracy: the mean of the per-class recalls", "ECE",
                 "cytotune predict", "cytotune compare", "cytotune sweep demo_sweep --store "
                 "demo.sqlite", "cytotune report demo.sqlite"):
        assert word in text, word
    assert f"cytotune compare {tmp_path / 'linear-16'} {tmp_path / 'lora-16'}" in text


def test_the_demo_plan_weighs_lora_runs_by_their_work():
    plan = planned_runs(DemoSettings())
    assert [(m, s) for m, s, _ in plan] == [("linear", 1), ("lora", 1), ("linear", 4),
                                            ("lora", 4), ("linear", 16), ("lora", 16)]
    work = {(m, s): w for m, s, w in plan}
    # 40 steps x 4 images (1 shot x 4 classes) against 40 x 32 (a full batch at 16 shots)
    assert work[("lora", 16)] - work[("lora", 1)] == 0.004 * 40 * (32 - 4)
    assert work[("linear", 16)] < work[("lora", 1)] < work[("lora", 16)]
