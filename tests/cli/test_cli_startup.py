"""Commands that need no model start without importing torch (each used to take 9-12 s to start,
`cytotune --help` included), and on/off options are spelled --flag / --no-flag everywhere, the
old --flag true|false still taken with a deprecation note."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cytotune.cli import build_parser, train_options

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _modules_after(*argv: str, **environ: str) -> tuple[int, set[str]]:
    """Run `cytotune ARGV` in a fresh interpreter (``environ`` added to the environment); its
    exit code and the modules it imported."""
    code = ("import json, sys\nfrom cytotune.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\nsys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **environ}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    modules = json.loads(done.stderr.rsplit("MODULES ", 1)[1])
    return done.returncode, set(modules)


@pytest.mark.parametrize("argv", [("--help",), ("train", "--help"), ("sweep", "--list"),
                                  ("predict", "--help"), ("bench", "--help")])
def test_commands_without_a_model_do_not_import_torch(argv):
    code, modules = _modules_after(*argv)
    assert code == 0
    assert "torch" not in modules
    assert not {"cytotune.training.runner", "cytotune.benchmark.cases"} & modules


# third-party top-level modules `cytotune ... --help` may import: rich (the CLI's console and
# tables) and yaml (with its C loader's Cython runtime; through cytotune.training.config,
# which the bench parser reads its precisions from). Nothing else: pandas, numpy, sklearn or
# matplotlib there make --help several times slower without anyone noticing.
HELP_THIRD_PARTY = {"cytotune", "rich", "yaml", "_yaml", "cython_runtime"}


def _bare_interpreter_modules() -> set[str]:
    """Top-level modules a bare interpreter holds at start (site hooks, .pth files)."""
    done = subprocess.run([sys.executable, "-c", "import json, sys; "
                           "print(json.dumps(sorted(sys.modules)))"], capture_output=True,
                          text=True, timeout=60, check=True)
    return {m.split(".")[0] for m in json.loads(done.stdout)}


def test_help_imports_only_the_allowed_modules():
    """`cytotune --help` and every sub-command's --help import the standard library, cytotune,
    rich and yaml only: an allow-list, so any new heavy import on the start-up path fails here
    (pandas came in through cytotune._atomic)."""
    import argparse

    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "sweep", "predict", "bench", "embed"} <= set(commands)
    allowed = set(sys.stdlib_module_names) | _bare_interpreter_modules() | HELP_THIRD_PARTY
    for argv in [("--help",), *((name, "--help") for name in commands)]:
        code, modules = _modules_after(*argv)
        assert code == 0, argv
        extra = {m.split(".")[0] for m in modules} - allowed
        extra = {m for m in extra if not m.startswith("_cython_")}  # yaml's Cython runtime
        assert not extra, f"cytotune {' '.join(argv)} imports {sorted(extra)}"


def test_listing_and_checking_models_do_not_import_torch(tmp_path):
    """The cards, their families and the weights check are plain data and file look-ups (the
    listing's "weights here" column too, on a machine whose caches hold no model: only where
    one does, cards located by open_clip are looked up, which imports it)."""
    code, modules = _modules_after("models", HF_HUB_CACHE=str(tmp_path / "hub"),
                                   TORCH_HOME=str(tmp_path / "torch"))
    assert code == 0
    assert "cytotune.models.families.open_clip_family" in modules  # the families were asked
    assert not {"torch", "timm", "open_clip", "transformers"} & modules
    code, modules = _modules_after("models", "--check", "uni")  # a hub card: 1 when not here
    assert code in (0, 1)
    assert "cytotune.models.availability" in modules and "torch" not in modules


def test_a_sweep_dry_run_does_not_import_torch(tmp_path):
    """Planning a sweep checks method names in the torch-free name registry."""
    code, modules = _modules_after("sweep", "demo_sweep", "--store", str(tmp_path / "s.sqlite"),
                                   "--dry-run", "--no-estimate")
    assert code == 0
    assert "cytotune.training.method_registry" in modules
    assert not {"torch", "cytotune.training.methods", "cytotune.training.runner"} & modules


def test_on_off_options_take_both_spellings(capsys):
    parse = build_parser().parse_args
    base = ["train", "--data", "x"]
    assert train_options(parse([*base, "--no-pretrained", "--overwrite"]))["pretrained"] is False
    assert train_options(parse([*base, "--overwrite"]))["overwrite"] is True
    assert "overwrite" not in train_options(parse(base))  # not given: the config decides
    assert capsys.readouterr().err == ""
    old = train_options(parse([*base, "--pretrained", "false", "--overwrite", "TRUE",
                               "--grad-checkpointing=off"]))
    assert (old["pretrained"], old["overwrite"], old["grad_checkpointing"]) == (False, True, False)
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 3 and all("deprecated" in n for n in notes)
    assert "'--pretrained false' is deprecated, write '--no-pretrained'" in notes[0]
    assert "write '--overwrite'" in notes[1]
    # the same convention on the other commands
    assert parse(["export", "run", "--out", "o", "--overwrite"]).overwrite is True
    assert parse(["export", "run", "--out", "o", "--overwrite", "false"]).overwrite is False
    assert parse(["bench", "--pretrained"]).pretrained is True
    assert parse(["bench", "--pretrained", "no"]).pretrained is False
    assert parse(["predict", "run", "img", "--no-progress"]).progress is False
    assert parse(["sweep", "x", "--no-retry-failed"]).retry_failed is False
    assert sum("deprecated" in n for n in capsys.readouterr().err.splitlines()) == 2


def test_a_value_that_is_no_on_off_word_is_left_alone():
    """`export --overwrite RUN_DIR ...`: the run directory is not taken as the flag's value."""
    args = build_parser().parse_args(["export", "--overwrite", "runs/x", "--out", "o"])
    assert args.overwrite is True and args.run_dirs == ["runs/x"]
