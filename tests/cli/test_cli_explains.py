"""The command line explains itself (issue 32, item 3): the top-level help says what cytotune does
and lists the commands, `--version` and `python -m cytotune` work, every option's default is in
--help, `sweep --list` gives descriptions and run counts, a value given to an on/off option
names the option, progress is `--progress/--no-progress` everywhere (old `--quiet` kept), and
`models` says whether each backbone's weights are here."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cytotune._flags import SAYS_DEFAULT
from cytotune._version import __version__
from cytotune.cli import build_parser, main, train_options

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (command path, parser) below the top level, nested commands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _parsers(child, (*path, name))


def test_top_level_help_says_what_cytotune_does(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "thin layer" not in out
    assert "foundation models" in out and "cytology" in out
    commands = dict(_parsers(build_parser()))
    for name in ("train", "sweep", "report", "predict", "export", "embed", "models", "demo"):
        assert (name,) in commands
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split()) > 2, f"{name} has no one-line description: {line!r}"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"cytotune {__version__}"


def test_python_m_cytotune_runs_the_cli():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "cytotune", "--version"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cytotune {__version__}"
    done = subprocess.run([sys.executable, "-m", "cytotune", "models", "--check", "no-such-card"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "error:" in done.stdout  # main()'s error handling, too


def test_every_option_of_every_command_shows_its_default():
    for path, parser in _parsers(build_parser()):
        formatter = parser.formatter_class(prog=parser.prog)
        for action in parser._actions:
            if (not action.option_strings or action.help == argparse.SUPPRESS
                    or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
                continue
            text = formatter._expand_help(action) if action.help else ""
            where = f"cytotune {' '.join(path)} {action.option_strings[-1]}: {text!r}"
            assert SAYS_DEFAULT.search(text) or "(required)" in text, where
            assert "default: None" not in text, where
        assert "default: None" not in parser.format_help()


def test_train_help_shows_the_config_defaults():
    train = dict(_parsers(build_parser()))[("train",)]
    text = " ".join(train.format_help().split())
    assert "learning rate (default: 0.001)" in text
    assert "LoRA rank (default: 2)" in text
    assert "(default: --pretrained)" in text and "(default: --no-overwrite)" in text
    assert "override the card's input size (default: the card's)" in text
    # the defaults shown are what a run gets when the flag is not given
    assert "lr" not in train_options(build_parser().parse_args(["train", "--data", "x"]))


def test_embed_help_shows_its_defaults():
    embed = dict(_parsers(build_parser()))[("embed",)]
    text = " ".join(embed.format_help().split())
    assert "(default: all)" in text and "(default: the card's)" in text
    assert "(default: 64)" in text and "(default: .cytotune_cache)" in text


# ---- sweep --list --------------------------------------------------------------------------
def _shipped(name: str) -> Path:
    from cytotune.experiments.catalog import experiment_path

    return experiment_path(name)


def test_sweep_list_shows_descriptions_and_full_run_counts(monkeypatch, capsys, tmp_path):
    from cytotune.experiments.catalog import list_experiments
    from cytotune.experiments.sweep import load_sweep

    for var in [v for v in os.environ if v.startswith("CYTOTUNE_")]:
        monkeypatch.delenv(var)
    assert main(["sweep", "--list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in list_experiments():
        description = " ".join(str(yaml.safe_load(_shipped(name).read_text())
                                   ["description"]).split())
        assert f"{name}: " in out and description in out
    assert "demo_sweep: 24 runs" in out
    assert len(load_sweep("demo_sweep").runs()) == 24
    # a sweep whose data sets are unset here: the count is the full sweep's
    data = {var: str(tmp_path) for var in ("CYTOTUNE_BCFC", "CYTOTUNE_MLCC",
                                            "CYTOTUNE_SIPAKMED", "CYTOTUNE_HICERVIX")}
    full = len(load_sweep("experiment2_lora_fewshot", environ=data).runs())
    assert f"experiment2_lora_fewshot: {full} runs (full sweep; unset here: " in out
    assert "CYTOTUNE_MLCC" in out
    # leave-one-domain-out over domains named by an unset variable: per held-out domain
    both = {"CYTOTUNE_COMPARE_DATA": str(tmp_path), "CYTOTUNE_COMPARE_DOMAINS": "a,b,c,d"}
    runs = load_sweep("compare_methods", environ=both).runs()
    per_domain = sum(r.dataset.startswith("mine_lodo.heldout-a") for r in runs)
    fixed = len(runs) - 4 * per_domain
    assert f"compare_methods: {fixed} runs + {per_domain} per held-out domain" in out


def test_sweep_list_counts_with_the_variables_set(monkeypatch, tmp_path):
    """Set or not, the count is the same, and it is the number of runs the sweep plans."""
    from cytotune.experiments.catalog import list_experiments
    from cytotune.experiments.listing import run_count, summarize
    from cytotune.experiments.sweep import load_sweep

    every = {v: str(tmp_path) for v in ("CYTOTUNE_BCFC", "CYTOTUNE_MLCC", "CYTOTUNE_SIPAKMED",
                                         "CYTOTUNE_HICERVIX", "CYTOTUNE_COMPARE_DATA")}
    every["CYTOTUNE_COMPARE_DOMAINS"] = "a,b"
    for name in list_experiments():
        sweep = load_sweep(name, environ=every)
        assert run_count(sweep) == len(sweep.runs()), name

    monkeypatch.delenv("CYTOTUNE_MLCC", raising=False)
    unset = summarize("fewshot_probes")
    assert unset.unset == ["CYTOTUNE_MLCC"]
    monkeypatch.setenv("CYTOTUNE_MLCC", str(tmp_path))
    assert summarize("fewshot_probes").runs == unset.runs and unset.runs > 0
    assert summarize("fewshot_probes").unset == []


# ---- on/off values and the progress convention ---------------------------------------------
@pytest.mark.parametrize("argv, flag, value", [
    (["sweep", "demo_sweep", "--retry-failed", "maybe"], "retry-failed", "maybe"),
    (["sweep", "demo_sweep", "--retry-failed=maybe"], "retry-failed", "maybe"),
    (["sweep", "demo_sweep", "--no-retry-failed", "false"], "retry-failed", "false"),
    (["train", "--data", "x", "--pretrained", "sometimes"], "pretrained", "sometimes"),
    (["predict", "run", "img", "--progress", "2"], "progress", "2"),
])
def test_a_bad_on_off_value_names_the_option(argv, flag, value, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert (f"error: --{flag} takes no value (use --{flag} or --no-{flag}), got {value!r}"
            in err)
    assert "unrecognized arguments" not in err


def test_progress_is_one_spelling_and_quiet_still_works(capsys):
    parse = build_parser().parse_args
    for command in (["sweep", "x"], ["predict", "run", "img"], ["train", "--data", "x"],
                    ["embed", "--data", "d", "--model", "m", "--out", "o"]):
        assert parse(command).progress is True
        assert parse([*command, "--no-progress"]).progress is False
    assert "progress" not in train_options(parse(["train", "--data", "x", "--no-progress"]))
    assert capsys.readouterr().err == ""
    assert parse(["sweep", "x", "--quiet"]).progress is False  # the old spelling
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cytotune: note: '--quiet' is deprecated, write '--no-progress'"]
    assert "--quiet" not in dict(_parsers(build_parser()))[("sweep",)].format_help()


# ---- models: are the weights here? ---------------------------------------------------------
def _fake_hub_cache(root: Path, repo: str, filename: str) -> None:
    """What huggingface_hub leaves after downloading ``filename`` of ``repo``."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(b"weights")


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"│ {name} "))


