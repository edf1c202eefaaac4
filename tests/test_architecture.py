"""The house of `ccr/`, read with `ast`: a table of layers, imports only downward, no cycles.

Every import counts: those inside functions (a lazy import that closes a loop is still a loop: it only
moves the failure to run time) and those under `if TYPE_CHECKING:` (a type-only import still ties the
two modules: a reader must know both). Importing `ccr.a.b` also runs `ccr/a/__init__.py`, so it counts as
an import of the package `ccr.a` too (except from inside `ccr.a`, whose `__init__` is already running).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ccr"

# The layers of ccr, lowest first. A module may import its own unit (the package or module named here) and
# any unit of a lower layer; units of one layer never import each other.
LAYERS: list[tuple[str, ...]] = [
    ("ccr._version", "ccr.errors", "ccr.typed", "ccr.seeds"),  # no ccr imports but each other
    ("ccr.io",),  # storage, staging, checkpoints, provenance, tracking, image files
    ("ccr.config",),  # the schema, its rules, YAML, plugins
    ("ccr.data",),  # datasets, tasks, orders, input pipelines
    ("ccr.models",),  # encoders, tokenizers, pretrained weights, losses, batch embedding
    ("ccr.strategies", "ccr.index"),  # how θ changes; galleries, search and indexing policies
    ("ccr.train",),  # the per-task training loop
    ("ccr.measure",),  # querying, recall, anatomy, the results schema
    ("ccr.study", "ccr.analysis"),  # one study end to end; aggregation across studies
    ("ccr.distributed",),  # the Ray layer: the only unit that imports ray
    ("ccr.api", "ccr.notebook"),  # the extension surface; the Python API (run, load_results, analyze)
    ("ccr.cli", "ccr"),  # the command line; the package's own names (handed on from ccr.notebook)
]
BASE = set(LAYERS[0])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The ccr modules (and packages) that `path` imports, at any depth of its code, TYPE_CHECKING included."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        parts = name.split(".")
        for i in range(2, len(parts) + 1):  # the package __init__s that run on the way
            found.add(".".join(parts[:i]))

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for a in node.names:
                sub = f"{base}.{a.name}"
                add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    ancestors = {".".join(me.split(".")[:i]) for i in range(1, len(me.split(".")))}
    return {m for m in found if m in modules and m != me and m not in ancestors}


def graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def unit_of(module: str) -> str:
    """The LAYERS entry a module belongs to (its package, or itself)."""
    best = ""
    for layer in LAYERS:
        for u in layer:
            inside = module == u or (module.startswith(u + ".") and u != "ccr")  # the root is its __init__ alone
            if inside and len(u) > len(best):
                best = u
    return best


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


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
        for w in sorted(g.get(v, ())):
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


def test_every_module_has_a_layer():
    missing = sorted(m for m in graph() if not unit_of(m))
    assert not missing, f"modules in no layer of LAYERS: {missing}"


def test_imports_only_go_down_the_layers():
    """A unit imports itself and lower layers only: the table above is the house's plan."""
    bad = []
    for m, deps in graph().items():
        mu = unit_of(m)
        for d in sorted(deps):
            du = unit_of(d)
            if du == mu or (mu in BASE and du in BASE):
                continue
            if layer_of(du) >= layer_of(mu):
                bad.append(f"{m} -> {d} ({du}, layer {layer_of(du)}, is not below {mu}, layer {layer_of(mu)})")
    assert not bad, "imports that do not go down the layers:\n" + "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    found = cycles(g)
    detail = [" -> ".join(c) + f"  (edges: {', '.join(f'{a}->{b}' for a in c for b in sorted(g[a]) if b in c)})"
              for c in found]
    assert not found, "import cycles among ccr modules:\n" + "\n".join(detail)


def test_package_inits_only_hand_names_on():
    """An `__init__.py` holds a docstring, imports, `__all__` and at most a lazy `__getattr__`: logic lives in a
    module a reader can find by its name."""
    bad = []
    for f in sorted(ROOT.rglob("__init__.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]:
                continue
            if isinstance(node, ast.FunctionDef) and node.name in ("__getattr__", "__dir__"):
                continue
            bad.append(f"{f.relative_to(ROOT.parent)}:{node.lineno} {type(node).__name__}")
    assert not bad, f"logic in package __init__ files: {bad}"


def test_only_the_ray_layer_imports_ray():
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        if unit_of(module_name(f)) in ("ccr.distributed",):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{f.relative_to(ROOT.parent)}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert not bad, f"ray imported outside ccr.distributed: {bad}"


def test_the_graph_is_read_correctly():
    """The checker itself: it sees lazy, relative and TYPE_CHECKING imports and the package __init__ on the way."""
    g = graph()
    assert "ccr.distributed.train" in g["ccr.distributed.runner"]  # a function-level import
    assert "ccr.strategies.base" in g["ccr.strategies.replay"]
    assert "ccr.models" in g["ccr.strategies.base"]  # only under TYPE_CHECKING there: still counted
    assert "ccr.io" in g["ccr.data.generated"]  # ccr.io.storage runs ccr/io/__init__.py first
    assert "ccr.strategies" not in g["ccr.strategies.replay"]  # its own package's __init__ is already running
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert unit_of("ccr.index.search") == "ccr.index" and unit_of("ccr.errors") == "ccr.errors"
    assert unit_of("ccr.somewhere_new") == ""  # a new flat module must be given a layer


def test_the_config_schema_imports_no_registry():
    """Config validation is composed above the registries (ccr.study.configure): ccr.config knows the schema
    and needs nothing that registers strategies or policies, so what adds to a registry is imported first."""
    deps = set().union(*(d for m, d in graph().items() if unit_of(m) == "ccr.config"))
    assert {unit_of(d) for d in deps} <= {"ccr.config", "ccr.errors", "ccr.typed", "ccr.io"}, deps
    assert {"ccr.config", "ccr.strategies", "ccr.index.policies"} <= graph()["ccr.study.configure"]


def test_the_analysis_scripts_use_the_public_api_only():
    """The top-level analysis/ folder (scripts that turn results into tables) imports ccr's public API alone:
    `ccr` (load_results, analyze) and `ccr.analysis`; and it is not installed as a package."""
    import tomllib

    repo = ROOT.parent
    bad = []
    for f in sorted((repo / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{f.name}: {n}" for n in names if n.startswith("ccr") and n not in ("ccr", "ccr.analysis")]
    assert not bad, f"analysis/ scripts reaching into ccr's internals: {bad}"
    found = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert found["include"] == ["ccr*"]
