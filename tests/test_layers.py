"""Import direction between layers (STYLE.md "Import direction"), checked with ast like trio's
test_exports: which package may import which, and no import cycles between modules.

Every import counts, wherever it is written: at the top, under ``if TYPE_CHECKING:`` or inside
a function. A cycle is broken by moving the shared piece where it belongs (a protocol declared
by its user, a leaf), not by hiding an import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "duraflow"

LEAVES = {
    "duraflow.errors",
    "duraflow.config",
    "duraflow.description",
    "duraflow.cdc.events",
    "duraflow.storage.codec",
    "duraflow.storage.rows",  # the rows the partition machine reads and writes
    "duraflow.actors.messages",
    "duraflow.actors.router",
    "duraflow.engine.definitions",
    "duraflow.engine.retry",  # retry policies and durations (definitions, options, config)
    "duraflow.engine.ids",
    "duraflow.client.host",  # the Host protocol: every layer that reaches partitions names it
    "duraflow.client.blocking",  # the blocking runner: the client's and subscriptions' loop
    "duraflow.loop_thread",  # an event loop on a thread of its own (client, hosts, consumer)
    "duraflow.backoff",  # retry with growing waits (hosts, consumer)
}
"""Modules every layer may import. A leaf imports only other leaves (and the standard
library or third-party packages). A new leaf (say storage row types) is added here."""

LAYERS: dict[str, set[str]] = {
    # pure: no SQLite, no Ray, no files (the partition machine included)
    "duraflow.engine": set(),
    # what users hold: reaches partitions through client.host, the archive through a protocol
    "duraflow.client": {
        "duraflow.engine",
        "duraflow.cdc.subscribers",  # the client is the user's door to the CDC stream
    },
    # bytes at rest: mechanics only
    "duraflow.storage": set(),
    # policy over storage; reaches partitions only through client.host
    "duraflow.cdc": {"duraflow.storage"},
    # hosting and routing: owns processes, never workflow logic
    "duraflow.actors": {
        "duraflow.engine",
        "duraflow.storage",
        "duraflow.cdc.consumer",  # ray_consumer runs the archive's consumer as a Ray actor
    },
}
"""Each package: what its modules may import besides leaves and their own package (package
or module names). A module belongs to the longest package that contains it."""

COMPOSITION_ROOTS = {"duraflow", "duraflow.runtime", "duraflow.serving", "duraflow.testing"}
"""Modules that know every layer; no other module imports them."""
COMPOSITION_PACKAGES = {"duraflow.cli"}
"""Packages whose modules are all composition roots (the ``duraflow`` command's verbs): they
may import each other and every layer, and no module outside the roots imports them."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                # "from duraflow.cdc import events" imports the module duraflow.cdc.events
                sub = f"{base}.{alias.name}"
                found.add(sub if _is_module(sub) else base)
    return found


def _within(module: str, prefixes: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _modules() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, _module_name(p)) for p in PACKAGE.rglob("*.py")}


MODULES = _modules()
OURS = {
    name: {i for i in imports if i.split(".")[0] == "duraflow"} for name, imports in MODULES.items()
}
ROOTS = {m for m in MODULES if m in COMPOSITION_ROOTS or _within(m, COMPOSITION_PACKAGES)}


def _layer(module: str) -> str:
    containing = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    assert containing, (
        f"{module} is in no layer: add its package to LAYERS (or the module to LEAVES or "
        "COMPOSITION_ROOTS) in tests/test_layers.py"
    )
    return max(containing, key=len)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaf_modules_import_only_leaves(leaf: str) -> None:
    assert leaf in MODULES, f"LEAVES names {leaf}, which does not exist"
    assert set() == OURS[leaf] - LEAVES


@pytest.mark.parametrize("module", sorted(set(MODULES) - LEAVES - ROOTS))
def test_imports_follow_the_layers(module: str) -> None:
    layer = _layer(module)
    allowed = LAYERS[layer] | {layer}
    forbidden = {i for i in OURS[module] - LEAVES if not _within(i, allowed)}
    assert set() == forbidden, f"{layer} may import leaves and {sorted(allowed)} only"


def test_the_composition_roots_exist() -> None:
    assert set() == (COMPOSITION_ROOTS | COMPOSITION_PACKAGES) - set(MODULES)


def test_only_the_composition_roots_import_them() -> None:
    importers = {m for m, imports in OURS.items() if imports & ROOTS}
    assert set() == importers - ROOTS


@pytest.mark.parametrize(
    "package", sorted(m for m in MODULES if (PACKAGE.parent / m.replace(".", "/")).is_dir())
)
def test_subpackage_init_holds_only_a_docstring(package: str) -> None:
    if package == "duraflow":
        return  # the facade
    body = ast.parse((PACKAGE.parent / package.replace(".", "/") / "__init__.py").read_text()).body
    assert 1 == len(body)
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycles() -> None:
    edges = {m: {i for i in imports if i in MODULES} for m, imports in OURS.items()}
    cycles = _cycles(edges)
    assert [] == cycles, f"modules that import each other (TYPE_CHECKING included): {cycles}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert [["a", "b", "c"]] == _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})


PURE_LAYERS = ("duraflow.engine", "duraflow.client")
HEAVY_LIBRARIES = {"ray", "sqlite3", "duckdb", "pyarrow", "pyiceberg"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, set(PURE_LAYERS))))
def test_engine_and_client_stay_pure(module: str) -> None:
    assert set() == {i for i in MODULES[module] if i.split(".")[0] in HEAVY_LIBRARIES}


def test_only_storage_touches_sqlite() -> None:
    users = {m for m, imports in MODULES.items() if "sqlite3" in imports}
    assert set() == {m for m in users if not m.startswith("duraflow.storage")}


def test_only_the_ray_host_and_the_workers_import_ray() -> None:
    users = {m for m, imports in MODULES.items() if any(i.split(".")[0] == "ray" for i in imports)}
    parts = ("host", "tasks", "cluster", "deployment", "consumer", "engine")
    host = {f"duraflow.actors.ray_{part}" for part in parts}
    workers = {"duraflow.actors.workers", "duraflow.actors.pool_dispatch"}  # and their sender
    assert {*host, *workers} == users


ARCHIVE_LIBRARIES = ("pyarrow", "pyiceberg", "duckdb", "sqlalchemy")


@pytest.mark.parametrize("module", ["duraflow.actors.ray_host", "duraflow"])
def test_a_partition_process_does_not_import_the_archive_libraries(module: str) -> None:
    """A restarted partition actor imports its module (and so the ``duraflow`` package) before
    it can serve: the archive's libraries cost about a second there (measured by
    ``./dev bench restart``), and only the archive's consumer and readers use them."""
    code = (
        f"import sys, {module}; top = {{m.split('.')[0] for m in sys.modules}}; "
        f"print(' '.join(sorted(top & {set(ARCHIVE_LIBRARIES)!r})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [] == loaded
