"""A shipped experiment runs on the data sets a user has: a chosen subset (--datasets), the
others skipped with one line; a dry run names the backbones without weights and writes nothing."""
from __future__ import annotations

import pytest

from cytotune.cli import main
from cytotune.experiments import load_sweep, run_sweep
from cytotune.training.config import ConfigError

ALL = ("CYTOTUNE_BCFC", "CYTOTUNE_MLCC", "CYTOTUNE_SIPAKMED", "CYTOTUNE_HICERVIX")


def _environ(tmp_path, *names: str) -> dict[str, str]:
    return {name: str(tmp_path / name.lower()) for name in names}


def test_unset_data_sets_are_skipped_and_kept_runs_keep_their_ids(tmp_path):
    only_mlcc = load_sweep("experiment1_linear", environ=_environ(tmp_path, "CYTOTUNE_MLCC"),
                           skip_unset_datasets=True)
    assert list(only_mlcc.datasets) == ["mlcc"]
    assert only_mlcc.skipped_datasets == {"bcfc": "CYTOTUNE_BCFC not set",
                                          "sipakmed": "CYTOTUNE_SIPAKMED not set",
                                          "hicervix": "CYTOTUNE_HICERVIX not set"}
    full = load_sweep("experiment1_linear", environ=_environ(tmp_path, *ALL))
    assert full.skipped_datasets == {}
    full_ids = {r.run_id for r in full.runs() if r.dataset == "mlcc"}
    assert {r.run_id for r in only_mlcc.runs()} == full_ids  # a later full sweep finds them done


def test_without_skipping_an_unset_variable_is_still_an_error(tmp_path):
    with pytest.raises(ConfigError, match="CYTOTUNE_BCFC is not set"):
        load_sweep("experiment1_linear", environ=_environ(tmp_path, "CYTOTUNE_MLCC"))


def test_datasets_selects_a_subset_and_refuses_unknown_or_unset_names(tmp_path):
    environ = _environ(tmp_path, *ALL)
    chosen = load_sweep("experiment2_lora_fewshot", environ=environ,
                        datasets=["mlcc", "sipakmed"], skip_unset_datasets=True)
    assert list(chosen.datasets) == ["mlcc", "sipakmed"] and chosen.skipped_datasets == {}
    with pytest.raises(ConfigError, match="unknown data set.*nope.*bcfc, mlcc"):
        load_sweep("experiment2_lora_fewshot", environ=environ, datasets=["nope"])
    with pytest.raises(ConfigError, match="bcfc needs the environment variable CYTOTUNE_BCFC"):
        load_sweep("experiment2_lora_fewshot", environ=_environ(tmp_path, "CYTOTUNE_MLCC"),
                   datasets=["bcfc"], skip_unset_datasets=True)


def test_no_data_set_left_is_an_error_naming_every_variable(tmp_path):
    with pytest.raises(ConfigError, match="no data set left.*CYTOTUNE_BCFC.*CYTOTUNE_HICERVIX"):
        load_sweep("experiment1_linear", environ={}, skip_unset_datasets=True)


def test_cli_dry_run_skips_unset_data_sets_names_missing_weights_and_writes_no_store(
        tmp_path, monkeypatch, capsys):
    for name in ALL:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CYTOTUNE_MLCC", str(tmp_path / "mlcc"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = tmp_path / "results.sqlite"
    assert main(["sweep", "experiment1_linear", "--store", str(store), "--dry-run",
                 "--no-estimate"]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skipped data set")]
    assert skipped == ["skipped data set(s) bcfc (CYTOTUNE_BCFC not set); sipakmed "
                       "(CYTOTUNE_SIPAKMED not set); hicervix (CYTOTUNE_HICERVIX not set); "
                       "running mlcc"]
    assert "45 runs" in out and "backbones without weights on this machine" in out
    assert "  uni: not available here" in out  # gated, and the Hub is off
    assert not store.exists() and "does not exist yet" in out

    assert main(["sweep", "experiment1_linear", "--store", str(store), "--dry-run",
                 "--datasets", "sipakmed"]) == 2
    assert "CYTOTUNE_SIPAKMED" in capsys.readouterr().out


def test_dry_run_of_backbones_with_weights_here_says_so(synthetic_data, tmp_path, capsys):
    from rich.console import Console

    values = {"name": "w", "datasets": {"d": str(synthetic_data)},
              "backbones": ["efficientnet-lite0"], "method": "linear", "shots": [1]}
    console = Console(record=True, width=200)
    summary = run_sweep(values, tmp_path / "s.sqlite", dry_run=True, console=console)
    text = console.export_text()
    assert summary.to_run == 1 and "every backbone's weights are on this machine" in text
    assert not (tmp_path / "s.sqlite").exists()
