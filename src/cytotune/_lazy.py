"""Lazy package exports (PEP 562), so importing one light part of a package (``cytotune.data``'s
error type, ``cytotune.models``' cards) does not import torch through its heavy siblings.

A package lists ``{public name: module}`` and binds the returned functions::

    __getattr__, __dir__ = lazy_exports(__name__, {"DataError": "cytotune.data.dataset", ...})

Nothing here imports cytotune, so every layer may use it.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: a name is imported from its module on
    first use and then kept in the package's namespace (later lookups cost nothing)."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
