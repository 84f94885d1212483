"""Are a card's weights available on this machine? Answered without touching the network.

``check_weights("uni2-h")`` looks where :meth:`Family.weights_source` says the weights come from:
the Hugging Face cache (``huggingface_hub.try_to_load_from_cache``), torch's hub cache for plain
URLs, the Python package that ships them, or a local ``weights=`` path; it notes whether a Hub
token is set (gated models need one) and whether the Hub is switched off. The report says what
will happen on first use and, when the weights are not here, exactly what to do.
``cytotune models --check NAME`` prints it.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from cytotune.models import hub
from cytotune.models.card import ModelCard
from cytotune.models.checkpoint import find_weights_file
from cytotune.models.errors import CheckpointError, WeightsUnavailableError
from cytotune.models.families import get_family
from cytotune.models.catalog import get_card

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# status values, best first
LOCAL = "local"          # --weights PATH holds a weights file
CACHED = "cached"        # found in a cache or package on this machine
DOWNLOAD = "download"    # not here; fetched on first use (needs network, and a token if gated)
UNAVAILABLE = "unavailable"


@dataclass
class WeightsReport:
    """What :func:`check_weights` found; ``lines()`` renders it for people."""

    card: str
    licence: str
    gated: bool
    status: str
    source: Optional[hub.WeightsSource]
    found: Optional[Path] = None           # the local or cached file that would be read
    token: Optional[str] = None            # where a Hub token was found (never the token)
    offline: bool = False
    missing_requirement: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        """True when the weights are on this machine and every package the card needs is there."""
        return self.status in (LOCAL, CACHED) and self.missing_requirement is None

    def lines(self) -> list[str]:
        where = "unknown" if self.source is None else f"{self.source.kind} {self.source.location}"
        access = "gated (accept the terms on the model page; needs a Hub token)" if self.gated \
            else "open"
        out = [f"model card: {self.card}",
               f"weights from: {where}",
               f"licence: {self.licence}; access: {access}",
               f"Hub token: {self.token or 'none found'}"
               + ("; HF_HUB_OFFLINE is set" if self.offline else ""),
               f"status: {_STATUS_TEXT[self.status]}"
               + (f" ({self.found})" if self.found else "")]
        out += [f"note: {n}" for n in self.notes]
        if self.steps:
            out.append("to make the weights available:")
            out += [f"  - {s}" for s in self.steps]
        return out


_STATUS_TEXT = {
    LOCAL: "available here: the local weights path holds a weights file",
    CACHED: "available here: found on this machine",
    DOWNLOAD: "not on this machine yet: downloaded on first use",
    UNAVAILABLE: "not available here",
}


def find_token() -> Optional[str]:
    """Where a Hugging Face token is configured (environment or ``hf auth login``), or None."""
    for var in TOKEN_VARIABLES:
        if os.environ.get(var, "").strip():
            return f"{var} environment variable"
    try:
        from huggingface_hub import get_token
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    return "stored by `hf auth login`" if get_token() else None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (as :func:`hub.is_offline`
    does: huggingface_hub fixes its constants at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached_hub_file(source: hub.WeightsSource) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = source.location.partition("@")
    for filename in source.filenames:
        hit = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(),
                                     revision=revision or None)
        if isinstance(hit, str):  # a path; None / a sentinel mean "not cached"
            return Path(hit)
    return None


def _cached_url_file(url: str) -> Optional[Path]:
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
    return target if target.is_file() else None


def _local_file(card: ModelCard, path: Path) -> Path:
    """The file ``weights=path`` would read (raises CheckpointError naming the problem)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"weights path {path} does not exist")
    if path.is_file():
        return path
    preferred = getattr(get_family(card.family), "weight_files", ())
    return find_weights_file(path, preferred)


def check_weights(card_or_name: Union[ModelCard, str],
                  weights: Optional[Union[str, Path]] = None) -> WeightsReport:
    """Whether ``card``'s weights are on this machine, and the steps to get them if not."""
    card = get_card(card_or_name) if isinstance(card_or_name, str) else card_or_name
    family = get_family(card.family)
    source = family.weights_source(card)
    report = WeightsReport(card=card.name, licence=card.licence, gated=card.gated,
                           status=UNAVAILABLE, source=source, token=find_token(),
                           offline=hub.is_offline(),
                           missing_requirement=family.missing_requirement(card))
    if report.missing_requirement:
        report.steps.append(report.missing_requirement)

    if weights is not None:
        try:
            report.found = _local_file(card, Path(weights))
            report.status = LOCAL
            report.notes.append("the file's keys are checked against the architecture when it "
                                "is loaded")
        except CheckpointError as exc:
            report.notes.append(f"--weights {weights}: {exc}")
    if report.status != LOCAL:
        _look_for_pretrained(card, family, source, report)
    return report


