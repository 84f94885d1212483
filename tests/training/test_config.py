import pytest

from cytotune.api import build_config
from cytotune.training.config import ConfigError, OptimConfig, TrainConfig


def test_yaml_roundtrip(tmp_path):
    cfg = build_config(data="/d", model="clip-vit-b16", method="lora", rank=16, targets="q,k,v,o",
                       shots=4, lr=1e-3)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = TrainConfig.from_yaml(path)
    assert again == cfg
    assert again.lora.targets == ("q", "k", "v", "o")
    assert again.lora.rank == 16


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="optim.lrr"):
        TrainConfig.from_dict({"optim": {"lrr": 1}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="lora.rank"):
        TrainConfig.from_dict({"lora": {"rank": "two"}})


def test_yaml_scientific_notation_string_becomes_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: /x}\noptim: {lr: 1e-3}\n")
    assert TrainConfig.from_yaml(path).optim.lr == pytest.approx(1e-3)


def test_shots_and_fraction_are_exclusive():
    with pytest.raises(ConfigError, match="either shots or fraction"):
        build_config(data="/d", shots=2, fraction=50.0).validate()


def test_steps_follow_the_study_rule_for_few_shot():
    assert OptimConfig().resolve_steps(num_train=16, shots=4) == 450
    assert OptimConfig(steps=7).resolve_steps(16, 4) == 7
    assert OptimConfig(epochs=2).resolve_steps(num_train=64, shots=None) == 4
    assert OptimConfig().resolve_steps(num_train=64, shots=None) == 20


@pytest.mark.parametrize("method", ["linear", "full"])
def test_text_encoder_choice_needs_lora(method):
    # full fine-tuning trains an image-feature head: a text-tower choice would be saved as a
    # CLIP classifier that predict then applies to normalised features
    with pytest.raises(ConfigError, match="encoder='text'.*use method 'lora'"):
        build_config(data="x", method=method, encoder="text").validate()
    build_config(data="x", method="lora", encoder="both").validate()
    build_config(data="x", method="zero-shot", encoder="both").validate()


# ---- item 13: every numeric option is checked before any work --------------------------------
BAD_VALUES = [
    ({"optim": {"batch_size": 0}}, "optim.batch_size"),
    ({"optim": {"steps": -5}}, "optim.steps"),
    ({"optim": {"steps": 0}}, "optim.steps"),
    ({"optim": {"lr": "nan"}}, "optim.lr"),
    ({"optim": {"lr": float("inf")}}, "optim.lr"),
    ({"optim": {"lr": 0}}, "optim.lr"),
    ({"optim": {"weight_decay": -1}}, "optim.weight_decay"),
    ({"optim": {"weight_decay": "nan"}}, "optim.weight_decay"),
    ({"optim": {"linear_epochs": 0}}, "optim.linear_epochs"),
    ({"optim": {"val_every": 0}}, "optim.val_every"),
    ({"optim": {"epochs": 0}}, "optim.epochs"),
    ({"optim": {"epochs": "inf"}}, "optim.epochs"),
    ({"optim": {"warmup_fraction": 1.5}}, "optim.warmup_fraction"),
    ({"optim": {"warmup_fraction": -0.1}}, "optim.warmup_fraction"),
    ({"num_workers": -1}, "num_workers"),
    ({"seed": -1}, "seed"),
    ({"shots": 0}, "shots"),
    ({"fraction": "nan"}, "fraction"),
    ({"model": {"image_size": 0}}, "model.image_size"),
    ({"data": {"split_seed": -2}}, "data.split_seed"),
    ({"data": {"val_fraction": 1.0}}, "data.val_fraction"),
    ({"data": {"test_fraction": -0.2}}, "data.test_fraction"),
    ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, "val_fraction \\+ data.test_fraction"),
    ({"lora": {"rank": 0}}, "rank"),
    ({"lora": {"alpha": "nan"}}, "alpha"),
    ({"finetune": {"backbone_lr": "nan"}}, "finetune.backbone_lr"),
    # issue 31: a finite but absurd rate trained, overflowed and failed after training
    ({"optim": {"lr": 5}}, "optim.lr must be > 0 and <= 1"),
    ({"optim": {"lr": 1e300}}, "optim.lr must be > 0 and <= 1"),
    ({"finetune": {"backbone_lr": 2.0}}, "finetune.backbone_lr must be > 0 and <= 1"),
    ({"finetune": {"layer_decay": 0}}, "finetune.layer_decay"),
    ({"finetune": {"train_blocks": 0}}, "finetune.train_blocks"),
]


@pytest.mark.parametrize("values,option", BAD_VALUES,
                         ids=[o.split(" ")[0] + "=" + str(v) for v, o in BAD_VALUES])
def test_each_bad_numeric_option_is_named(values, option):
    values = {**values, "data": {"source": "/d", **values.get("data", {})}}
    config = TrainConfig.from_dict(values)
    with pytest.raises(ConfigError, match=option):
        config.validate()


