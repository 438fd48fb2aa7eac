"""No import loops: the module graph of every import statement in omnisched/, rewards/ and
judges/ (at module level and inside functions; those under `if TYPE_CHECKING:` are for the type
checker only and left out) has no cycle. A function-local import that breaks a cycle hides it
from Python at load time, not from this test."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("omnisched", "rewards", "judges")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules `tree` imports (a name imported from a module counts as it)."""

    def owner(dotted: str) -> str | None:  # the longest known module prefix
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {owner(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".")[: None if is_package else -1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            out |= {owner(f"{base}.{a.name}") for a in node.names}
    return out - {None, name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_loops():
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    known = set(files)
    graph = {
        name: imported(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # it did read the imports
    assert cycles(graph) == []


def test_a_loop_through_a_function_local_import_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from pkg.b import x\nif TYPE_CHECKING:\n    import pkg.c\n")
    assert imported(tree, "pkg.a", False, {"pkg", "pkg.a", "pkg.b", "pkg.c"}) == {"pkg.b"}
