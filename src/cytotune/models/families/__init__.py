"""Family registry: family name -> the object that builds, loads and runs that kind of model.

Adding a kind of model is one :class:`Family` subclass registered here with
:func:`register_family`; nothing else in cytotune branches on family names.
"""
from __future__ import annotations

from cytotune.models.errors import UnknownFamilyError
from cytotune.models.families.base import Family

_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Register ``family`` under ``family.name``."""
    if not family.name:
        raise ValueError("a family needs a name")
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"family '{family.name}' is already registered")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    _ensure_builtin()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnknownFamilyError(f"unknown model family '{name}'; registered families: "
                                 f"{', '.join(sorted(_FAMILIES))}") from None


def list_families() -> list[Family]:
    _ensure_builtin()
    return [_FAMILIES[k] for k in sorted(_FAMILIES)]


_BUILTIN_LOADED = False


def _ensure_builtin() -> None:
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    from cytotune.models.families.conch_family import ConchFamily
    from cytotune.models.families.hf_vit_family import HFViTFamily
    from cytotune.models.families.open_clip_family import OpenClipFamily
    from cytotune.models.families.timm_family import TimmFamily, TimmPyPIWeightsFamily

    for family in (TimmFamily(), TimmPyPIWeightsFamily(), OpenClipFamily(), HFViTFamily(),
                   ConchFamily()):
        _FAMILIES.setdefault(family.name, family)


__all__ = ["Family", "register_family", "get_family", "list_families"]
