"""The import graph, read statically from the source (lazy imports inside functions count).

`lctx` is the ground floor: no `lctx` module imports `datagen`, `evals`, `configs`, `launch`,
`bench` or the demo, directly or through another module. `datagen` and the JAX-free `lctx`
modules never reach JAX. No import cycles anywhere in the tree.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("lctx", "datagen", "evals", "configs", "launch", "bench", "demo")
JAX = {"jax", "jaxlib", "flax", "optax", "orbax", "grain"}
JAX_FREE = ("lctx", "lctx.records", "lctx.corpora", "lctx.tokenizer", "lctx.files")


def _modules() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    name = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                    out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = \
                        os.path.join(d, f)
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> tuple[set[str], set[str]]:
    """(project modules, external top-level packages) that `name` imports anywhere."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    wanted = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            wanted.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import sub` depends on the submodule when `sub` is one.
            wanted.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                          for a in node.names)
    project, external = set(), set()
    for mod in wanted:
        if mod.split(".")[0] not in PACKAGES:
            external.add(mod.split(".")[0])
            continue
        while mod and mod not in MODULES:
            mod = mod.rpartition(".")[0]
        if mod and mod != name:
            project.add(mod)
    return project, external


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def reach(start: str) -> set[str]:
    """Every project module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()][0]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def upward(name: str) -> list[str]:
    return sorted(m for m in reach(name) if m.split(".")[0] != "lctx")


def cycles() -> list[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v][0]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(tuple(sorted(comp)))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return sorted(out)


LCTX = sorted(m for m in MODULES if m.split(".")[0] == "lctx")


def test_the_graph_sees_lazy_imports_and_the_demo():
    # lctx.attention imports lctx.ring_attention inside get_attention: the graph must see it.
    assert "lctx.ring_attention" in GRAPH["lctx.attention"][0]
    assert "lctx.trainer" in MODULES and len(LCTX) > 10
    assert {"evals.ruler.run", "lctx.trainer"} <= reach("demo.pipeline")


@pytest.mark.parametrize("name", LCTX)
def test_lctx_imports_nothing_above_it(name):
    assert upward(name) == [], f"{name} reaches {upward(name)}: lctx must not import them"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.split(".")[0] == "datagen")
                         + list(JAX_FREE))
def test_jax_free_modules_never_reach_jax(name):
    ext = set().union(*(GRAPH[m][1] for m in reach(name) | {name}))
    assert not ext & JAX, f"{name} reaches {sorted(ext & JAX)}"


def test_no_import_cycles():
    assert cycles() == [], f"import cycles: {cycles()}"

