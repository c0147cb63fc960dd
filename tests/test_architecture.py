"""The house rules, read from the source: which room may import which, no import cycles, and
modules small enough to read. Static (ast), so a rule holds for every import, not only the
ones a test happens to run; imports under ``if TYPE_CHECKING:`` are typing only and aside."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: Each folder's dotted package (pyproject.toml's package-dir).
PACKAGES = {
    "protocol": "cordon.protocol",
    "worker": "cordon.worker",
    "runtime/testing": "cordon.testing",
    "runtime": "cordon.runtime",
}
#: The host's rooms, lowest first. A room imports only itself and rooms of a lower rank;
#: rooms of one rank are peers and import neither each other.
RANKS = {
    "_errors": 0,
    "_settings": 1,
    "_packages": 2,
    "_hostapi": 3,
    "_platform": 3,
    "_marketplace": 3,
    "_supervise": 4,
    "_core": 5,
    "_mcp": 6,
    "_cli": 7,
}
MAX_LINES = 800
MAX_TOP_LEVEL_MODULES = 8


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    for folder, package in sorted(PACKAGES.items(), key=lambda kv: -len(kv[0])):
        if rel.is_relative_to(folder):
            parts = [*package.split("."), *rel.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def _sources() -> Iterator[tuple[Path, str]]:
    for folder in ("protocol", "worker", "runtime"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, _module_name(path)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str, known: set[str]) -> Iterator[str]:
    """Every module ``module`` imports at run time (top level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # `from . import _x` names the module _x, not (for this purpose) its package
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            yield from subs or [target]


def _graph() -> dict[str, set[str]]:
    sources = dict((name, path) for path, name in _sources())
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        found = _imports(path, name, set(sources))
        graph[name] = {t for t in found if t in sources and t != name}
    return graph


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["cordon", "runtime"] or len(parts) < 3:
        return None
    return parts[2] if parts[2] in RANKS else None


def test_the_worker_never_imports_the_host_and_the_protocol_imports_neither_side() -> None:
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("cordon.worker"):
            assert not {t for t in targets if t.startswith(("cordon.runtime", "cordon.testing"))}
        if module.startswith("cordon.protocol"):
            assert not {t for t in targets if not t.startswith("cordon.protocol")}, module


def test_each_runtime_room_imports_only_rooms_below_it() -> None:
    wrong = []
    for module, targets in _graph().items():
        room = _room(module)
        if room is None:
            continue
        for target in targets:
            if target.startswith("cordon.testing") or target in {"cordon.runtime"}:
                wrong.append(f"{module} -> {target} (a room never imports the public facade)")
                continue
            other = _room(target)
            if other is None or other == room:
                continue
            if RANKS[other] >= RANKS[room]:
                wrong.append(f"{module} ({room}) -> {target} ({other})")
    assert not wrong, "imports against the room order:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_back_through_a_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("folder", ["runtime", "worker", "protocol"])
def test_no_module_is_over_800_lines(folder: str) -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in (ROOT / folder).rglob("*.py")
    }
    assert not {p: n for p, n in sizes.items() if n > MAX_LINES}


def test_the_runtime_folder_keeps_at_most_8_modules_at_its_top_level() -> None:
    top = sorted(p.name for p in (ROOT / "runtime").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_room_says_what_lives_there() -> None:
    for room in RANKS:
        init = ROOT / "runtime" / room / "__init__.py"
        if room == "_errors" or not init.parent.is_dir():
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 60, f"{init} needs an opening docstring"
