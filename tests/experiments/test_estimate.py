"""Costs known before the work (issue 32): planned work per run, a sweep's estimate from the
store's past runs or a cached per-machine calibration, and the GPU label."""
from __future__ import annotations

from pathlib import Path

import pytest

from cytotune.experiments import calibrate as cal
from cytotune.experiments.estimate import estimate_sweep, rates_from_store
from cytotune.experiments.store import ResultStore
from cytotune.experiments.sweep import load_sweep
from cytotune.experiments.work import plan_work
from experiments_helpers import hand_record


def _runs(source: Path, methods=("linear", "lora"), shots=(2, 8), device="cpu", steps=30):
    sweep = load_sweep({"name": "e", "datasets": {"d": {"source": str(source)}},
                        "backbones": ["efficientnet-lite0"], "method": list(methods),
                        "shots": list(shots), "seeds": [1], "lrs": [1e-3],
                        "base": {"model": {"image_size": 64}, "device": device,
                                 "optim": {"batch_size": 8, "steps": steps}}})
    return sweep.runs()


def test_planned_work_is_steps_x_batch_and_images_to_embed_once(tmp_path):
    runs = _runs(tmp_path)
    source = runs[0].config.data.source
    work = {(w.method, r.shots): w for w, r in zip(plan_work(runs, {source: 100}), runs)}
    # 2 shots x 4 classes = 8 training images: batch 8; 8 shots: 32 images, batch 8
    assert work[("lora", 2)].train_images == 30 * 8 and work[("lora", 8)].train_images == 30 * 8
    assert work[("lora", 2)].eval_images == 40  # 20 % validation + 20 % test of 100
    first, second = work[("linear", 2)], work[("linear", 8)]
    assert first.embed_images == 40 + 8  # validation, test and its training sample
    assert second.embed_images == 32  # only training images not seen yet
    cached = plan_work(runs, {source: 100}, cached=[(source, "efficientnet-lite0", 64)])
    assert [w.embed_images for w in cached if w.method == "linear"] == [0, 0]
    assert all(w.features_cached for w in cached if w.method == "linear")
    assert work[("lora", 8)].weight > 10 * second.weight  # what the ETA weighs runs by


def _timed(run_id, method, shots, total, extract=0.0, steps=30, batch=8):
    record = hand_record(run_id, backbone="efficientnet-lite0", method=method, shots=shots)
    record["config"] = {"method": method, "shots": shots, "seed": 1,
                        "model": {"name": "efficientnet-lite0", "image_size": 64},
                        "optim": {"lr": 1e-3, "steps": steps, "batch_size": batch}}
    record["timings"] = {"decode_s": 0.1, "feature_extraction_s": extract,
                         "training_s": total - extract, "total_s": total}
    return record


