"""The import graph of `ccr/`, read with `ast`: one direction only.

Every import counts, including those inside functions (a lazy import that closes a loop is still a
loop: it only moves the failure to run time); imports under `if TYPE_CHECKING:` do not run and are
not counted. Core modules (all of `ccr` but the Ray layer `ccr.distributed` and the CLI) never import
`ccr.distributed` or `ccr.cli`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ccr"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The ccr modules that `path` imports (at any depth of its code, TYPE_CHECKING blocks excluded)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != me}


def graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
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

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    g = graph()
    found = cycles(g)
    detail = [" -> ".join(c) + f"  (edges: {', '.join(f'{a}->{b}' for a in c for b in sorted(g[a]) if b in c)})"
              for c in found]
    assert not found, "import cycles among ccr modules:\n" + "\n".join(detail)


def test_core_never_imports_the_ray_layer_or_the_cli():
    """The front ends (the CLI, the Python API of ccr.notebook and the package's own `ccr.run` & co.) and the Ray
    layer may import the core; the core imports none of them."""
    g = graph()
    top = ("ccr.distributed", "ccr.cli", "ccr.notebook")
    bad = {m: sorted(d for d in deps if d.startswith(top))
           for m, deps in g.items() if not m.startswith(top) and m != "ccr"}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"core modules importing the Ray layer or the CLI: {bad}"


def test_the_graph_is_read_correctly():
    """The checker itself: it sees lazy imports and relative imports, and skips TYPE_CHECKING blocks."""
    g = graph()
    assert "ccr.distributed.train" in g["ccr.distributed.runner"]  # a function-level import
    assert "ccr.strategies.base" in g["ccr.strategies.replay"]
    assert "ccr.models" not in g["ccr.strategies.base"]  # only under TYPE_CHECKING there
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_config_schema_imports_no_registry():
    """Config validation is composed above the registries (ccr.configure): ccr.config knows the schema and
    needs nothing that registers strategies or policies, so what adds to a registry is imported first."""
    assert graph()["ccr.config"] <= {"ccr.errors", "ccr.typed"}, graph()["ccr.config"]
    assert {"ccr.config", "ccr.strategies", "ccr.policies"} <= graph()["ccr.configure"]
