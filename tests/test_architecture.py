"""The library's import graph, read from the source (function-level imports included): no
cycles but the registry's self-registration, and no lower layer importing a job or the figures."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import workbench

ROOT = Path(workbench.__file__).parent
JOBS = {"workbench.pipeline", "workbench.finetune", "workbench.online", "workbench.study", "workbench.sweep",
        "workbench.jobs"}
REGISTRY = "workbench.algos.base"
"""``get_algo`` imports the built-in algorithms, which import the registry to register themselves."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level or not (node.module or "").startswith("workbench"):
                    continue
                targets = [owner(f"{node.module}.{a.name}") for a in node.names]
            else:
                targets = [owner(a.name) for a in node.names if a.name.startswith("workbench")]
            edges[name].update(t for t in targets if t and t != name and t != "workbench")
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            connect(v)
    return out


def test_cycle_finder_finds_a_known_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_but_the_registry():
    edges = import_graph()
    assert "workbench.algos.scaled_ql" in edges[REGISTRY]  # the graph sees function-level imports
    without_registration = {m: {t for t in ts if not (m == REGISTRY and t.startswith("workbench.algos."))}
                            for m, ts in edges.items()}
    assert cycles(without_registration) == []


def test_lower_layers_import_no_job_and_no_figures():
    edges = import_graph()
    lower = sorted(f"{m} -> {t}" for m, ts in edges.items() for t in ts if m not in JOBS
                   and not m.startswith("workbench.viz") and (t in JOBS or t.startswith("workbench.viz")))
    assert lower == []
    # Figures read runs and sweep files; they never call into a training job.
    upward = sorted(f"{m} -> {t}" for m, ts in edges.items() for t in ts
                    if m.startswith("workbench.viz") and t in JOBS - {"workbench.sweep"})
    assert upward == []