def test_the_estimate_comes_from_the_store_past_runs_when_it_has_them(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    # LoRA: 2 s overhead + 0.01 s per training image; 30 steps x batch 8 (2 shots) or x 8 (8)
    store.insert(_timed("a", "lora", 2, 2 + 0.01 * 30 * 8))
    store.insert(_timed("b", "lora", 8, 2 + 0.01 * 60 * 8, steps=60))
    store.insert(_timed("c", "linear", 2, 1.5, extract=0.0))
    rates = rates_from_store(store.records(full=True))
    lora = rates[("efficientnet-lite0", "lora")]
    assert lora.overhead_s == pytest.approx(2.0, abs=1e-6)
    assert lora.per_unit_s == pytest.approx(0.01, rel=1e-6)
    assert "store: 2 past runs" in lora.basis

    def no_calibration(*args, **kwargs):
        raise AssertionError("the store covers LoRA: nothing is timed")

    runs = _runs(tmp_path, methods=("lora",), shots=(2, 8), steps=100)
    est = estimate_sweep(runs, {runs[0].config.data.source: 100},
                         records=store.records(full=True), calibrate_fn=no_calibration)
    assert est.seconds == pytest.approx(2 * (2 + 0.01 * 100 * 8))
    assert "estimated on cpu" in est.lines()[0]
    assert "[store: 2 past runs]" in est.lines()[1]


def test_without_past_runs_a_calibration_is_used_and_says_so(tmp_path):
    calls = []

    def fake(backbone, kind, image_size, device, batch=32, cache=None, notes=None):
        calls.append((backbone, kind, image_size, device))
        return cal.Calibration(per_image_s=0.01, build_s=1.0, forward_per_image_s=0.002,
                               cached=len(calls) > 1)

    runs = _runs(tmp_path)
    est = estimate_sweep(runs, {runs[0].config.data.source: 100}, calibrate_fn=fake)
    assert calls == [("efficientnet-lite0", "embed", 64, "cpu"),
                     ("efficientnet-lite0", "lora", 64, "cpu")]
    lines = est.lines()
    assert "calibration, measured now on cpu" in lines[1]
    assert "calibration, cached on cpu" in lines[2]
    lora = 2 * (1.0 + 0.01 * 240 + 0.002 * 40)
    linear = 1.0 + 0.3 + 0.01 * (48 + 32)  # one backbone build for the group
    assert est.seconds == pytest.approx(lora + linear)


def test_an_estimate_for_a_gpu_is_labelled_as_such(tmp_path):
    def fake(*args, **kwargs):
        return cal.Calibration(0.001, 0.5, 0.0005)

    runs = _runs(tmp_path, device="cuda")
    est = estimate_sweep(runs, {runs[0].config.data.source: 100}, calibrate_fn=fake)
    assert est.device == "cuda" and "estimated on cuda" in est.lines()[0]
    assert "(GPU)" in est.lines()[0]


def test_the_calibration_is_cached_per_key_and_reused(tmp_path, monkeypatch):
    measured = []

    def fake_measure(backbone, kind, image_size, device, batch):
        measured.append((backbone, kind, image_size))
        return cal.Calibration(0.02, 1.0, 0.005)

    monkeypatch.setattr(cal, "measure", fake_measure)
    first = cal.calibrate("efficientnet-lite0", "lora", 64, "cpu", cache=tmp_path)
    again = cal.calibrate("efficientnet-lite0", "lora", 64, "cpu", cache=tmp_path)
    other = cal.calibrate("efficientnet-lite0", "lora", 128, "cpu", cache=tmp_path)
    assert measured == [("efficientnet-lite0", "lora", 64), ("efficientnet-lite0", "lora", 128)]
    assert not first.cached and again.cached and not other.cached
    assert again.per_image_s == 0.02
    import torch

    key = cal.calibration_key("efficientnet-lite0", "lora", 64, "cpu")
    assert f"torch {torch.__version__}" in key and "64px" in key and "|cpu|" in key
    with pytest.raises(LookupError):
        cal.calibrate("vit-b16", "embed", 224, "cpu", cache=tmp_path, measure_now=False)


def test_an_unwritable_calibration_folder_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(cal, "measure", lambda *a: cal.Calibration(0.02, 1.0, 0.005))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    notes: list[str] = []
    result = cal.calibrate("efficientnet-lite0", "embed", 64, "cpu", cache=blocker / "sub",
                           notes=notes)
    assert result.per_image_s == 0.02 and len(notes) == 1
    assert "calibration not cached" in notes[0]


def test_a_real_calibration_is_short(tmp_path):
    result = cal.calibrate("efficientnet-lite0", "lora", 32, "cpu", batch=4, cache=tmp_path)
    assert result.per_image_s > 0 and result.forward_per_image_s > 0
    assert (tmp_path / cal.CALIBRATION_FILE).is_file()


def test_the_cli_dry_run_prints_the_estimate_and_writes_only_the_calibration_cache(
        tmp_path, synthetic_data, tiny_model_names, monkeypatch, capsys):
    from cytotune.cli import main

    calibration = tmp_path / "calibration"
    monkeypatch.setenv("CYTOTUNE_CALIBRATION_DIR", str(calibration))
    work = tmp_path / "work"
    work.mkdir()
    sweep = work / "s.yaml"
    sweep.write_text(f"name: s\ndatasets:\n  d: {{source: {synthetic_data}}}\n"
                     f"backbones: [{tiny_model_names['uni']}]\nmethod: [linear, lora]\n"
                     f"shots: [2]\nseeds: [1]\nlrs: {{linear: [1.0e-3], lora: [1.0e-3]}}\n"
                     f"base: {{model: {{pretrained: false}}, optim: {{steps: 2}}, device: cpu, "
                     f"cache_dir: {work / 'cache'}}}\n")
    store = work / "r.sqlite"
    args = ["sweep", str(sweep), "--store", str(store), "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "estimated time for the 2 runs to do" in out and "estimated on cpu" in out
    assert out.count("calibration, measured now on cpu") == 2
    assert sorted(p.name for p in work.iterdir()) == ["s.yaml"]  # no store, no cache folder
    assert (calibration / "calibration.json").is_file()
    assert main(args) == 0
    assert capsys.readouterr().out.count("calibration, cached on cpu") == 2
    assert main([*args, "--no-estimate"]) == 0
    assert "estimated time" not in capsys.readouterr().out


def test_a_backbone_that_cannot_be_timed_is_a_note_not_a_crash(tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("open_clip is not installed")

    runs = _runs(tmp_path, methods=("lora",))
    est = estimate_sweep(runs, {runs[0].config.data.source: 100}, calibrate_fn=broken)
    assert est.groups == [] and "calibration failed: RuntimeError: open_clip" in est.lines()[-1]
