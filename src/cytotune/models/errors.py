"""Errors raised by ``cytotune.models``; every message says what is wrong and how to fix it."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence


class ModelError(Exception):
    """Base class of the model layer's errors."""


class UnknownModelError(ModelError, KeyError, ValueError):
    """A model name that is neither a registered card nor a ``<family>:<name>`` reference."""

    def __init__(self, message: str, name: str = "", suggestions: Sequence[str] = ()):
        super().__init__(message)
        self.name = name
        self.suggestions = list(suggestions)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class UnknownFamilyError(ModelError, KeyError, ValueError):
    """A card names a family that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _preview(keys: Iterable[str], limit: int = 8) -> str:
    keys = list(keys)  # in model / checkpoint order: the first keys are the most telling
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class CheckpointError(ModelError, ValueError):
    """A weights file or directory that cannot be read (missing, unsafe pickle, no weights in it)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not match the card's architecture (strict loading)."""

    def __init__(self, card_name: str, source: str, missing: Iterable[str] = (),
                 unexpected: Iterable[str] = (), mismatched: Iterable[str] = (),
                 note: str = ""):
        self.card_name = card_name
        self.source = source
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        parts = [f"checkpoint {source} does not match the architecture of model card '{card_name}'"]
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {_preview(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {_preview(self.unexpected)}")
        if self.mismatched:
            parts.append(f"shape mismatches ({len(self.mismatched)}): {_preview(self.mismatched, 5)}")
        parts.append(note or "pass the weights published for this card's model, or pick the card "
                             "that matches the checkpoint (`cytotune models` lists them)")
        super().__init__("; ".join(parts))


class WeightsUnavailableError(ModelError, RuntimeError):
    """Pretrained weights cannot be obtained here (offline, gated repo without access, ...)."""

    def __init__(self, message: str, card_name: str = "", hub_id: Optional[str] = None):
        super().__init__(message)
        self.card_name = card_name
        self.hub_id = hub_id


class FeatureDimError(ModelError, ValueError):
    """The built model's pooled features do not have the width the card declares."""


class MissingDependencyError(ModelError, ImportError):
    """A card's family needs an optional package that is not installed (the message says which
    ``pip install`` fixes it)."""
