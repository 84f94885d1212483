"""The card registry: model name -> :class:`ModelCard`, and the checks a card must pass.

The storage only: the built-in cards (``cytotune.models.cards``) register themselves here, and
:mod:`cytotune.models.catalog` looks names up (loading the built-ins, building tiny variants),
so no module below the catalog imports the cards. Besides registered names, ``<family>:<name>``
builds a card on the fly for families that support it (``timm:<model>``,
``open_clip:<arch>[:<tag>]``), with preprocessing from the library's pretrained config, the
feature width computed from the model, and the family's LoRA target map.
"""
from __future__ import annotations

import threading

from cytotune.models.card import ModelCard
from cytotune.models.errors import UnknownModelError
from cytotune.models.families import get_family, list_families
from cytotune.models.pooling import MODEL_POOLING, known_poolings

_CARDS: dict[str, ModelCard] = {}
_DYNAMIC: dict[str, ModelCard] = {}
_LOCK = threading.Lock()


def validate_card(card: ModelCard) -> None:
    """Raise ValueError if a card is inconsistent (unknown family/pooling, bad targets, ...)."""
    family = get_family(card.family)  # raises UnknownFamilyError
    problems = []
    if card.feature_dim <= 0:
        problems.append(f"feature_dim must be positive, got {card.feature_dim}")
    if card.pooling not in known_poolings():
        problems.append(f"unknown pooling {card.pooling!r} (known: {', '.join(known_poolings())})")
    elif card.pooling != MODEL_POOLING and not family.supports_tokens:
        problems.append(f"family '{family.name}' gives no token output, so pooling must be "
                        f"'{MODEL_POOLING}' (got {card.pooling!r})")
    missing = [t for t in card.default_lora_targets if t not in card.lora_targets]
    if missing and card.lora_targets:  # no targets at all: a linear-probe-only card
        problems.append(f"default_lora_targets {missing} are not in lora_targets "
                        f"({', '.join(card.lora_targets) or 'none'})")
    for key, target in card.lora_targets.items():
        if not target.patterns:
            problems.append(f"LoRA target {key!r} has no patterns")
        if target.part is not None:
            index, count = target.part
            if not (count >= 1 and 0 <= index < count):
                problems.append(f"LoRA target {key!r}: part {target.part} is not (index, count)")
    if problems:
        raise ValueError(f"model card '{card.name}': " + "; ".join(problems))


def register_card(card: ModelCard, *, replace: bool = False) -> ModelCard:
    """Add a card; its name must be new (unless ``replace``) and may not contain ':'."""
    if ":" in card.name:
        raise ValueError(f"card name {card.name!r} may not contain ':' (reserved for "
                         f"'<family>:<name>' references)")
    validate_card(card)
    with _LOCK:
        if card.name in _CARDS and not replace and _CARDS[card.name] != card:
            raise ValueError(f"a model card named '{card.name}' is already registered")
        _CARDS[card.name] = card
    return card


def unregister_card(name: str) -> None:
    """Remove a card added with :func:`register_card` or resolved on the fly."""
    with _LOCK:
        found = [table.pop(name, None) for table in (_CARDS, _DYNAMIC)]
    if not any(found):
        raise UnknownModelError(f"no model card named '{name}' is registered")


TINY_SUFFIX = "-tiny"  # ``<card>-tiny`` names a card's small variant (catalog.get_card)


def registered_cards() -> list[ModelCard]:
    """The cards registered so far (the built-in ones once :mod:`cytotune.models.cards` is
    imported, which :mod:`cytotune.models.catalog` does), sorted by name."""
    return [_CARDS[k] for k in sorted(_CARDS)]


def registered_card(name: str, *, on_the_fly: bool = True) -> ModelCard | None:
    """The card registered as ``name`` (or, with ``on_the_fly``, resolved on the fly before),
    if any."""
    card = _CARDS.get(name)
    return card if card is not None or not on_the_fly else _DYNAMIC.get(name)


def remember(name: str, card: ModelCard) -> ModelCard:
    """Keep a card built on the fly for ``name`` (a ``<family>:<model>`` or tiny variant)."""
    with _LOCK:
        _DYNAMIC[name] = card
    return card


def naming_help() -> list[str]:
    """How each family that supports it lets any of its models be named."""
    return [f.naming_help for f in list_families() if f.naming_help]


def family_card(name: str) -> ModelCard | None:
    """The card of ``<family>:<model>`` for a family that names its models so, else None."""
    prefix, sep, rest = name.partition(":")
    if sep and rest:
        families = {f.name: f for f in list_families() if f.naming_help}
        if prefix in families:
            card = families[prefix].card_from_name(rest)
            validate_card(card)
            return remember(name, card)
    return None