def test_good_values_at_the_edges_pass():
    TrainConfig.from_dict({"data": {"source": "/d", "val_fraction": 0.0}, "num_workers": 0,
                           "seed": 0, "optim": {"weight_decay": 0, "warmup_fraction": 0,
                                                "steps": 1, "linear_epochs": 1, "val_every": 1},
                           "fraction": 100}).validate()


def test_numbers_set_in_python_are_checked_too():
    config = TrainConfig.from_dict({"data": {"source": "/d"}})
    config.optim.batch_size = 2.5
    with pytest.raises(ConfigError, match="optim.batch_size must be a whole number"):
        config.validate()


def test_malformed_yaml_is_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: /x}\noptim:\n  lr: [1e-3\n  steps: 4\n")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_yaml(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:")
    assert f"{path}:4:" in message or f"{path}:3:" in message


def test_python_tag_in_yaml_is_refused_with_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: /x}\nseed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match=rf"{path}:2:7: .*python/object.*plain YAML only") as info:
        TrainConfig.from_yaml(path)
    assert "\n" not in str(info.value)


# ---- item 5: one documented rule for the linear probe's length --------------------------------
def test_linear_length_rule():
    assert OptimConfig().linear_steps(64) == 200 * 2  # default 200 epochs of batch 32
    assert OptimConfig(linear_epochs=3, batch_size=8).linear_steps(20) == 9
    assert OptimConfig(steps=7, linear_epochs=3).linear_steps(20) == 7  # steps win


def test_linear_run_with_steps_and_linear_epochs_warns(caplog):
    import logging

    from cytotune.training.methods.linear import _WARNED, warn_unused_length

    _WARNED.clear()
    with caplog.at_level(logging.INFO, logger="cytotune"):
        warn_unused_length(OptimConfig(steps=30, linear_epochs=100))
        warn_unused_length(OptimConfig(steps=30, linear_epochs=100))
        warn_unused_length(OptimConfig(steps=30))
        warn_unused_length(OptimConfig(epochs=5))
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records[0][0] == "WARNING" and "linear_epochs=100 is not used" in records[0][1]
    assert records[1][0] == "INFO"  # a sweep does not repeat it on the console per run
    assert len(records) == 3 and "optim.epochs=5 is not used" in records[2][1]


def test_shipped_sweeps_carry_no_dead_length_option():
    from cytotune.experiments.catalog import experiment_path, list_experiments
    from cytotune.training.config import load_yaml_file

    for name in list_experiments():
        values = load_yaml_file(experiment_path(name))
        optim = (values.get("base") or {}).get("optim") or {}
        methods = values.get("method", "linear")
        if "linear" in (methods if isinstance(methods, list) else [methods]):
            assert not ("steps" in optim and "linear_epochs" in optim), name


def test_explicit_default_linear_epochs_keeps_the_run_id():
    from cytotune.experiments.sweep import compute_run_id
    from cytotune.experiments.sweep_fields import DatasetSpec

    spec = DatasetSpec(source="/d")
    implicit = TrainConfig.from_dict({"data": {"source": "/d"}})
    explicit = TrainConfig.from_dict({"data": {"source": "/d"}, "optim": {"linear_epochs": 200}})
    other = TrainConfig.from_dict({"data": {"source": "/d"}, "optim": {"linear_epochs": 100}})
    ids = [compute_run_id("s", "d", spec, c) for c in (implicit, explicit, other)]
    assert ids[0] == ids[1] != ids[2]


def test_a_learning_rate_of_one_is_the_largest_accepted():
    TrainConfig.from_dict({"data": {"source": "/d"}, "optim": {"lr": 1.0},
                           "finetune": {"backbone_lr": 1.0}}).validate()


# ---- issue 31 item 10: an --out the finished run could not be published onto, before training --
def test_read_only_mount_point_as_out_is_refused_by_validate(read_only_folder):
    config = TrainConfig.from_dict({"data": {"source": "/d"}, "out": str(read_only_folder)})
    with pytest.raises(ConfigError, match=f"--out {read_only_folder} .*not writable"):
        config.validate()


def test_a_folder_made_read_only_as_out_is_refused_by_validate(tmp_path, monkeypatch):
    import os

    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):  # root: chmod does not stop it, so say what chmod would
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if (
                os.fspath(path) == str(out) and mode & os.W_OK) else real_access(path, mode,
                                                                                   *a, **k))
        config = TrainConfig.from_dict({"data": {"source": "/d"}, "out": str(out)})
        with pytest.raises(ConfigError, match=f"--out {out} is not writable"):
            config.validate()
        TrainConfig.from_dict({"data": {"source": "/d"},
                               "out": str(tmp_path / "new")}).validate()  # a new folder passes
    finally:
        out.chmod(0o755)
