"""Sweep YAML: validation errors name the option, expansion is deterministic, run ids are stable."""
from __future__ import annotations

import textwrap

import pytest

from cytotune.experiments import (chunk_runs, experiment_path, list_experiments, load_sweep,
                                  SweepConfig)
from cytotune.training.config import ConfigError

STUDY_ENV = {"CYTOTUNE_BCFC": "/data/bcfc", "CYTOTUNE_MLCC": "/data/mlcc",
             "CYTOTUNE_SIPAKMED": "/data/sipakmed", "CYTOTUNE_HICERVIX": "/data/hicervix"}


def minimal(**changes):
    values = {"name": "t", "datasets": {"a": {"source": "/data/a"}},
              "backbones": ["efficientnet-lite0"], "method": "linear", "seeds": [1],
              "lrs": [1e-3]}
    values.update(changes)
    return values


@pytest.fixture
def study_env(monkeypatch):
    for key, value in STUDY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CYTOTUNE_CACHE", raising=False)


def test_shipped_experiments_follow_the_study(study_env):
    assert {"experiment1_linear", "experiment2_lora_fewshot", "experiment3_data_fraction",
            "demo_sweep"} <= set(list_experiments())
    study_backbones = ["clip-vit-b16", "quilt", "biomedclip", "uni", "vit-b16"]
    study_datasets = ["bcfc", "mlcc", "sipakmed", "hicervix"]

    exp1 = load_sweep("experiment1_linear")
    runs = exp1.runs()
    assert exp1.backbones == study_backbones and list(exp1.datasets) == study_datasets
    assert exp1.method == ["linear"] and exp1.seeds == [1, 2, 3]
    assert {(r.shots, r.fraction) for r in runs} == {(None, None)}
    assert len(runs) == 5 * 4 * 3 * len(exp1.lrs)
    assert {r.config.data.source for r in runs} == set(STUDY_ENV.values())
    hicervix = [r for r in runs if r.dataset == "hicervix"]
    assert {r.config.data.layout for r in hicervix} == {"hicervix"}
    assert all(r.config.data.options == {"level": 3} for r in hicervix)

    exp2 = load_sweep("experiment2_lora_fewshot")
    runs = exp2.runs()
    assert exp2.backbones == study_backbones and list(exp2.datasets) == study_datasets
    assert exp2.shots == [1, 2, 4, 8, 16, 50] and exp2.seeds == [1, 2, 3]
    assert {(r.config.method, r.config.lora.rank, r.config.lora.targets) for r in runs} == {
        ("lora", 2, ("q", "v"))}
    assert len(runs) == 5 * 4 * 6 * 3 * len(exp2.lrs)

    exp3 = load_sweep("experiment3_data_fraction")
    runs = exp3.runs()
    assert exp3.backbones == ["clip-vit-l14"] and list(exp3.datasets) == ["hicervix"]
    assert exp3.fractions == [float(p) for p in range(5, 101, 5)]
    assert {(r.config.lora.rank, r.config.lora.targets) for r in runs} == {(16, ("q", "k", "v", "o"))}
    assert {r.config.data.options["level"] for r in runs} == {3}

    for sweep in (exp1, exp2, exp3, load_sweep("demo_sweep")):
        assert {r.config.optim.batch_size for r in sweep.runs()} == {32}
        assert experiment_path(sweep.name).is_file()


def test_missing_environment_variable_is_named(monkeypatch):
    for key in STUDY_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="CYTOTUNE_BCFC") as err:
        load_sweep("experiment1_linear")
    assert "datasets.bcfc.source" in str(err.value)


