"""The package's layers point down only, and no import cycle exists (issue 26): every import statement of
every module (top-level or inside a function) is read with ``ast``, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: each top-level part of semivit and its layer, from the bottom up; a module may import its own layer or
#: lower ones. data and models are one layer: neither imports the other.
LAYERS = {
    "errors": 0, "core": 0,
    "config": 1,
    "data": 2, "models": 2,
    "methods": 3,
    "engine": 4,
    "arguments": 5, "pipeline": 5, "planning": 5, "probe": 5, "export": 5,
    "labeling": 6, "report": 6, "continual": 6, "video": 6, "bench": 6, "bench_suite": 6, "bench_report": 6,
    "bench_cache": 6, "demo": 6, "api": 6, "comparison": 6, "labelcheck": 6, "path_choice": 6,
    "cli": 7, "cli_evaluate": 7, "__init__": 7,
}
SIDEWAYS = {("data", "models"), ("models", "data")}  # same layer, kept apart


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / "semivit").rglob("*.py")):
        rel = f.relative_to(SRC).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return out


def imports() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and t != "semivit":
                    edges[m].add(t)
    return edges


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle():
    edges = imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(w):] + [w]))
            if w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(edges):
        if v not in state:
            visit(v)


def test_layers_point_down_only():
    upward = []
    for m, targets in imports().items():
        for t in targets:
            a, b = part(m), part(t)
            assert a in LAYERS and b in LAYERS, f"{m} or {t} is in no layer: add its part to LAYERS"
            if a != b and (LAYERS[b] > LAYERS[a] or (a, b) in SIDEWAYS):
                upward.append(f"{m} imports {t}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))
