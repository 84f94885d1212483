"""Downloads from the Hugging Face Hub, with failures turned into actionable errors.

Every family fetches pretrained files through :func:`fetch_file` so that "no network",
``HF_HUB_OFFLINE=1``, a gated repository without an accepted access request, or a repository
that does not exist all end in the same :class:`WeightsUnavailableError`, whose message names the
card and the hub id and says how to get the weights onto this machine.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from cytotune.models.errors import WeightsUnavailableError

if TYPE_CHECKING:
    from cytotune.models.card import ModelCard

_TRUE = {"1", "on", "yes", "true"}
_UNREACHABLE_FOR_S = 120.0  # after a failed connection, use only the cache for this long
_unreachable_until = 0.0


@dataclass(frozen=True)
class WeightsSource:
    """Where a card's pretrained weights come from, as a value (no download, no network).

    kind        "hf-hub" (``location`` = repo id, ``filenames`` = candidate files in order),
                "url" (a plain download into torch's hub cache), "file" (a path) or "package"
                (``location`` = "<module>:<attribute>" giving the file)
    """

    kind: str
    location: str
    filenames: tuple[str, ...] = ()


def is_offline() -> bool:
    """True when Hub downloads are switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``).

    huggingface_hub reads the variables once at import; they are read again here so that setting
    them later in the process (tests, notebooks) is honoured too.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    return bool(constants.is_offline_mode())


def how_to_fix(card: "ModelCard", hub_id: str, url: Optional[str] = None) -> str:
    """The steps that put a card's weights on a machine without Hub access."""
    steps = []
    if url:
        steps.append(
            f"  - on a machine with internet access download {url}, copy the file here and pass it "
            f"with `--weights PATH` on the command line or `weights=PATH` in Python "
            f"(build_backbone('{card.name}', weights=PATH))")
        return "To fix it:\n" + "\n".join(steps)
    if card.gated:
        steps.append(
            f"  - this model is gated: on the model page https://huggingface.co/{hub_id} log in and "
            f"accept its terms (licence: {card.licence}); then give the Hub your access token: "
            f"`hf auth login`, or set HF_TOKEN=<token> in the environment")
    steps.append(
        f"  - on a machine with internet access run `hf download {hub_id} --local-dir "
        f"{_dir_name(hub_id)}`{' (with the token set)' if card.gated else ''}, copy that directory "
        f"here and pass it with `--weights PATH` on the command line or `weights=PATH` in Python "
        f"(build_backbone('{card.name}', weights=PATH)); the directory or its weights file "
        f"(.safetensors/.bin/.pth) both work")
    steps.append(
        "  - or copy a Hugging Face cache that holds the files (~/.cache/huggingface) and point "
        "HF_HOME at it")
    return "To fix it:\n" + "\n".join(steps)


def _dir_name(hub_id: str) -> str:
    return hub_id.split("@")[0].rstrip("/").split("/")[-1]


def weights_unavailable(card: "ModelCard", hub_id: str, reason: str,
                        url: Optional[str] = None) -> WeightsUnavailableError:
    """The error every family raises when a card's pretrained weights cannot be fetched."""
    where = url or f"the Hugging Face Hub repository '{hub_id}'"
    message = (f"cannot load the pretrained weights of model card '{card.name}' from {where}: "
               f"{reason}.\n{how_to_fix(card, hub_id, url)}")
    return WeightsUnavailableError(message, card_name=card.name, hub_id=hub_id)


def _hub_errors():
    """The huggingface_hub exception classes this module translates (looked up defensively)."""
    from huggingface_hub import errors

    def get(name: str):
        return getattr(errors, name, None)

    return {name: get(name) for name in (
        "GatedRepoError", "RepositoryNotFoundError", "RevisionNotFoundError",
        "DisabledRepoError", "LocalEntryNotFoundError", "EntryNotFoundError",
        "OfflineModeIsEnabled", "RevisionResolutionError", "HfHubHTTPError")}


