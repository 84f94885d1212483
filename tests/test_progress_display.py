"""What a person sees of a run: plain periodic lines off a terminal, a rich display on one."""
from __future__ import annotations

import io

from rich.console import Console

from cytotune.progress_display import PlainProgress, RichProgress, duration, progress_display


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _train(display, clock: FakeClock, steps: int, seconds_per_step: float) -> None:
    display.planned(steps, "the study's schedule 50 + 100 x 4 shots")
    display.phase("decoding", 20)
    display.advance(20)
    display.phase("training", steps)
    for step in range(1, steps + 1):
        clock.now += seconds_per_step
        if step % 25 == 0:
            display.evaluation(step, {"val_accuracy": 0.5 + step / 1000, "val_loss": 1.0})
        display.step(step, steps)
    display.phase("evaluation")
    display.finished()


def test_plain_mode_prints_the_plan_an_estimate_and_periodic_lines():
    stream, clock = io.StringIO(), FakeClock()
    _train(PlainProgress(stream, every_s=1e9, clock=clock), clock, steps=450, seconds_per_step=5)
    lines = stream.getvalue().splitlines()
    assert lines[0] == ("planned: 450 optimizer steps (the study's schedule 50 + 100 x 4 shots)")
    estimate = [line for line in lines if line.startswith("estimated training time")]
    assert estimate == [estimate[0]] and "37 min 30 s" in estimate[0]
    training = [line for line in lines if line.startswith("training ")]
    assert len(training) == 10  # every 10 %
    assert training[0].startswith("training 45/450 (10 %)")
    assert "0.20 steps/s" in training[0] and "ETA 33 min 45 s" in training[0]
    assert "val acc 0.525" in training[0]
    assert training[-1].startswith("training 450/450 (100 %)") and "ETA" not in training[-1]
    assert lines.index("training: 450 steps") < lines.index(training[0])
    assert lines[-1] == "evaluation"


def test_plain_mode_also_prints_every_n_seconds():
    stream, clock = io.StringIO(), FakeClock()
    _train(PlainProgress(stream, every_fraction=1.0, every_s=60, clock=clock), clock, steps=40,
           seconds_per_step=20)  # 800 s of training: a line a minute, not only at the end
    training = [l for l in stream.getvalue().splitlines() if l.startswith("training ")]
    assert 10 <= len(training) <= 15


def test_rich_mode_draws_phase_steps_rate_eta_and_metric():
    console = Console(file=io.StringIO(), force_terminal=True, width=140, record=True)
    clock = FakeClock()
    display = RichProgress(console, clock=clock)
    display.planned(100, "set by --steps")
    display.phase("training", 100)
    for step in range(1, 51):
        clock.now += 2
        if step == 50:
            display.evaluation(step, {"val_accuracy": 0.75, "val_loss": 0.5})
        display.step(step, 100)
    display.progress.refresh()
    text = console.export_text()
    assert "planned: 100 optimizer steps (set by --steps)" in text
    assert "estimated training time: 3 min 20 s" in text
    assert "training" in text and "50/100" in text and "0.50 steps/s" in text
    assert "val acc 0.750" in text
    display.finished()
    assert not display.live


def test_the_display_follows_the_terminal():
    assert isinstance(progress_display(Console(file=io.StringIO(), force_terminal=True)),
                      RichProgress)
    stream = io.StringIO()
    shown = progress_display(Console(file=stream, force_terminal=False))
    assert isinstance(shown, PlainProgress) and shown.stream is stream


def test_durations_read_like_people_write_them():
    assert duration(12.34) == "12.3 s" and duration(245) == "4 min 05 s"
    assert duration(3720) == "1 h 02 min"


def test_work_done_before_counts_as_done_but_not_in_the_rate_or_eta():
    """A resumed cache build starts with images decoded by the stopped one: the count and the
    percentage include them, the rate and ETA only what this run decodes."""
    stream, clock = io.StringIO(), FakeClock()
    display = PlainProgress(stream, every_s=1e9, clock=clock)
    display.phase("decoding", 1000)
    display.reused(400)  # 40 %: one line, no rate yet (nothing decoded now)
    clock.now += 10
    display.advance(100)  # 100 images in 10 s: 10 images/s, 500 left: 50 s
    lines = stream.getvalue().splitlines()
    assert lines[1].startswith("decoding 400/1000 (40 %, 400 done before)")
    assert "ETA" not in lines[1]
    assert lines[2].startswith("decoding 500/1000 (50 %, 400 done before)")
    assert "10.00 images/s" in lines[2] and "ETA 50.0 s" in lines[2]
