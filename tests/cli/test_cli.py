"""The CLI is a thin layer: flags reach the config, errors come back as messages and exit code 2."""
import json

from cytotune.cli import main


def test_models_lists_the_cards(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("clip-vit-b16", "clip-vit-l14", "biomedclip", "quilt", "uni", "vit-b16",
                 "efficientnet-lite0"):
        assert name in out
    assert "gated" in out


def test_train_from_flags_writes_a_run(synthetic_data, tiny_model_names, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(synthetic_data), "--model", tiny_model_names["clip-vit-b16"],
                 "--pretrained", "false", "--method", "lora", "--rank", "2", "--targets", "q,v",
                 "--shots", "2", "--seed", "1", "--lr", "1e-3", "--steps", "4", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    config = (out / "config.yaml").read_text()
    assert "rank: 2" in config and "- q" in config and "- v" in config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert "test metrics" in capsys.readouterr().out


def test_train_from_yaml_with_flag_override(synthetic_data, tiny_model_names, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {{source: {synthetic_data}}}\nmodel: {{name: {tiny_model_names['uni']}, "
                   f"pretrained: false}}\nmethod: linear\nshots: 2\noptim: {{linear_epochs: 3}}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--seed", "5", "--out", str(out)]) == 0
    assert "seed: 5" in (out / "config.yaml").read_text()


def test_bad_input_is_a_message_not_a_traceback(synthetic_data, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--method", "linear"]) == 2
    assert "missing" in capsys.readouterr().out
    assert main(["train", "--data", str(synthetic_data), "--model", "unii"]) == 2
    assert "uni" in capsys.readouterr().out
    assert main(["train", "--data", str(synthetic_data), "--shots", "2", "--fraction", "50"]) == 2
    assert "either shots or fraction" in capsys.readouterr().out


def test_group_pattern_flag_reaches_the_data_options():
    """--group-pattern is the CLI spelling of data.options.group_pattern ('' turns the mlcc
    layout's default grouping off)."""
    from cytotune.api import build_config
    from cytotune.cli import build_parser, train_options

    args = build_parser().parse_args(["train", "--data", "x", "--layout", "mlcc",
                                      "--group-pattern", r"^(.+)_\d+\.png$"])
    assert build_config(**train_options(args)).data.options["group_pattern"] == r"^(.+)_\d+\.png$"
    args = build_parser().parse_args(["train", "--data", "x", "--layout", "mlcc", "--group-pattern", ""])
    assert build_config(**train_options(args)).data.options["group_pattern"] == ""


def test_train_prints_the_planned_steps_and_progress_lines(synthetic_data, tiny_model_names,
                                                           tmp_path, capsys):
    """Off a terminal (as here), progress is plain lines on stderr; the table stays on stdout."""
    code = main(["train", "--data", str(synthetic_data), "--model", tiny_model_names["uni"],
                 "--pretrained", "false", "--method", "lora", "--rank", "2", "--shots", "2",
                 "--steps", "6", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    captured = capsys.readouterr()
    assert "planned: 6 optimizer steps (set by --steps)" in captured.err
    assert "training 6/6 (100 %)" in captured.err and "estimated training time" in captured.err
    assert "planned:" not in captured.out and "test metrics" in captured.out
