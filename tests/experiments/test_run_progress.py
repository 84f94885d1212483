"""A sweep's bar shows the phase and step of the run it is training (in process)."""
from __future__ import annotations

from rich.console import Console

from cytotune.experiments import run_sweep
from cytotune.experiments.run_progress import SweepRunProgress
from experiments_helpers import small_sweep


def test_the_run_text_follows_phases_steps_and_validation():
    shown: list[str] = []
    now = [0.0]
    progress = SweepRunProgress(shown.append, interval_s=1.0, clock=lambda: now[0])
    progress.phase("decoding", 10)
    progress.advance(10)  # too soon after the phase change: not shown
    progress.phase("training", 4)
    for step in range(1, 5):
        now[0] += 0.6
        if step == 2:
            progress.evaluation(2, {"val_accuracy": 0.5, "val_loss": 1.0})
        progress.step(step, 4)
    progress.finished()
    assert shown == ["decoding 0/10", "training 0/4", "training 2/4 val acc 0.500",
                     "training 4/4 val acc 0.500", ""]


def test_a_sweep_with_its_bar_still_runs(synthetic_data, tiny_model_names, tmp_path):
    values = small_sweep("bar", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1], seeds=[1], lrs=[1e-2])
    console = Console(record=True, width=200, force_terminal=False)
    summary = run_sweep(values, tmp_path / "r.sqlite", console=console)
    assert len(summary.completed) == 1 and not summary.failed