def test_models_lists_whether_the_weights_are_here(monkeypatch, tmp_path, capsys):
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "google/vit-base-patch16-224", "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("cytotune.cli._make_console", lambda: __import__(
        "rich.console", fromlist=["Console"]).Console(width=250))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "weights here" in out
    assert " yes " in _row(out, "vit-b16")
    assert "no (downloads)" in _row(out, "quilt")  # open, not cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "no (see --check)" in _row(out, "quilt") and " yes " in _row(out, "vit-b16")


def test_the_listing_agrees_with_the_full_check_without_importing_torch(tmp_path):
    """The listing's shortcuts (no open_clip / weights-package import) give the status the full
    `models --check` gives, in a process that never imports torch."""
    from cytotune.models import list_cards
    from cytotune.models.availability import check_weights

    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"),
           "TORCH_HOME": str(tmp_path / "torch"),
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("HF_HUB_OFFLINE", None)
    code = ("import sys\nfrom cytotune.models import list_cards\n"
            "from cytotune.models.availability import listing_status\n"
            "for c in list_cards(): print(c.name, listing_status(c))\n"
            "print('TORCH', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    lines = done.stdout.split("\n")
    assert "TORCH False" in lines
    quick = dict(line.split() for line in lines if line and not line.startswith("TORCH"))
    old = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "TORCH_HOME", "HF_HUB_OFFLINE")}
    try:
        os.environ.update(HF_HUB_CACHE=env["HF_HUB_CACHE"], TORCH_HOME=env["TORCH_HOME"])
        os.environ.pop("HF_HUB_OFFLINE", None)
        full = {c.name: check_weights(c).status for c in list_cards()}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert quick == full
