import pytest

from cytotune.adapters import LoRAConfig


def test_defaults_are_the_study_setting():
    c = LoRAConfig()
    assert (c.rank, c.alpha, c.targets, c.dropout) == (2, 1.0, ("q", "v"), 0.0)
    assert c.scaling == pytest.approx(0.5)
    assert LoRAConfig(rank=16, alpha=32).scaling == 2.0


@pytest.mark.parametrize("kwargs, option", [
    ({"rank": 0}, "rank"),
    ({"rank": -1}, "rank"),
    ({"rank": 1.5}, "rank"),
    ({"rank": True}, "rank"),
    ({"alpha": 0}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"targets": ()}, "targets"),
    ({"targets": ("q", "")}, "targets"),
    ({"targets": ("q", "q")}, "targets"),
    ({"targets": 3}, "targets"),
])
def test_invalid_options_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=f"'{option}'"):
        LoRAConfig(**kwargs)


def test_targets_are_normalised_to_a_tuple():
    assert LoRAConfig(targets=["q", "k"]).targets == ("q", "k")
    assert LoRAConfig(targets="q, v").targets == ("q", "v")
    assert LoRAConfig(targets="conv_head").targets == ("conv_head",)


def test_metadata_roundtrip():
    c = LoRAConfig(rank=16, alpha=0.3, targets=("q", "blocks.*.*.conv_pwl"), dropout=0.25)
    meta = c.to_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["rank"] == "16"
    assert LoRAConfig.from_metadata(meta) == c
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig.from_metadata({"alpha": "1.0", "targets": "[\"q\"]"})
    with pytest.raises(ValueError, match="malformed"):
        LoRAConfig.from_metadata({"rank": "2", "alpha": "1.0", "targets": "q,v"})
