"""The benchmark runs every case at a tiny size and reports figures for both ways of working
(the figures themselves are measured by `cytotune bench`, not asserted here)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cytotune.adapters import LoRAConfig, apply_lora
from cytotune.benchmark.reference import DenseLoRALinear, reference_model
from cytotune.cli import main


def test_bench_command_writes_every_case(synthetic_data, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--data", str(synthetic_data), "--model", "uni-tiny", "--seeds", "1,2",
                 "--lrs", "1e-3,1e-2", "--linear-epochs", "3", "--shots", "2", "--lora-steps", "3",
                 "--pack", "2", "--baseline-workers", "0", "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    cases = figures["cases"]
    assert set(cases) == {"features", "linear", "lora", "packed"}
    assert cases["features"]["images"] == 48
    for key in ("plain_forward", "cytotune", "baseline"):
        assert cases["features"][key]["images_per_s"] > 0
        assert cases["features"][key]["memory"]["peak_bytes"] > 0
    assert cases["linear"]["runs"] == 4 and cases["linear"]["speedup_vs_baseline"] > 0
    assert 0 <= cases["lora"]["cytotune"]["data_wait_fraction"] < 1
    assert cases["lora"]["utilisation"]["flops_per_step"] > 0
    assert cases["lora"]["baseline"]["validation_s"] > 0  # it validated after every step
    # packing changes the speed, never the result
    assert cases["packed"]["max_test_accuracy_difference"] == 0


def test_bench_precision_applies_to_cytotune_only(synthetic_data, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(synthetic_data), "--model", "uni-tiny", "--cases",
                 "features,linear,precision", "--seeds", "1,2", "--lrs", "1e-2",
                 "--linear-epochs", "2", "--shots", "2", "--lora-steps", "2", "--precision",
                 "bf16", "--baseline-workers", "0", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["environment"]["precision"] == "bf16"
    assert figures["environment"]["baseline_precision"] == "fp32"
    assert figures["settings"]["precision"] == "bf16"
    assert figures["cases"]["linear"]["runs"] == 2
    compared = figures["cases"]["precision"]  # cytotune fp32 vs bf16, each run's accuracy both ways
    assert compared["linear"]["runs"] == 2 and len(compared["linear"]["bf16"]["test_accuracy"]) == 2
    assert compared["lora"]["runs"] == 1 and compared["lora"]["bf16_speedup"] > 0
    assert 0 <= compared["linear"]["max_test_accuracy_difference"] <= 1


def test_bench_memory_case_counts_the_lora_parameters(synthetic_data, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(synthetic_data), "--model", "uni-tiny", "--cases",
                 "memory", "--rank", "4", "--targets", "q,k,v,o", "--batch-size", "4",
                 "--json", str(out)]) == 0
    case = json.loads(out.read_text())["cases"]["memory"]
    assert case["batch"] == 4 and case["rank"] == 4 and case["targets"] == ["q", "k", "v", "o"]
    assert case["lora_parameters"] > 0 and len(case["step_s"]) == case["steps"] == 2
    assert case["memory"]["peak_bytes"] >= case["resident_before_bytes"] > 0


def test_unknown_case_is_named(synthetic_data, tmp_path):
    assert main(["bench", "--data", str(synthetic_data), "--cases", "features,warp",
                 "--json", str(tmp_path / "b.json")]) == 2


def test_reference_model_computes_the_same_function_the_dense_way():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6))
    apply_lora(model, LoRAConfig(rank=2, targets=("0",)))
    with torch.no_grad():
        for p in model[0].lora_B.values():
            p.normal_()
    x = torch.randn(3, 4)
    expected = model(x)
    with reference_model(model):
        assert isinstance(model[0], DenseLoRALinear)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert not isinstance(model[0], DenseLoRALinear)


@pytest.mark.slow
def test_bench_on_mlcc_features_case(mlcc_root, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(mlcc_root), "--layout", "mlcc", "--model", "uni-tiny",
                 "--cases", "features", "--baseline-workers", "0", "--json", str(out)]) == 0
    case = json.loads(out.read_text())["cases"]["features"]
    assert case["images"] == 950


def test_bench_heads_script_runs_and_prints_both_times():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_heads.py"
    done = subprocess.run([sys.executable, str(script), "--train", "20", "--val", "8", "--dim", "6",
                           "--epochs", "2", "--batch-size", "8"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "15 heads, 6 steps each" in done.stdout and "one by one" in done.stdout


def test_bench_cache_check_case_times_a_cached_linear_probe_per_verification_mode(
        synthetic_data, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(synthetic_data), "--model", "uni-tiny", "--cases",
                 "cache_check", "--check-repeats", "1", "--linear-epochs", "2",
                 "--json", str(out)]) == 0
    case = json.loads(out.read_text())["cases"]["cache_check"]
    assert set(case["median_s"]) == {"off", "changed", "always"}
    assert all(len(times) == 1 for times in case["wall_s"].values())
    assert case["entries"] > 0 and case["cache_bytes"]["images"] > 0
    assert case["full_hash_s"] > 0 and "changed_overhead" in case
    assert case["check_s"]["off"][0] < case["check_s"]["always"][0]
    assert 0 < case["check_fraction"]["always"] < 1


def test_training_step_flops_scale_exactly_with_the_batch(synthetic_data, tmp_path):
    """The FLOP count is taken on one image and multiplied: it must equal a direct count."""
    from torch.utils.flop_counter import FlopCounterMode

    from cytotune.benchmark.cases import Bench, BenchSettings, lora_classifier, training_step_flops

    bench = Bench(BenchSettings(data=str(synthetic_data), model="uni-tiny", device="cpu"),
                  tmp_path)
    config = bench.config(method="lora", seed=1)
    model = lora_classifier(config, 2, 0)
    size = model.backbone.preprocessing.image_size
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(3, 3, size, size)).sum().backward()
    assert training_step_flops(bench, config, 3) == pytest.approx(counter.get_total_flops())


def test_bench_keeps_the_cases_it_finished_when_a_later_one_fails(synthetic_data, tmp_path,
                                                                  monkeypatch):
    """A GPU lease or a time limit can stop the bench between cases: the JSON holds every case
    finished so far, marked incomplete, and a finished bench says complete."""
    from cytotune.benchmark import cases as bench_cases

    def broken(bench):
        raise RuntimeError("stopped by the test")

    monkeypatch.setitem(bench_cases.CASE_FUNCTIONS, "memory", broken)
    out = tmp_path / "bench.json"
    with pytest.raises(RuntimeError, match="stopped by the test"):
        main(["bench", "--data", str(synthetic_data), "--model", "uni-tiny", "--cases",
              "lora,memory", "--shots", "2", "--lora-steps", "2", "--baseline-workers", "0",
              "--json", str(out)])
    figures = json.loads(out.read_text())
    assert figures["complete"] is False and set(figures["cases"]) == {"lora"}
    assert main(["bench", "--data", str(synthetic_data), "--model", "uni-tiny", "--cases", "lora",
                 "--shots", "2", "--lora-steps", "2", "--baseline-workers", "0",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["complete"] is True


def test_bench_lora_case_without_the_baseline(synthetic_data, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(synthetic_data), "--model", "uni-tiny", "--cases", "lora",
                 "--shots", "2", "--lora-steps", "2", "--skip-baseline",
                 "--json", str(out)]) == 0
    case = json.loads(out.read_text())["cases"]["lora"]
    assert case["baseline"] is None and case["speedup_vs_baseline"] is None
    assert case["cytotune"]["train_images_per_s"] > 0 and case["utilisation"]["flops_per_step"] > 0
