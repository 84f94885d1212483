"""Vision-language methods in sweeps: zero-shot runs once per (data set, backbone), LoRA with
text-initialised heads and text-encoder LoRA are grid points like any other, and the report
draws zero-shot as the 0-shot point."""
from __future__ import annotations

import json

import pytest

from cytotune.experiments import ResultStore, load_sweep, make_report, run_sweep
from cytotune.experiments.report import shots_points
from cytotune.training.config import ConfigError
from experiments_helpers import small_sweep


def _grid(**changes):
    values = {"name": "vl", "datasets": {"a": {"source": "/data/a"}, "b": {"source": "/data/b"}},
              "backbones": ["clip-vit-b16", "quilt"], "method": ["zero-shot", "lora"],
              "shots": [1, 2, 4], "seeds": [1, 2, 3], "lrs": {"lora": [1e-4, 1e-3]}}
    values.update(changes)
    return values


def test_zero_shot_is_planned_once_per_dataset_and_backbone():
    runs = load_sweep(_grid()).runs()
    zero = [r for r in runs if r.method == "zero-shot"]
    lora = [r for r in runs if r.method == "lora"]
    assert len(zero) == 2 * 2 and len(lora) == 2 * 2 * 3 * 3 * 2
    assert {(r.shots, r.fraction, r.seed) for r in zero} == {(None, None, 1)}
    assert len({(r.dataset, r.backbone) for r in zero}) == 4
    # a single lr grid for every method plans zero-shot with the first lr only
    runs = load_sweep(_grid(lrs=[1e-4, 1e-3])).runs()
    assert {r.lr for r in runs if r.method == "zero-shot"} == {1e-4}
    assert len([r for r in runs if r.method == "zero-shot"]) == 4
    # methods that train still need their own grid
    with pytest.raises(ConfigError, match="no learning rates for method"):
        load_sweep(_grid(method=["zero-shot", "lora", "linear"]))


def test_text_options_in_a_sweep_base_reach_every_run():
    runs = load_sweep(_grid(method=["lora"], base={"head_init": "text", "encoder": "both",
                                                   "data": {"prompts": {"templates": ["{}"]}}})
                      ).runs()
    assert {(r.config.head_init, r.config.encoder) for r in runs} == {("text", "both")}
    assert {tuple(r.config.data.prompts.templates) for r in runs} == {("{}",)}
    with pytest.raises(ConfigError, match="encoder"):
        load_sweep(_grid(method=["linear"], lrs=None, base={"encoder": "text"})).runs()


def test_sweep_with_zero_shot_and_text_lora_runs_and_reports(synthetic_data, tiny_model_names,
                                                             tmp_path):
    values = small_sweep("vl", {"gen": synthetic_data}, [tiny_model_names["clip-vit-b16"]],
                         tmp_path / "cache", method=["zero-shot", "lora"], shots=[1, 2],
                         seeds=[1], lrs={"lora": [1e-3]})
    values["base"]["encoder"] = "text"  # LoRA on the text tower; zero-shot uses it as it is
    store = ResultStore(tmp_path / "vl.sqlite")
    summary = run_sweep(values, store, progress=False)
    assert summary.failed == [] and len(summary.completed) == 1 + 2
    records = store.records(full=True)
    trainable = [json.loads(t) for t in records[records["method"] == "lora"]["trainable_json"]]
    assert trainable and all(t["text"] > 0 and t["backbone"] == 0 for t in trainable)
    zero = records[records["method"] == "zero-shot"]
    assert len(zero) == 1 and zero["shots"].isna().all()
    report = make_report(store, tmp_path / "report", figure_metrics=("accuracy",))
    points = shots_points(report.summary, "vl", "lora", "accuracy")
    assert list(points["shots"]) == [0, 1, 2]
    assert points.iloc[0]["mean"] == pytest.approx(100 * float(zero["test_accuracy"].iloc[0]))
    assert "shots__vl__lora__accuracy.png" in {p.name for p in report.figures}


def test_shipped_vision_language_sweep(monkeypatch):
    for key in ("BCFC", "MLCC", "SIPAKMED", "HICERVIX"):
        monkeypatch.setenv(f"CYTOTUNE_{key}", f"/data/{key.lower()}")
    monkeypatch.delenv("CYTOTUNE_BIOMEDBERT", raising=False)
    sweep = load_sweep("vision_language_fewshot")
    runs = sweep.runs()
    assert sweep.backbones == ["clip-vit-b16", "quilt", "biomedclip"]
    zero = [r for r in runs if r.method == "zero-shot"]
    assert len(zero) == 3 * 4 and len(runs) == len(zero) + 3 * 4 * 6 * 3 * 4
    assert {r.config.encoder for r in runs if r.method == "lora"} == {"both"}
    assert {r.config.model.tokenizer for r in runs} == {""}  # "": each card's own tokenizer
