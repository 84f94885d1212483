"""Lazy package exports (PEP 562), so importing one light part of a package (``cytotune.data``'s
error type, ``cytotune.models``' cards) does not import torch through its heavy siblings.

A package lists ``{public name: module}`` and binds the returned functions::

    __getattr__, __dir__ = lazy_exports(__name__, {"DataError": "cytotune.data.dataset", ...})

Nothing here imports cytotune, so every layer may use it.
"""
from __future__ import annotations

import importlib
import sys
import types
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

    sys.modules[package].__class__ = _module_class(package, names)
    return __getattr__, __dir__


def _module_class(package: str, names: Mapping[str, str]) -> type:
    """A module type for ``package`` that keeps an exported function when the import system
    binds the same-named submodule over it (``cytotune.inference.predict``: the function, as
    with eager imports, not the module that defines it)."""

    class LazyPackage(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if (isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}"
                    and names.get(name) == value.__name__ and hasattr(value, name)):
                value = getattr(value, name)
            super().__setattr__(name, value)

    return LazyPackage