def _split_revision(hub_id: str) -> tuple[str, Optional[str]]:
    repo, _, revision = hub_id.partition("@")
    return repo, (revision or None)


def fetch_file(card: "ModelCard", hub_id: str, candidates: Sequence[str], *,
               required: bool = True) -> Optional[Path]:
    """Download (or find in the cache) the first of ``candidates`` that the repository has.

    ``hub_id`` may carry a revision as ``org/name@rev``. Returns the local path, or None when
    ``required`` is False and the repository has none of the files. Offline, only the cache is
    looked at. Hub failures raise :class:`WeightsUnavailableError`.
    """
    from huggingface_hub import hf_hub_download

    global _unreachable_until
    E = _hub_errors()
    repo_id, revision = _split_revision(hub_id)
    offline = is_offline()
    cache_only = offline or time.monotonic() < _unreachable_until
    local_misses: list[str] = []
    remote_misses: list[str] = []

    def caught(name: str) -> tuple[type, ...]:
        cls = E.get(name)
        return (cls,) if cls is not None else ()

    for filename in candidates:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision,
                                        local_files_only=cache_only, library_name="cytotune"))
        except caught("GatedRepoError") as exc:
            raise weights_unavailable(
                card, hub_id, f"the repository is gated and this machine has no accepted access "
                f"to it ({_first_line(exc)})") from exc
        except caught("DisabledRepoError") as exc:
            raise weights_unavailable(card, hub_id, f"the repository is disabled "
                                                    f"({_first_line(exc)})") from exc
        except caught("RepositoryNotFoundError") as exc:
            reason = "the repository was not found, or is private/gated and no valid token is set"
            raise weights_unavailable(card, hub_id, f"{reason} ({_first_line(exc)})") from exc
        except caught("RevisionNotFoundError") as exc:
            raise weights_unavailable(card, hub_id, f"revision {revision!r} was not found "
                                                    f"({_first_line(exc)})") from exc
        except caught("LocalEntryNotFoundError") as exc:
            # not in the local cache and the Hub cannot be reached (offline or no network)
            local_misses.append(filename)
            last_local = exc
            if not cache_only:  # the Hub could not be reached: do not wait for it again
                _unreachable_until = time.monotonic() + _UNREACHABLE_FOR_S
                cache_only = True
            continue
        except caught("EntryNotFoundError"):
            remote_misses.append(filename)
            continue
        except caught("OfflineModeIsEnabled") + caught("RevisionResolutionError") as exc:
            raise weights_unavailable(card, hub_id, f"the Hub cannot be reached "
                                                    f"({_first_line(exc)})") from exc
        except caught("HfHubHTTPError") as exc:
            raise weights_unavailable(card, hub_id, f"the Hub answered with an error "
                                                    f"({_first_line(exc)})") from exc
    if local_misses:
        why = ("HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached from this "
               "machine (no network?)")
        if required:
            raise weights_unavailable(
                card, hub_id, f"{why} and none of {', '.join(local_misses)} is in the local "
                              f"Hugging Face cache") from last_local
        return None
    if required:
        raise weights_unavailable(card, hub_id, f"the repository has none of the files "
                                                f"{', '.join(remote_misses)}")
    return None


def with_safetensors_first(filename: str) -> tuple[str, ...]:
    """``filename`` preceded by the safetensors file the Hub usually holds next to it."""
    alternatives = {"pytorch_model.bin": "model.safetensors",
                    "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    if filename in alternatives:
        return alternatives[filename], filename
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors", filename
    return (filename,)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def download_url(card: "ModelCard", url: str) -> Path:
    """Download a plain URL into torch's hub cache (families whose weights are not on the Hub)."""
    import urllib.error

    import torch.hub

    if is_offline():
        raise weights_unavailable(card, url, "HF_HUB_OFFLINE is set and the file is not cached",
                                  url=url)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / os.path.basename(url.split("?")[0])
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except (urllib.error.URLError, OSError) as exc:
        raise weights_unavailable(card, url, f"the download failed ({_first_line(exc)})",
                                  url=url) from exc
    return target
