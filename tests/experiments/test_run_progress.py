"""A sweep's bar shows the phase and step of the run it is training (in process); off a terminal,
plain lines say the same while the sweep runs."""
from __future__ import annotations

from rich.console import Console

from cytotune.experiments import run_sweep
from cytotune.experiments.run_progress import PlainSweepLines, SweepRunProgress
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



def test_plain_lines_show_each_phase_and_at_most_every_few_seconds_within_one():
    said: list[str] = []
    now = [0.0]
    lines = PlainSweepLines(said.append, total=4, every_s=30, clock=lambda: now[0])
    lines.run_text("decoding 0/50000")
    for done in range(1000, 50001, 1000):  # 50 updates, one a second
        now[0] += 1
        lines.run_text(f"decoding {done}/50000")
    lines.run_text("training 0/10")
    lines.run_text("")
    now[0] += 10
    lines.run_ended("run a", ok=True, done=1)
    assert said[:3] == ["  decoding 0/50000", "  decoding 30000/50000", "  training 0/10"]
    assert said[3] == "[1/4] finished run a (elapsed 1 min 00 s, ETA 3 min 00 s)"
    lines.run_ended("run b", ok=False, done=4)  # two more were settled by another sweep
    assert said[4] == "[4/4] FAILED run b (elapsed 1 min 00 s)"


def test_a_sweep_off_a_terminal_writes_lines_while_it_runs(synthetic_data, tiny_model_names,
                                                          tmp_path):
    values = small_sweep("lines", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1, 2], seeds=[1], lrs=[1e-2])
    console = Console(record=True, width=200, force_terminal=False)
    summary = run_sweep(values, tmp_path / "r.sqlite", console=console)
    assert len(summary.completed) == 2 and not summary.failed
    text = console.export_text()
    assert "  decoding" in text and "  training" in text  # the in-process run's phases
    ended = [line for line in text.splitlines() if line.startswith("[")]
    assert [line.split(" ", 1)[0] for line in ended] == ["[1/2]", "[2/2]"]
    assert "ETA" in ended[0] and "ETA" not in ended[1]
    assert "━" not in text  # no bar drawn into a log
