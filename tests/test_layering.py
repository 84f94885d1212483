"""Data flows one way: no package of cytotune imports from a layer above it.

data -> models -> adapters -> training -> analysis -> inference -> {experiments, benchmark} -> api
-> {demo, progress_display} -> cli. (inference loads and evaluates finished runs; a sweep may
evaluate its runs with it, e.g. under perturbations, so it sits below experiments.)
(Modules at the same level do not import each other. progress_display is the rich/plain view
of training's observer events: training emits them and never imports a display.)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cytotune

ROOT = Path(cytotune.__file__).parent
LEVEL = {"data": 0, "models": 1, "adapters": 2, "training": 3, "analysis": 3.5, "inference": 3.75,
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


def _module_name(module: Path) -> str:
    parts = module.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST):
    """Every import statement a module can execute, function-level ones included (a deferred
    import still closes a circle), but not those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _import_graph() -> dict[str, set[str]]:
    """cytotune module -> the cytotune modules it imports (``from pkg import name`` counts as an
    import of ``pkg.name`` when that is a module, else of ``pkg``; relative imports resolved)."""
    files = {_module_name(m): m for m in sorted(ROOT.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, module in files.items():
        graph[name] = set()
        package = name.split(".") if module.stem == "__init__" else name.split(".")[:-1]
        for node in _runtime_imports(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1]
                                    + ([node.module] if node.module else []))
                submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                targets = submodules or [base]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def test_no_import_circles_anywhere_in_the_package():
    """Across packages too (e.g. a family -> the text tower -> the card catalog -> the family
    registry), through package __init__ files and deferred imports alike."""
    graph = _import_graph()
    assert "cytotune.models.families.open_clip_family" in graph  # the walk found the modules
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
