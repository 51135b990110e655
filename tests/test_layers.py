"""The package's import graph has no cycles, and recbole_kd modules import each other at module level.

Every ``import`` of a recbole_kd module is an edge, wherever it is written (module level or inside a
function), so an import hidden in a function cannot hide a cycle. Importing ``a.b.c`` also runs the
``__init__`` of every package above it (``a.b``) that the importer is not inside, so that is an edge too:
it is how a package ``__init__`` that imports its submodules can close a circle.

Function-local imports of recbole_kd modules are allowed only where they keep an optional dependency
optional (the imported module needs an extra: matplotlib, ray, starlette / uvicorn, ...); such a line
says so in a comment containing ``optional``.
"""
from __future__ import annotations

import ast
import os


ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recbole_kd")
PKG = "recbole_kd"


def _modules(root: str = ROOT) -> dict[str, str]:
    mods = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(root))[:-3].replace(os.sep, ".")
                mods[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return mods


def _resolve(name: str, mods: dict) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(root: str = ROOT):
    """{module: {imported module: [(line, function-local?, source line)]}} for every recbole_kd import."""
    mods = _modules(root)
    edges: dict[str, dict[str, list]] = {m: {} for m in mods}
    for mod, path in mods.items():
        with open(path, encoding="utf-8") as f:
            src = f.read()
        lines = src.splitlines()
        is_pkg = path.endswith("__init__.py")

        def targets(node, mod=mod, is_pkg=is_pkg):
            if isinstance(node, ast.Import):
                return [a.name for a in node.names if a.name.split(".")[0] == PKG]
            base = node.module or ""
            if node.level:
                parts = mod.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != PKG:
                return []
            return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]

        def visit(node, local, mod=mod, lines=lines, targets=targets):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for t in targets(child):
                        target = _resolve(t, mods)
                        if target and target != mod:
                            text = " ".join(lines[child.lineno - 1 : child.end_lineno])
                            edges[mod].setdefault(target, []).append((child.lineno, local, text))
                visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)), mod, lines, targets)

        visit(ast.parse(src), False)
    return edges


def runtime_graph(edges) -> dict[str, set]:
    """Import edges plus the package ``__init__`` files an import runs on the way (see the module doc)."""
    graph = {m: set() for m in edges}
    for mod, targets in edges.items():
        for target in targets:
            graph[mod].add(target)
            parts = target.split(".")
            for i in range(2, len(parts)):
                package = ".".join(parts[:i])
                if package in graph and not (mod == package or mod.startswith(package + ".")):
                    graph[mod].add(package)
    return graph


def find_cycle(graph) -> list[str] | None:
    """One import cycle (its modules in order, first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


# The layers of CONTRIBUTING.md ("Layout"), bottom first: a module imports only from its own layer or lower.
# A name covers the module and everything under it; the longest matching name decides.
LAYERS = [
    ("base", ["errors", "utils", "report", "protocol", "fused", "checkpoint", "serving.artefact"]),
    ("engine", ["", "distributed", "trainer", "registry", "compat"]),  # "": recbole_kd/__init__.py
    ("settings", ["kd", "kd.base", "kd.losses", "kd.gate", "kd.teacher_spec", "transfer", "transfer.spec",
                  "settings_check", "config", "datasets"]),
    ("models", ["models", "transfer.text", "transfer.mapping"]),
    ("run", ["launch", "quick_start"]),
    ("kd, transfer", ["kd.outputs", "kd.ensemble", "zoo", "kd.teacher", "kd.trainer", "transfer.trainer",
                      "models.distill", "models.transfer"]),
    ("front ends", ["__main__", "args", "cli", "bench", "tune", "serving", "zoo.export", "datasets.__main__"]),
]


def layer_of(module: str) -> int | None:
    name = module[len(PKG) + 1:] if module != PKG else ""
    best = None
    for index, (_, names) in enumerate(LAYERS):
        for n in names:
            if (n == "" and name == "") or (n and (name == n or name.startswith(n + "."))):
                if best is None or len(n) > best[1]:
                    best = (index, len(n))
    return best[0] if best else None


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones():
    edges = import_edges()
    assert not [m for m in edges if layer_of(m) is None], "add these modules to LAYERS (and CONTRIBUTING.md)"
    up = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
          for m, targets in edges.items() for t in targets if layer_of(t) > layer_of(m)]
    assert not up, "imports up the layers:\n" + "\n".join(up)


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(runtime_graph(import_edges()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_local_imports_of_the_package_only_keep_an_extra_optional():
    hidden = [f"{mod}:{line}: {text.strip()}" for mod, targets in import_edges().items()
              for sites in targets.values() for line, local, text in sites if local and "optional" not in text]
    assert not hidden, "import at module level (or say in a comment which optional extra it keeps optional):\n" + "\n".join(hidden)


def test_the_checks_find_a_cycle_hidden_in_a_function_and_one_through_a_package_init(tmp_path):
    pkg = tmp_path / PKG
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from recbole_kd import b\n")
    (pkg / "b.py").write_text("from recbole_kd.a import f\n")
    edges = import_edges(str(pkg))
    assert edges["recbole_kd.a"]["recbole_kd.b"][0][1] is True  # seen as function-local
    assert find_cycle(runtime_graph(edges)) == ["recbole_kd.a", "recbole_kd.b", "recbole_kd.a"]
    # c imports sub.leaf; running sub/__init__ imports d, which imports c: a cycle through the package init
    (pkg / "a.py").write_text("")
    (pkg / "b.py").write_text("")
    (pkg / "c.py").write_text("from recbole_kd.sub.leaf import x\n")
    (pkg / "sub" / "__init__.py").write_text("from recbole_kd import d\n")
    (pkg / "sub" / "leaf.py").write_text("x = 1\n")
    (pkg / "d.py").write_text("from recbole_kd.c import y\n")
    assert find_cycle(runtime_graph(import_edges(str(pkg)))) == ["recbole_kd.c", "recbole_kd.sub", "recbole_kd.d",
                                                                 "recbole_kd.c"]
    # a package init importing its own submodules is no cycle
    (pkg / "d.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from recbole_kd.sub import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from recbole_kd.sub import other\n")
    (pkg / "sub" / "other.py").write_text("")
    assert find_cycle(runtime_graph(import_edges(str(pkg)))) is None


_IMPORT_EACH = """
import importlib, sys, traceback
import torch, recbole  # the heavy third-party packages, loaded once
failed = []
for name in sys.argv[1:]:
    for key in [k for k in sys.modules if k == "recbole_kd" or k.startswith("recbole_kd.")]:
        del sys.modules[key]  # a fresh recbole_kd for every module
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("recbole_kd"):
            failed.append(name + ": " + traceback.format_exc())
        else:
            print("skipped " + name + ": needs " + str(exc.name) + " (an extra)")
    except Exception:
        failed.append(name + ": " + traceback.format_exc())
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first():
    """Each module, imported first into a fresh recbole_kd, imports: the run-time check of the graph above
    (an import cycle fails here with "partially initialized module")."""
    import subprocess
    import sys

    names = sorted(m for m in _modules() if not m.endswith("__main__"))
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True, text=True,
                          cwd=os.path.dirname(ROOT), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
