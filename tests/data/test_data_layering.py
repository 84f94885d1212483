"""cytotune.data is the bottom layer: it must not import any other part of cytotune, except the
dependency-free helpers every layer may use (tests/test_layering.py's ANYWHERE)."""
from __future__ import annotations

import ast
from pathlib import Path

import cytotune.data

DATA_PACKAGE = Path(cytotune.data.__file__).parent
# leaf modules with no cytotune imports of their own (version string, process checks, gc pause, lazy
# package exports)
SHARED_LEAVES = {"cytotune._version", "cytotune._process", "cytotune._gc", "cytotune._lazy"}


def test_data_imports_nothing_else_from_cytotune():
    offenders = []
    for module in sorted(DATA_PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level > 1:  # "from ..models import x" leaves the package
                    offenders.append(f"{module.name}: {'.' * node.level}{node.module or ''}")
                continue
            offenders += [f"{module.name}: {name}" for name in names
                          if (name == "cytotune" or name.startswith("cytotune."))
                          and not name.startswith("cytotune.data")
                          and name not in SHARED_LEAVES]
    assert offenders == []
