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


def test_the_eta_weighs_runs_by_their_planned_work_not_their_count():
    from cytotune.experiments.run_progress import WorkETA

    now = [0.0]
    # ten cheap probe runs first, then two LoRA runs each 45 times their work
    weights = {f"probe{i}": 1.0 for i in range(10)} | {"lora1": 45.0, "lora2": 45.0}
    eta = WorkETA(weights, clock=lambda: now[0])
    assert eta.eta() is None and eta.text() == "ETA -"
    for i in range(10):
        now[0] += 1.0
        eta.run_done(f"probe{i}")
    # 10 s for 10 units of work; 90 left: 90 s, not the run count's 2 s (10 s / 10 runs x 2)
    assert eta.eta() == 90.0 and eta.text() == "ETA 1 min 30 s"
    eta.drop("lora2")  # done by another worker: no longer left, no time spent here
    assert eta.eta() == 45.0
    said: list[str] = []
    lines = PlainSweepLines(said.append, total=12, clock=lambda: now[0], eta=eta)
    lines.started = 0.0
    lines.run_ended("probe 9", ok=True, done=10)
    assert said == ["[10/12] finished probe 9 (elapsed 10.0 s, ETA 45.0 s)"]


def test_with_estimated_seconds_the_eta_leans_on_the_estimate_early_on():
    from cytotune.experiments.run_progress import WorkETA

    now = [0.0]
    eta = WorkETA({"linear": 2.0, "lora": 98.0}, clock=lambda: now[0], seconds=True)
    now[0] = 8.0  # start-up made the cheap first run take 4 times its estimate
    eta.run_done("linear")
    # pace (8 + 10) / (2 + 10) = 1.5, not 8 / 2 = 4: 147 s left, not 392 s
    assert eta.eta() == 147.0


def test_the_eta_uses_each_kinds_measured_pace_once_one_of_its_runs_ended():
    """demo_sweep measured on an idle machine: a calibration made under load overstated LoRA
    about 8x, so a single overall pace promised minutes for 20 s of work."""
    from cytotune.experiments.run_progress import WorkETA

    now = [0.0]
    weights = {f"lin{i}": 0.3 for i in range(12)} | {f"lora{i}": 10.0 for i in range(12)}
    kinds = {r: ("linear" if r.startswith("lin") else "lora") for r in weights}
    eta = WorkETA(weights, clock=lambda: now[0], seconds=True, kinds=kinds)
    plain = WorkETA(weights, clock=lambda: now[0], seconds=True)
    for i in range(12):  # the linear group: 3.3 s for all 12, as estimated
        now[0] = 3.3
        eta.run_done(f"lin{i}")
        plain.run_done(f"lin{i}")
    now[0] = 4.5  # the first LoRA run: 1.2 s, not the estimated 10 s
    eta.run_done("lora0")
    plain.run_done("lora0")
    truth = 11 * 1.2
    assert abs(eta.eta() - truth) < 1e-9  # its own kind's measured pace
    assert plain.eta() > 3 * truth  # one pace over all the work: minutes too long
