"""The package's import graph: every module imports, no module imports itself back through others (no cycles),
and the layers only import downwards.

Layers, lowest first (a module may import from its own layer and the ones below):

1. ``core``: the math; imports nothing else of the package.
2. ``modeling``, ``metrics``, ``distributed``: models and process helpers on top of the math.
3. ``data``, ``rewards``, ``rollout``: prompts and records, rewards, generation and scoring; never objectives or
   the loops.
4. ``objectives``: what an objective computes; never the loops (``train``), the tracker or the entry points.
5. ``train``: the loops; never the entry points (``__main__``, ``cli``, ``benchmark``, ``peer_benchmark``,
   ``compare``).

The graph counts every import statement, also those inside functions (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rlhf_exp"
ENTRY_POINTS = ("rlhf_exp.__main__", "rlhf_exp.cli", "rlhf_exp.benchmark", "rlhf_exp.peer_benchmark",
                "rlhf_exp.compare")
# (modules, what they must not import): prefixes of dotted module names
FORBIDDEN = [
    (("rlhf_exp.core",), ("rlhf_exp.",), ("rlhf_exp.core",)),
    (("rlhf_exp.modeling", "rlhf_exp.metrics", "rlhf_exp.distributed"),
     ("rlhf_exp.data", "rlhf_exp.rewards", "rlhf_exp.rollout", "rlhf_exp.objectives", "rlhf_exp.train",
      "rlhf_exp.tracking") + ENTRY_POINTS, ()),
    (("rlhf_exp.data", "rlhf_exp.rewards", "rlhf_exp.rollout"),
     ("rlhf_exp.objectives", "rlhf_exp.train", "rlhf_exp.tracking") + ENTRY_POINTS, ()),
    (("rlhf_exp.objectives",), ("rlhf_exp.train", "rlhf_exp.tracking") + ENTRY_POINTS, ()),
    (("rlhf_exp.train",), ENTRY_POINTS, ()),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> the package modules it imports`` (``from a.b import c`` counts as ``a.b.c`` when that is a
    module, else ``a.b``)."""
    mods = modules()

    def known(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t.startswith("rlhf_exp") and known(t) != m:
                    graph[m].add(known(t))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_only_downwards():
    graph = import_graph()
    bad = []
    for sources, forbidden, allowed in FORBIDDEN:
        for m, deps in graph.items():
            if not any(m == s or m.startswith(s + ".") for s in sources):
                continue
            for d in sorted(deps):
                hit = any(d == f or d.startswith(f if f.endswith(".") else f + ".") or d == f.rstrip(".")
                          for f in forbidden)
                if hit and not any(d == a or d.startswith(a + ".") for a in allowed):
                    bad.append(f"{m} -> {d}")
    assert bad == []


def test_every_module_imports():
    """Every module imports, in a fresh interpreter."""
    names = [m for m in modules() if not m.endswith("__main__")]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
