"""``cytotune bench --augment``: the LoRA case's data wait measured with the stain and
acquisition augmentations on."""
import json

from cytotune.cli import main

ALL = "dihedral,hed,color,blur,jpeg,scale"


def test_bench_lora_case_times_the_data_wait_with_every_augmentation(synthetic_data, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(synthetic_data), "--model", "uni-tiny", "--cases", "lora",
                 "--shots", "2", "--lora-steps", "2", "--skip-baseline", "--augment", ALL,
                 "--json", str(out)]) == 0
    ours = json.loads(out.read_text())["cases"]["lora"]["cytotune"]
    assert ours["augment"] == ALL
    assert 0 < ours["data_s"] < ours["step_s"]
    assert ours["data_wait_fraction"] == ours["data_s"] / ours["step_s"]


def test_bench_refuses_an_unknown_augmentation_before_any_case(synthetic_data, tmp_path,
                                                               capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(synthetic_data), "--cases", "lora", "--augment",
                 "hed,focus", "--json", str(out)]) == 2
    text = capsys.readouterr().out
    assert "error: --augment: unknown augmentation 'focus'" in text
    assert not out.exists()
