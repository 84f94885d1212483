"""The card registry: model name -> :class:`ModelCard`.

Built-in cards live in ``cytotune.models.cards``. Besides registered names, ``<family>:<name>``
builds a card on the fly for families that support it (``timm:<model>``,
``open_clip:<arch>[:<tag>]``), with preprocessing from the library's pretrained config, the
feature width computed from the model, and the family's LoRA target map.
"""
from __future__ import annotations

import difflib
import threading

from cytotune.models.card import ModelCard
from cytotune.models.errors import UnknownModelError
from cytotune.models.families import get_family, list_families
from cytotune.models.pooling import MODEL_POOLING, known_poolings

_CARDS: dict[str, ModelCard] = {}
_DYNAMIC: dict[str, ModelCard] = {}
_LOCK = threading.Lock()
_BUILTIN_LOADED = False


def _ensure_builtin() -> None:
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        import cytotune.models.cards  # noqa: F401  (registers the built-in cards)


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


def list_cards() -> list[ModelCard]:
    """The registered cards, sorted by name."""
    _ensure_builtin()
    return [_CARDS[k] for k in sorted(_CARDS)]


def naming_help() -> list[str]:
    """How each family that supports it lets any of its models be named."""
    return [f.naming_help for f in list_families() if f.naming_help]


TINY_SUFFIX = "-tiny"


def _tiny_variant(name: str) -> ModelCard | None:
    """``<card>-tiny`` names the small random-init variant of a registered card (tests, CPU
    benchmarks); resolving it here lets any process, e.g. a sweep worker or ``cytotune.load``
    in a fresh interpreter, rebuild such a run by name."""
    base = name[: -len(TINY_SUFFIX)] if name.endswith(TINY_SUFFIX) else None
    if not base or base not in _CARDS:
        return None
    from cytotune.models.tiny import tiny_card  # tiny builds on this module

    card = tiny_card(base)
    with _LOCK:
        _DYNAMIC[name] = card
    return card


def get_card(name: str) -> ModelCard:
    """The card called ``name``, or one built on the fly for ``<family>:<model>`` or
    ``<card>-tiny``."""
    _ensure_builtin()
    if isinstance(name, ModelCard):
        return name
    if name in _CARDS:
        return _CARDS[name]
    if name in _DYNAMIC:
        return _DYNAMIC[name]
    tiny = _tiny_variant(name)
    if tiny is not None:
        return tiny
    prefix, sep, rest = name.partition(":")
    if sep and rest:
        families = {f.name: f for f in list_families() if f.naming_help}
        if prefix in families:
            card = families[prefix].card_from_name(rest)
            validate_card(card)
            with _LOCK:
                _DYNAMIC[name] = card
            return card
    known = sorted(_CARDS)
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
