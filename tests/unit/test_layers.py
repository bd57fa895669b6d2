"""The one-way floors of the architecture (README, Layout): cli -> api ->
runner (run_flow) -> flows -> tasks -> drivers, with the helpers that reverts,
recover and gc share below the tasks.  Read from the source (every import,
function-level ones included), so a lazy import cannot hide a cycle."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(ROOT, "cgsnap")

# What each floor may NOT import (prefixes of module names).
FORBIDDEN = {
    "cgsnap.drivers": ("cgsnap.tasks", "cgsnap.flows", "cgsnap.runner", "cgsnap.api",
                       "cgsnap.cli", "cgsnap.recovery", "cgsnap.gc"),
    "cgsnap.tasks": ("cgsnap.flows", "cgsnap.runner", "cgsnap.api", "cgsnap.cli",
                     "cgsnap.recovery", "cgsnap.gc"),
    "cgsnap.flows": ("cgsnap.runner", "cgsnap.api", "cgsnap.cli", "cgsnap.recovery",
                     "cgsnap.gc"),
    "cgsnap.runner": ("cgsnap.api", "cgsnap.cli", "cgsnap.recovery", "cgsnap.gc"),
    "cgsnap.recovery": ("cgsnap.api", "cgsnap.cli"),
    "cgsnap.gc": ("cgsnap.api", "cgsnap.cli"),
    "cgsnap.verify": ("cgsnap.api", "cgsnap.cli", "cgsnap.runner"),
    "cgsnap.retention": ("cgsnap.api", "cgsnap.cli", "cgsnap.runner", "cgsnap.drivers"),
    "cgsnap.api": ("cgsnap.cli",),
    "cgsnap.hostrun": ("cgsnap.cli",),
}


def _modules():
    mods = {}
    for dirpath, _dirs, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name, path, mods):
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
    return {m for m in out if m in mods and m != name}


def _graph():
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_there_is_no_import_cycle():
    assert _cycles(_graph()) == []


def test_no_module_imports_a_floor_above_its_own():
    bad = []
    for name, deps in _graph().items():
        for floor, forbidden in FORBIDDEN.items():
            if name == floor or name.startswith(floor + "."):
                bad += [f"{name} -> {d}" for d in deps
                        if any(d == f or d.startswith(f + ".") for f in forbidden)]
    assert bad == []


def test_the_checker_sees_a_cycle_and_a_lazy_upward_import(tmp_path):
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    probe = tmp_path / "x.py"
    probe.write_text("def f():\n    from cgsnap import api\n")
    assert _imports("cgsnap.tasks.x", str(probe), {"cgsnap.tasks.x": "", "cgsnap.api": ""}) \
        == {"cgsnap.api"}