def _look_for_pretrained(card: ModelCard, family, source: Optional[hub.WeightsSource],
                         report: WeightsReport) -> None:
    if source is None:
        report.notes.append("the card names no pretrained weights; pass a local file with "
                            "--weights PATH (or use --pretrained false for random init)")
        return
    if source.kind == "package":
        try:
            report.found = family.package_file(card)
            report.status = CACHED
        except WeightsUnavailableError as exc:
            report.steps.append(str(exc))
        return
    if source.kind == "file":
        found = Path(source.location)
        if found.is_file():
            report.found, report.status = found, CACHED
        else:
            report.steps.append(f"the file {found} does not exist; pass the weights with "
                                f"--weights PATH")
        return
    found = _cached_hub_file(source) if source.kind == "hf-hub" else _cached_url_file(source.location)
    if found is not None:
        report.found, report.status = found, CACHED
        return
    url = source.location if source.kind == "url" else None
    needs_token = card.gated and report.token is None and source.kind == "hf-hub"
    if report.offline or needs_token:
        report.status = UNAVAILABLE
        why = ("HF_HUB_OFFLINE is set and the files are not cached" if report.offline else
               "the repository is gated and no Hub token is configured")
        report.notes.append(why)
        report.steps += _fix_steps(card, source.location, url)
    else:
        report.status = DOWNLOAD
        if card.gated:
            report.notes.append("gated: the download works only if the token's account has "
                                "accepted the model's terms on its page")
        report.notes.append(f"this check does not contact the Hub; without network access the "
                            f"download fails: `HF_HUB_OFFLINE=1 cytotune models --check "
                            f"{card.name}` lists the offline steps")


def _fix_steps(card: ModelCard, hub_id: str, url: Optional[str]) -> list[str]:
    text = hub.how_to_fix(card, hub_id, url)
    return [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]


# Families that find a card's weights by asking their model package (open_clip's pretrained
# tags, timm's pretrained configs), which imports torch: 4-5 s for a listing that is otherwise
# instant. The listing asks them only when a cache could hold the weights at all.
_LOCATED_BY_PACKAGE = ("open_clip", "timm")


def _torch_hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder, found as ``torch.hub.get_dir`` finds it, without torch."""
    if "torch" in sys.modules:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def _caches_are_empty() -> bool:
    """Neither the Hugging Face hub cache nor torch.hub's folder holds any model."""
    hub_cache, checkpoints = hub_cache_dir(), _torch_hub_checkpoints()
    no_hub = not hub_cache.is_dir() or not any(hub_cache.glob("models--*"))
    no_urls = not checkpoints.is_dir() or not any(checkpoints.iterdir())
    return no_hub and no_urls


def listing_status(card: ModelCard) -> str:
    """One of the statuses above, for ``cytotune models``' "weights here" column, found without
    importing torch where that can be avoided: a package that ships weights is looked up, not
    imported; a card located by its model package is looked for only when a cache holds any
    model (else it cannot be here). ``check_weights`` gives the full answer."""
    family = get_family(card.family)
    located_by_package = (card.family in _LOCATED_BY_PACKAGE
                          and not card.source.startswith("hf-hub:"))
    if "torch" not in sys.modules:  # else asking the packages costs nothing more
        if located_by_package and _caches_are_empty():
            if hub.is_offline() or (card.gated and find_token() is None):
                return UNAVAILABLE
            return DOWNLOAD
        source = None if located_by_package else family.weights_source(card)
        if source is not None and source.kind == "package":
            module = source.location.partition(":")[0]
            return CACHED if module and importlib.util.find_spec(module) is not None \
                else UNAVAILABLE
    return check_weights(card).status


LISTING_TEXT = {LOCAL: "yes", CACHED: "yes", DOWNLOAD: "no (downloads)",
                UNAVAILABLE: "no (see --check)"}
