"""A partition that cannot load recorded workflow code says why, and what to do.

Workflow and activity types are recorded as ``module:qualname`` and imported by the process
that runs them. Here the module is a file written to ``tmp_path``, put on this (driver)
process's ``sys.path`` only: a Ray partition actor does not see it (Ray gives its actors the
driver's working directory, not the driver's ``sys.path``), and a reopened local engine does
not see it once it is taken off again. Names start with ``ci_`` (the registry is global).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import duraflow as df
from duraflow.engine import definitions
from duraflow.engine.definitions import resolve_activity, resolve_workflow

RAY_ARCHIVE = False  # the Ray test is about importing code in partition actors (see conftest)

SOURCE = """
import duraflow as df


@df.activity(inline=True)
def {name}_step(x: int) -> int:
    return x + 1


@df.workflow
async def {name}_flow(ctx: df.WorkflowContext, x: int) -> int:
    await ctx.wait_for_signal("go")
    return await ctx.activity({name}_step, x)
"""


class TmpModule:
    """A workflow module written to its own folder, imported from there by this process."""

    def __init__(self, folder: Path) -> None:
        self.name = f"ci_mod_{uuid.uuid4().hex[:10]}"
        self.folder = folder
        self.path = folder / f"{self.name}.py"
        self.path.write_text(SOURCE.format(name=self.name))
        sys.path.insert(0, str(folder))
        importlib.invalidate_caches()
        self.module: ModuleType = importlib.import_module(self.name)
        self.flow = getattr(self.module, f"{self.name}_flow")

    def forget(self) -> None:
        """Unimport it: off ``sys.path``, out of ``sys.modules`` and the registry."""
        if str(self.folder) in sys.path:
            sys.path.remove(str(self.folder))
        sys.modules.pop(self.name, None)
        importlib.invalidate_caches()
        definitions._workflows.pop(f"{self.name}_flow", None)
        definitions._activities.pop(f"{self.name}_step", None)


@pytest.fixture
def tmp_module(tmp_path: Path) -> Iterator[TmpModule]:
    folder = tmp_path / "mods"
    folder.mkdir()
    module = TmpModule(folder)
    yield module
    module.forget()


def assert_explains_the_import(message: str, module: TmpModule) -> None:
    assert f"could not import module {module.name!r}" in message
    assert f"(recorded as '{module.name}:{module.name}_flow')" in message
    assert f"ModuleNotFoundError: No module named {module.name!r}" in message
    assert "It searched sys.path [" in message
    assert f"duraflow serve --app {module.name}" in message
    assert "start the driver from the directory that holds it" in message
    assert f"runtime_env={{'py_modules': [{module.name}]}}" in message
    assert "import the module that defines it" not in message  # the user did


# -- on Ray: the partition actor's process cannot import what the driver did ----------------------


def test_a_ray_partition_that_cannot_import_the_module_says_so(
    ray_client: df.Client, tmp_module: TmpModule
) -> None:
    with pytest.raises(df.UnknownWorkflowType) as caught:
        ray_client.start(tmp_module.flow, 1, workflow_id="ci-ray")

    message = str(caught.value)
    assert message.startswith(f"unknown workflow type '{tmp_module.name}_flow': ")
    assert_explains_the_import(message, tmp_module)
    found = re.search(r"the Ray partition actor (\d) of namespace '[^']+' \(pid (\d+)\)", message)
    assert found is not None, message
    statuses = {s["index"]: s["pid"] for s in ray_client._host.statuses()}  # type: ignore[attr-defined]
    assert statuses[int(found[1])] == int(found[2]) != os.getpid()
    # The path it searched is the actor's: the folder is only on this process's sys.path.
    assert str(tmp_module.folder) not in message
    with pytest.raises(df.WorkflowNotFound):
        ray_client.get_handle("ci-ray").describe()


# -- in this process (local runtime): a reopened engine without the module ------------------------


def open_local(data_dir: Path) -> df.Engine:
    return df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL")


def test_a_reopened_local_engine_without_the_module_marks_the_run_stuck_saying_why(
    data_dir: Path, tmp_module: TmpModule
) -> None:
    with open_local(data_dir) as engine:
        engine.client().start(tmp_module.flow, 1, workflow_id="ci-local")
    tmp_module.forget()

    with open_local(data_dir) as engine:
        client = engine.client()
        handle = client.get_handle("ci-local")
        handle.signal("go")  # the run must be rebuilt from history: its code cannot be found
        stuck = handle.describe().stuck
        assert stuck is not None
        assert stuck.startswith(
            f"UnknownWorkflowType: unknown workflow type '{tmp_module.name}_flow'"
        )
        assert f"this process (pid {os.getpid()}) could not import module" in stuck
        assert_explains_the_import(stuck, tmp_module)
        with pytest.raises(df.ResultTimeout):
            handle.result(timeout=0.1)

    # Back on sys.path, the run goes on with the signal that arrived meanwhile.
    sys.path.insert(0, str(tmp_module.folder))
    with open_local(data_dir) as engine:
        assert 2 == engine.client().get_handle("ci-local").result(timeout=10)


def test_a_module_that_imports_but_lacks_the_name_says_so(tmp_module: TmpModule) -> None:
    tmp_module.forget()
    # The next version of the module renamed the workflow.
    tmp_module.path.write_text(SOURCE.format(name=tmp_module.name).replace("_flow(", "_v2("))
    sys.path.insert(0, str(tmp_module.folder))
    importlib.invalidate_caches()
    name = f"{tmp_module.name}_flow"

    with pytest.raises(df.UnknownWorkflowType) as caught:
        resolve_workflow(name, f"{tmp_module.name}:{name}")

    message = str(caught.value)
    assert f"this process (pid {os.getpid()}) imported module {tmp_module.name!r}" in message
    assert (
        f"registers no @workflow of that name (recorded as '{tmp_module.name}:{name}')" in message
    )
    assert f"was {name!r} renamed, removed or left undecorated?" in message
    assert "could not import" not in message


def test_an_activity_module_whose_import_raises_is_reported_with_the_error(
    tmp_path: Path,
) -> None:
    name = f"ci_broken_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('no database configured')\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(df.UnknownActivity) as caught:
            resolve_activity("ci_charge", f"{name}:ci_charge")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)

    message = str(caught.value)
    assert message.startswith("unknown activity 'ci_charge': this process (pid ")
    assert f"could not import module {name!r}" in message
    assert "RuntimeError: no database configured" in message
    assert repr(str(tmp_path)) in message  # on sys.path at the time: it is listed


def test_main_module_code_says_a_script_cannot_be_imported() -> None:
    with pytest.raises(df.UnknownWorkflowType) as caught:
        resolve_workflow("ci_scripted", "__main__:ci_scripted")

    assert "a script's __main__" in str(caught.value)
    assert "define the @workflow in a module" in str(caught.value)
