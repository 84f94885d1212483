"""Hub failures become WeightsUnavailableError with a message that says how to fix it."""
from __future__ import annotations

import sys

import pytest

from cytotune.models import WeightsUnavailableError, build_backbone, get_card
from cytotune.models import hub


@pytest.mark.parametrize("name,hub_id", [
    ("clip-vit-b16", "timm/vit_base_patch16_clip_224.openai"),  # open_clip's pretrained tag
    ("biomedclip", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
    ("quilt", "wisdomik/QuiltNet-B-32"),
    ("vit-b16", "google/vit-base-patch16-224"),
    ("uni", "MahmoodLab/uni"),
])
def test_offline_hub_card_says_how_to_get_the_weights(monkeypatch, name, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(name, pretrained=True)
    err, text = info.value, str(info.value)
    assert err.card_name == name and err.hub_id == hub_id
    assert f"'{name}'" in text and hub_id in text and "HF_HUB_OFFLINE" in text
    assert f"hf download {hub_id}" in text and "--weights" in text and "weights=" in text
    assert "HF_HOME" in text
    if get_card(name).gated:
        assert "HF_TOKEN" in text and "hf auth login" in text and "accept" in text
    else:
        assert "HF_TOKEN" not in text


def _online(monkeypatch):
    """As if the Hub were enabled (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _http_error(cls, url: str):
    from huggingface_hub import errors

    response_cls = errors.Response  # httpx (or its successor) as huggingface_hub uses it
    http = sys.modules[response_cls.__module__.split(".")[0]]
    return cls("403 Client Error: access restricted", response=response_cls(
        403, request=http.Request("GET", url)))


def test_gated_repo_error_is_translated(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    _online(monkeypatch)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["local_files_only"]))
        raise _http_error(GatedRepoError, f"https://huggingface.co/{repo_id}/resolve/main/{filename}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("uni")
    text = str(info.value)
    assert "gated" in text and "HF_TOKEN" in text and "https://huggingface.co/MahmoodLab/uni" in text
    assert calls == [("MahmoodLab/uni", "model.safetensors", False)]  # no second try


def test_unreachable_hub_falls_back_to_the_cache_once(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    _online(monkeypatch)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((filename, kwargs["local_files_only"]))
        raise LocalEntryNotFoundError("connection error and no cached file")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(WeightsUnavailableError, match="cannot be reached") as info:
        build_backbone("vit-b16")
    assert "hf download google/vit-base-patch16-224" in str(info.value)
    # after the first connection failure only the local cache is consulted
    assert calls[0] == ("config.json", False) and all(local for _, local in calls[1:])


def test_missing_files_in_repo(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    _online(monkeypatch)

    def fake_download(repo_id, filename, **kwargs):
        raise _http_error(RemoteEntryNotFoundError, f"https://huggingface.co/{repo_id}/{filename}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(WeightsUnavailableError, match="has none of the files"):
        build_backbone("quilt")


def test_is_offline_reads_the_environment_now(monkeypatch):
    _online(monkeypatch)
    assert not hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.is_offline()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert hub.is_offline()
