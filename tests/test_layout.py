"""The layout's rules (ARCHITECTURE.md), read from the source: no import cycles, lazy imports
included, and the device side never reaching into training or the export bridge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"edgekd": REPO / "edgekd", "edgekd.converters": REPO / "converters"}
DEVICE_SIDE = ("edgekd.device", "edgekd.maths", "edgekd.contract", "edgekd.recipe",
               "edgekd.tables", "edgekd.data")  # fmt: skip
TRAINING_ONLY = ("edgekd.training", "edgekd.export", "edgekd.converters")
# A TF-free name table: the recipe checks `arch:` against it; Keras loads only in build_model.
ALLOWED = {("edgekd.recipe.schema", "edgekd.training.models")}


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join((prefix, *parts)).removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every edgekd module `module` imports, at module level or inside a function, leaving
    out `if TYPE_CHECKING:` blocks (annotations only)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.update(f"{node.module}.{a.name}" for a in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(ast.parse(MODULES[module].read_text()).body)
    resolved = {_resolve(n) for n in found if n.startswith("edgekd")}
    return {r for r in resolved if r and r != module}


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_checker_sees_a_cycle_and_a_lazy_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    # runtime/loader.py imports the backends; they must show up as its imports
    assert "edgekd.device.runtime.tflite" in GRAPH["edgekd.device.runtime.loader"]
    # predict imports load_runner inside a function
    assert "edgekd.device.runtime" in GRAPH["edgekd.device.predict"]


def test_no_import_cycles_lazy_imports_included():
    assert _cycles(GRAPH) == []


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if _under(m, DEVICE_SIDE))
)
def test_device_side_never_imports_training_or_export(module):
    bad = sorted(
        d for d in GRAPH[module] if _under(d, TRAINING_ONLY) and (module, d) not in ALLOWED
    )
    assert bad == [], f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _under(m, ("edgekd.training",))))
def test_training_never_imports_the_export_bridge(module):
    bad = sorted(d for d in GRAPH[module] if _under(d, ("edgekd.export", "edgekd.converters")))
    assert bad == [], f"{module} imports {bad}"
