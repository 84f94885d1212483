"""Looking cards up by name: the registered cards, ``<family>:<model>`` and ``<card>-tiny``.

The top of the card modules: it imports the built-in cards (which register themselves in
:mod:`cytotune.models.registry`) and builds the tiny variants (:mod:`cytotune.models.tiny`, with
torch, imported only then), so every lookup sees them and no module they build on imports them
back.
"""
from __future__ import annotations

import difflib

import cytotune.models.cards  # noqa: F401  (registers the built-in cards)
from cytotune.models.card import ModelCard
from cytotune.models.errors import UnknownModelError
from cytotune.models.registry import (TINY_SUFFIX, family_card, naming_help, registered_card,
                                      registered_cards, remember)


def list_cards() -> list[ModelCard]:
    """The registered cards (the built-in ones and any added), sorted by name."""
    return registered_cards()


def tiny_card(card_or_name: ModelCard | str) -> ModelCard:
    """A small random-init variant of the card called ``name`` (or of a card object)."""
    from cytotune.models.tiny import small_variant  # torch: only when a tiny card is made

    return small_variant(card_or_name if isinstance(card_or_name, ModelCard)
                         else get_card(card_or_name))


def tiny_cards() -> list[ModelCard]:
    """Tiny variants of every registered card."""
    return [tiny_card(c) for c in list_cards()]


def _tiny_variant(name: str) -> ModelCard | None:
    """``<card>-tiny`` names the small random-init variant of a registered card (tests, CPU
    benchmarks); resolving it here lets any process, e.g. a sweep worker or ``cytotune.load``
    in a fresh interpreter, rebuild such a run by name."""
    base = name[: -len(TINY_SUFFIX)] if name.endswith(TINY_SUFFIX) else None
    card = registered_card(base, on_the_fly=False) if base else None  # tiny of a named card
    return remember(name, tiny_card(card)) if card is not None else None


def get_card(name: str) -> ModelCard:
    """The card called ``name``, or one built on the fly for ``<family>:<model>`` or
    ``<card>-tiny``."""
    if isinstance(name, ModelCard):
        return name
    card = registered_card(name) or _tiny_variant(name) or family_card(name)
    if card is not None:
        return card
    known = [c.name for c in registered_cards()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    lines = [f"unknown model '{name}'."]
    if close:
        lines.append(f"Did you mean: {', '.join(close)}?")
    lines.append(f"Known models: {', '.join(known)}.")
    helps = naming_help()
    if helps:
        lines.append("Any model of these libraries can also be named directly:")
        lines.extend(f"  {h}" for h in helps)
    raise UnknownModelError("\n".join(lines), name=name, suggestions=close)