def test_environment_variables_and_defaults_expand(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_DATA", str(tmp_path / "x"))
    monkeypatch.delenv("MY_CACHE", raising=False)
    sweep = load_sweep(minimal(datasets={"a": {"source": "${MY_DATA}/images"}},
                               base={"cache_dir": "${MY_CACHE:-/tmp/default-cache}"}))
    run = sweep.runs()[0]
    assert run.config.data.source == str(tmp_path / "x" / "images")
    assert run.config.cache_dir == "/tmp/default-cache"
    assert sweep.datasets["a"].source == "${MY_DATA}/images"  # kept as written


@pytest.mark.parametrize("changes, message", [
    ({"colour": "red"}, "unknown option.*colour"),
    ({"datasets": {"a": {"source": "/x", "layuot": "mlcc"}}}, "datasets.a.layuot"),
    ({"datasets": {"a": {"source": "/x", "layout": "nope"}}}, "datasets.a.layout.*unknown layout"),
    ({"datasets": {"a": {"layout": "mlcc"}}}, "datasets.a.source is required"),
    ({"base": {"optim": {"lrr": 1}}}, "base.optim.lrr"),
    ({"base": {"optim": {"batch_size": "big"}}}, "base.optim.batch_size.*integer"),
    ({"base": {"lora": {"rank": 2.5}}}, "base.lora.rank"),
    ({"base": {"seed": 3}}, "base.seed.*seeds"),
    ({"base": {"model": {"name": "uni"}}}, "base.model.name.*backbones"),
    ({"base": {"out": "runs/{dataset}"}}, "base.out.*run_id"),
    ({"base": {"out": "runs/{run_id}/{colour}"}}, "base.out.*colour"),
    ({"seeds": ["one"]}, r"seeds\[0\].*integer"),
    ({"seeds": [1, 1]}, "seeds: repeated"),
    ({"shots": [0, 2]}, r"shots\[0\]"),
    ({"shots": [2, "many"]}, r"shots\[1\]"),
    ({"shots": [1], "fractions": [50]}, "either shots or fractions"),
    ({"fractions": [0, 50]}, r"fractions\[0\]"),
    ({"fractions": [150]}, r"fractions\[0\]"),
    ({"lrs": [-1e-3]}, r"lrs\[0\]"),
    ({"lrs": ["fast"]}, r"lrs\[0\].*number"),
    ({"method": ["linear", "lora"], "lrs": {"linear": [1e-3]}}, "lrs.*lora"),
    ({"method": "finetune"}, "method.*finetune"),
    ({"backbones": ["not-a-model"]}, r"backbones\[0\].*not-a-model"),
    ({"backbones": []}, "backbones is required"),
    ({"name": "has space"}, "name"),
])
def test_validation_errors_name_the_option(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(minimal(**changes))


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ndatasets: {a: /x}\nbackbones: [efficientnet-lite0]\nseeds: [1, x]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: seeds\[1\]"):
        load_sweep(path)
    with pytest.raises(ConfigError, match="neither a file nor a shipped experiment"):
        load_sweep(str(tmp_path / "missing.yaml"))


def test_grid_expansion_order_and_stable_ids(tmp_path):
    text = textwrap.dedent("""
        name: grid
        datasets:
          a: {source: /data/a}
          b: {source: /data/b, layout: mlcc}
        backbones: [efficientnet-lite0, vit-b16]
        method: [linear, lora]
        shots: [1, all]
        seeds: [1, 2]
        lrs: {linear: [1e-3, 1e-2], lora: [1e-4]}
        base: {optim: {batch_size: 16}, out: "runs/{sweep}/{dataset}/{sample}-{run_id}"}
    """)
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    sweep = load_sweep(path)
    runs = sweep.runs()
    assert len(runs) == 2 * 2 * (2 * 2 * 2 + 2 * 2 * 1)
    # deterministic: the same order and ids on every load
    again = load_sweep(path).runs()
    assert [r.run_id for r in runs] == [r.run_id for r in again]
    assert len({r.run_id for r in runs}) == len(runs)
    # grouped by (dataset, backbone); linear runs of a group are consecutive
    groups = [(r.dataset, r.backbone) for r in runs]
    assert groups == sorted(groups, key=lambda g: (["a", "b"].index(g[0]),
                                                   ["efficientnet-lite0", "vit-b16"].index(g[1])))
    chunks = chunk_runs(runs)
    linear_chunks = [c for c in chunks if c[0].method == "linear"]
    assert len(linear_chunks) == 4 and all(len(c) == 8 for c in linear_chunks)
    assert all(len(c) == 1 for c in chunks if c[0].method == "lora")
    assert [r.run_id for c in chunks for r in c] == [r.run_id for r in runs]
    # per-method lr grids, shots 'all' -> None, the out pattern filled
    assert {r.lr for r in runs if r.method == "lora"} == {1e-4}
    assert {r.shots for r in runs} == {1, None}
    first = runs[0]
    assert first.config.out == f"runs/grid/a/1shot-{first.run_id}"
    assert first.config.overwrite is True
    assert first.config.optim.batch_size == 16 and first.config.data.layout is None
    assert runs[-1].config.data.layout == "mlcc"


def test_run_id_ignores_where_a_run_executes_but_not_what_it_computes():
    base = load_sweep(minimal()).runs()[0].run_id
    same = [minimal(base={"device": "cuda:1"}), minimal(base={"cache_dir": "/elsewhere"}),
            minimal(base={"num_workers": 7, "out": "somewhere/{run_id}"})]
    for values in same:
        assert load_sweep(values).runs()[0].run_id == base
    different = [minimal(lrs=[2e-3]), minimal(seeds=[2]), minimal(name="other"),
                 minimal(datasets={"a": {"source": "/data/other"}}),
                 minimal(datasets={"renamed": {"source": "/data/a"}}),
                 minimal(base={"optim": {"weight_decay": 0.5}}),
                 minimal(backbones=["vit-b16"]), minimal(shots=[4])]
    ids = {load_sweep(values).runs()[0].run_id for values in different}
    assert base not in ids and len(ids) == len(different)


def test_overrides_and_round_trip(monkeypatch):
    sweep = load_sweep(minimal(), overrides={"seeds": [1, 2, 3], "base.optim.steps": 5})
    assert sweep.seeds == [1, 2, 3]
    assert {r.config.optim.steps for r in sweep.runs()} == {5}
    again = SweepConfig.from_dict(sweep.to_dict())
    assert [r.run_id for r in again.runs()] == [r.run_id for r in sweep.runs()]
    with pytest.raises(ConfigError, match="base.optim.stepz"):
        load_sweep(minimal(), overrides={"base.optim.stepz": 5})


def test_pack_size_chunks_lora_runs_and_is_validated(tmp_path):
    values = {"name": "p", "datasets": {"a": {"source": "/data/a"}},
              "backbones": ["efficientnet-lite0", "vit-b16"], "method": ["linear", "lora"],
              "shots": [1, 2], "seeds": [1, 2], "lrs": [1e-3], "pack_size": 3}
    sweep = load_sweep(values)
    assert sweep.pack_size == 3 and load_sweep(sweep.to_dict()).pack_size == 3
    runs = sweep.runs()
    chunks = chunk_runs(runs, pack_size=sweep.pack_size)
    lora = [c for c in chunks if c[0].method == "lora"]
    # 4 LoRA runs per backbone: packs of 3 and 1, never mixing backbones
    assert sorted(len(c) for c in lora) == [1, 1, 3, 3]
    assert all(len({r.backbone for r in c}) == 1 for c in chunks)
    assert [len(c) for c in chunks if c[0].method == "linear"] == [4, 4]
    assert sorted(r.run_id for c in chunks for r in c) == sorted(r.run_id for r in runs)
    assert all(len(c) == 1 for c in chunk_runs(runs) if c[0].method == "lora")
    with pytest.raises(ConfigError, match="pack_size"):
        load_sweep({**values, "pack_size": 0})
    from cytotune.experiments import run_sweep
    with pytest.raises(ValueError, match="pack_size"):
        run_sweep(values, tmp_path / "s.sqlite", pack_size=0, progress=False)
