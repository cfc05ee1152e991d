"""Import direction between layers (STYLE.md), checked with ast like trio's test_exports."""

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
    "duraflow.actors.messages",
    "duraflow.actors.router",
    "duraflow.engine.definitions",
    "duraflow.engine.ids",
    "duraflow.loop_thread",
    "duraflow.backoff",
}
ENGINE_MAY_IMPORT = {
    "duraflow.config",  # a leaf: settings and their ranges
    "duraflow.description",
    "duraflow.actors.messages",
    "duraflow.actors.router",
    "duraflow.storage.codec",
    "duraflow.cdc.events",
    "duraflow.cdc.subscribers",  # the client is the user's door to the CDC stream
    "duraflow.errors",
    "duraflow.loop_thread",  # a leaf: the blocking client's background loop
}


def _modules() -> dict[str, set[str]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    # "from duraflow.cdc import events" imports the module duraflow.cdc.events
                    sub = f"{node.module}.{alias.name}"
                    is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                    imports.add(sub if is_module else node.module)
        found[name] = imports
    return found


MODULES = _modules()


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaf_modules_import_only_leaves(leaf: str) -> None:
    ours = {i for i in MODULES[leaf] if i.startswith("duraflow")}
    assert set() == ours - LEAVES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("duraflow.engine")))
def test_engine_stays_pure(module: str) -> None:
    imports = MODULES[module]
    ours = {i for i in imports if i.startswith("duraflow") and not i.startswith("duraflow.engine")}
    assert set() == ours - ENGINE_MAY_IMPORT
    assert set() == {i for i in imports if i.split(".")[0] in {"ray", "sqlite3", "duckdb"}}


def test_only_storage_touches_sqlite() -> None:
    users = {m for m, imports in MODULES.items() if "sqlite3" in imports}
    assert set() == {m for m in users if not m.startswith("duraflow.storage")}


def test_only_the_ray_host_imports_ray() -> None:
    users = {m for m, imports in MODULES.items() if any(i.split(".")[0] == "ray" for i in imports)}
    assert {"duraflow.actors.ray_host"} == users


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
