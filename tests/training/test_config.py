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
