"""Data flows one way: no package of cytotune imports from a layer above it.

data -> models -> adapters -> training -> {inference, experiments, benchmark} -> api
-> {demo, progress_display} -> cli.
(Modules at the same level do not import each other. progress_display is the rich/plain view
of training's observer events: training emits them and never imports a display.)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cytotune

ROOT = Path(cytotune.__file__).parent
LEVEL = {"data": 0, "models": 1, "adapters": 2, "training": 3, "inference": 4,
         "experiments": 4, "benchmark": 4, "api": 5, "demo": 6, "progress_display": 6,
         "cli": 7}
ANYWHERE = {"_version", "_process", "_gc", "_lazy", "_flags", "_atomic"}


def _imported(module: Path, package: str) -> set[str]:
    """Top-level cytotune parts a module imports (relative imports resolved)."""
    out = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level == 1:
                    continue  # inside its own package
                names = [f"cytotune.{node.module}" if node.module else "cytotune"]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "cytotune" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_no_module_imports_from_a_layer_above_or_beside_it():
    offenders = []
    for module in sorted(ROOT.rglob("*.py")):
        rel = module.relative_to(ROOT)
        part = rel.parts[0].removesuffix(".py")
        if part not in LEVEL:
            continue
        for other in _imported(module, part) - ANYWHERE - {part}:
            if other not in LEVEL:
                continue
            if LEVEL[other] >= LEVEL[part]:
                offenders.append(f"{rel}: imports cytotune.{other}")
    assert offenders == []


def _module_imports(package: str) -> dict[str, set[str]]:
    """``cytotune.<package>`` module -> the modules of that package it imports, anywhere in it
    (function-level imports included: a lazy import still makes a circle). ``package`` may be
    dotted (``models.families``)."""
    graph: dict[str, set[str]] = {}
    prefix = f"cytotune.{package}."
    for module in sorted(ROOT.joinpath(*package.split(".")).glob("*.py")):
        if module.stem == "__init__":
            continue  # a package's lazy re-exports, not an import of its modules
        name = prefix + module.stem
        graph[name] = set()
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t.startswith(prefix) and t != name}
    return graph


@pytest.mark.parametrize("package", ["data", "models", "models.families", "adapters", "training",
                                     "training.methods", "inference", "experiments", "benchmark"])
def test_the_modules_of_a_package_import_each_other_without_circles(package):
    graph = _module_imports(package)
    graph = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
