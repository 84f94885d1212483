"""Training reports its progress as observer events, in order, and never prints."""
from __future__ import annotations

from cytotune.api import build_config
from cytotune.training.progress import RecordingObserver, observing, step_plan
from cytotune.training.runner import run_training


def _names(events: list[tuple]) -> list[str]:
    """The event kinds with repeats collapsed: the shape of a run."""
    out: list[str] = []
    for event in events:
        kind = event[1] if event[0] == "phase" else event[0]
        if not out or out[-1] != kind:
            out.append(kind)
    return out


def test_a_lora_run_reports_plan_phases_steps_and_evaluations_in_order(
        synthetic_data, tiny_model_names, tmp_path):
    config = build_config(data=str(synthetic_data), model=tiny_model_names["uni"],
                          pretrained=False, method="lora", rank=2, shots=2, steps=6,
                          val_every=3, device="cpu", cache_dir=str(tmp_path / "cache"))
    with observing(RecordingObserver()) as seen:
        run_training(config)
    events = seen.events
    assert events[0] == ("planned", 6)
    assert _names(events) == ["planned", "decoding", "advance", "training", "step",
                              "evaluation", "step", "evaluation", "step", "evaluation",
                              "finished"]
    steps = [e[1] for e in events if e[0] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6] and all(e[2] == 6 for e in events if e[0] == "step")
    evaluations = [e for e in events if e[0] == "evaluation"]
    assert [e[1] for e in evaluations] == [3, 6]
    assert {"val_accuracy", "val_loss"} <= set(evaluations[0][2])
    decoding = next(e for e in events if e[:2] == ("phase", "decoding"))
    decoded = sum(e[1] for e in events if e[0] == "advance")
    assert decoded == decoding[2]


def test_a_linear_probe_reports_its_feature_extraction(synthetic_data, tiny_model_names,
                                                       tmp_path):
    config = build_config(data=str(synthetic_data), model=tiny_model_names["uni"],
                          pretrained=False, method="linear", shots=2, linear_epochs=3,
                          device="cpu", cache_dir=str(tmp_path / "cache"))
    with observing(RecordingObserver()) as seen:
        run_training(config)
    phases = [e[1] for e in seen.events if e[0] == "phase"]
    assert phases == ["decoding", "features", "training", "evaluation"]
    features_total = next(e[2] for e in seen.events if e[:2] == ("phase", "features"))
    start = seen.events.index(("phase", "features", features_total))
    extracted = 0
    for event in seen.events[start + 1:]:
        if event[0] != "advance":
            break
        extracted += event[1]
    assert extracted == features_total
    assert seen.events[0][0] == "planned" and seen.events[0][1] == 3  # 3 epochs of one batch


def test_without_an_observer_training_is_silent(synthetic_data, tiny_model_names, tmp_path,
                                                capsys):
    run_training(build_config(data=str(synthetic_data), model=tiny_model_names["uni"],
                              pretrained=False, method="lora", rank=2, shots=1, steps=2,
                              device="cpu", cache_dir=str(tmp_path / "cache")))
    captured = capsys.readouterr()
    assert "planned" not in captured.out + captured.err


def test_step_plan_says_which_rule_set_the_length():
    base = dict(data="x", model="uni", device="cpu")
    steps, why = step_plan(build_config(**base, method="lora", shots=4), 16)
    assert steps == 450 and "50 + 100 x 4" in why
    steps, why = step_plan(build_config(**base, method="lora", shots=4, steps=20), 16)
    assert steps == 20 and "--steps" in why
    steps, why = step_plan(build_config(**base, method="linear", linear_epochs=5,
                                        batch_size=32), 100)
    assert steps == 20 and "5 epochs x 4 batches" in why
    steps, _ = step_plan(build_config(data="x", model="clip-vit-b16", method="zero-shot"), 16)
    assert steps == 0
