"""``check_weights`` / ``cytotune models --check``: where a card's weights would come from and
whether they are here, found without the network."""
from __future__ import annotations

import sys

import pytest
from safetensors.torch import save_file

from cytotune.cli import main
from cytotune.models import availability, hub
from cytotune.models.availability import CACHED, DOWNLOAD, LOCAL, UNAVAILABLE, check_weights


@pytest.fixture(autouse=True)
def _empty_cache_no_token_no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for var in availability.TOKEN_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)

    def no_network(*args, **kwargs):
        raise AssertionError("check_weights must not touch the network")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    monkeypatch.setattr("torch.hub.download_url_to_file", no_network)


def _fake_hub_cache(root, repo: str, filename: str) -> None:
    """The layout huggingface_hub writes: refs/main -> snapshots/<commit>/<file>."""
    base = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "snapshots" / commit / filename).write_bytes(b"weights")


def test_gated_model_offline_says_what_to_do():
    report = check_weights("uni2-h")
    assert report.status == UNAVAILABLE and not report.available and report.offline
    assert report.source == hub.WeightsSource("hf-hub", "MahmoodLab/UNI2-h",
                                              ("model.safetensors", "pytorch_model.bin"))
    text = "\n".join(report.lines())
    assert "CC-BY-NC-ND-4.0" in text and "gated" in text and "Hub token: none found" in text
    assert "hf download MahmoodLab/UNI2-h" in text and "HF_TOKEN" in text
    assert "https://huggingface.co/MahmoodLab/UNI2-h" in text and "--weights PATH" in text


def test_cached_files_are_found(tmp_path):
    _fake_hub_cache(tmp_path / "hf-cache", "paige-ai/Virchow2", "pytorch_model.bin")
    report = check_weights("virchow2")
    assert report.status == CACHED and report.available
    assert report.found.name == "pytorch_model.bin" and "paige-ai--Virchow2" in str(report.found)
    assert check_weights("uni2-h").status == UNAVAILABLE  # another repository: not cached


def test_token_and_online(monkeypatch):
    monkeypatch.setattr(availability.hub, "is_offline", lambda: False)
    assert check_weights("uni2-h").status == UNAVAILABLE  # gated, no token: cannot download
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    report = check_weights("uni2-h")
    assert report.status == DOWNLOAD and not report.available
    assert report.token == "HF_TOKEN environment variable"
    assert "hf_secret_value" not in "\n".join(report.lines())
    assert any("accepted the model's terms" in n for n in report.notes)
    assert check_weights("h-optimus-0").status == DOWNLOAD  # open: no token needed


def test_local_weights_path(tmp_path):
    folder = tmp_path / "uni2"
    folder.mkdir()
    save_file({"x": __import__("torch").zeros(1)}, str(folder / "model.safetensors"))
    report = check_weights("uni2-h", weights=folder)
    assert report.status == LOCAL and report.available
    assert report.found == folder / "model.safetensors"
    missing = check_weights("uni2-h", weights=tmp_path / "nope")
    assert missing.status == UNAVAILABLE and "does not exist" in "\n".join(missing.lines())


def test_weights_shipped_in_a_package():
    report = check_weights("efficientnet-lite0")
    assert report.status == CACHED and report.source.kind == "package" and report.found.is_file()


def test_conch_without_its_package(monkeypatch, tmp_path):
    _fake_hub_cache(tmp_path / "hf-cache", "MahmoodLab/conch", "pytorch_model.bin")
    assert check_weights("conch").available
    monkeypatch.setitem(sys.modules, "conch", None)
    report = check_weights("conch")
    assert report.status == CACHED and not report.available
    assert any('pip install "cytotune[conch]"' in s for s in report.steps)


def test_cli_check(capsys, tmp_path):
    assert main(["models", "--check", "uni2-h"]) == 1
    out = capsys.readouterr().out
    assert "not available here" in out and "hf download MahmoodLab/UNI2-h" in out
    assert main(["models", "--check", "efficientnet-lite0"]) == 0
    assert "available here" in capsys.readouterr().out
    assert main(["models", "--check", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().out
    assert main(["models", "--weights", str(tmp_path)]) == 2


def test_cli_lists_licence_and_access_of_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "prov-gigapath", "phikon-v2",
                 "conch"):
        assert name in out
    assert "CC-BY-NC-ND-4.0" in out and "Owkin non-commercial" in out
