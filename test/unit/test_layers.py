"""The package's import graph (read with ast, nothing imported): no circle, and no import from a lower layer to a
higher one (docs/design.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import sglang_fair

ROOT = Path(sglang_fair.__file__).resolve().parent
LAYER = {"core": 0, "data": 0, "policies": 1, "config": 2, "sim": 3, "emulate": 3, "engine": 4, "live": 4,
         "bench": 5, "": 6}
"""Subpackage -> layer ("" = modules at the package root: the commands). The root package itself only holds the
version and counts as layer 0."""


def module_graph() -> dict[str, set[str]]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        base = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                names = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    sub = parts[1] if (ROOT / parts[1]).is_dir() else ""
    return LAYER[sub]


def test_no_import_circle():
    graph = module_graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle.extend(path[path.index(n):] + [m, n] if n in path else [m, n])
                return True
            if n not in state and visit(n, path + [m]):
                return True
        state[m] = 2
        return False

    assert not any(visit(m, []) for m in sorted(graph) if m not in state), cycle


def test_imports_point_down_the_layers():
    upward = [(m, n) for m, ns in module_graph().items() for n in ns if layer(n) > layer(m)]
    assert not upward, upward
    assert all(sub in LAYER for sub in (p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()))
