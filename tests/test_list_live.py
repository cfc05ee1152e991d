"""``client.list()`` and the ``live_workflows`` view carry what ``describe()`` says of a run:
why it is stuck, its history length and its pending activities; on both runtimes (a stuck run
in-process only: see beside that test where its Ray path is covered).

Changed workflow code is a file the workflow looks at: it stands for a new deployment of the
code that the partition processes of both runtimes see (re-registering a function, as
tests/engine/test_replay.py does, reaches only this process). Activities wait on gate files
for the same reason. Names start with ``ls_`` (the registry is global).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import duraflow as df

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@df.activity(inline=True)
def ls_step(label: str) -> str:
    return label


@df.activity(inline=True)
def ls_wait_for_gate(gate: str) -> str:
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "opened"


def deployed(new_code: str) -> bool:
    """Whether the changed code is deployed (a stat: no reason to leave the workflow loop)."""
    return os.path.exists(new_code)


@df.workflow
async def ls_changes(ctx: df.WorkflowContext, new_code: str) -> str:
    if deployed(new_code):
        await ctx.sleep(0.01)  # the new code: a timer where history holds an activity
    else:
        await ctx.activity(ls_step, "old")
    ctx.set_query_handler("phase", lambda: "waiting")
    await ctx.wait_for_signal("go")
    return "done"


@df.workflow
async def ls_gated(ctx: df.WorkflowContext, gate: str) -> str:
    await ctx.activity(ls_step, "first")
    result: str = await ctx.activity(ls_wait_for_gate, gate)
    return result


def parked(handle: df.WorkflowHandle) -> bool:
    try:
        return bool(handle.query("phase") == "waiting")
    except df.UnknownQuery:
        return False


def listed(client: df.Client, workflow_id: str) -> df.WorkflowDescription:
    (found,) = [d for d in client.list() if d.workflow_id == workflow_id]
    return found


def live_rows(client: df.Client, *workflow_ids: str) -> dict[str, dict[str, Any]]:
    table = client.sql(
        "SELECT workflow_id, status, stuck, history_length, pending_activities "
        "FROM live_workflows WHERE list_contains(?, workflow_id)",
        [list(workflow_ids)],
    )
    return {row["workflow_id"]: row for row in table.to_pylist()}


# In-process only. Ray path: list() and live_workflows through Ray:
# test_pending_activities_show_in_list_and_live_workflows[ray]; a stuck run described through Ray:
# test_code_rules'
# test_workflow_code_that_blocks_is_reported_and_marked_stuck_and_other_partitions_go_on[ray];
# replay in new partition actors: test_ray_core's
# test_runs_continue_by_replay_after_the_ray_engine_is_closed_and_reopened.
@pytest.mark.parametrize("runtime", ["local"])
def test_a_stuck_run_shows_in_list_and_live_workflows(
    open_any_engine: Callable[[], df.Engine], tmp_path: Path
) -> None:
    new_code = tmp_path / "new-code"
    key = f"ls-stuck-{uuid.uuid4().hex[:8]}"
    with open_any_engine() as engine:
        client = engine.client()
        handle = client.start(ls_changes, str(new_code), workflow_id=key)
        wait_until(lambda: parked(handle), what="parked")
        closed = client.start(ls_changes, str(new_code), workflow_id=f"{key}-closed")
        wait_until(lambda: parked(closed), what="parked")
        closed.signal("go")
        assert "done" == closed.result(timeout=30)

    new_code.touch()  # deploy the changed code
    with open_any_engine() as engine:
        client = engine.client()
        handle = client.get_handle(key)
        handle.signal("go")  # replay with the new code fails: the run is stuck
        described = handle.describe()
        assert described.stuck is not None
        assert described.stuck.startswith("NonDeterminismError")

        in_list = listed(client, key)
        assert described.stuck == in_list.stuck
        assert described.history_length == in_list.history_length
        assert 4 == in_list.history_length  # started, activity scheduled + completed, signal
        assert ([], "running") == (in_list.pending_activities, in_list.status)
        done = client.get_handle(f"{key}-closed").describe()
        assert 5 == done.history_length == listed(client, f"{key}-closed").history_length

        rows = live_rows(client, key, f"{key}-closed")
        assert {
            "workflow_id": key,
            "status": "running",
            "stuck": described.stuck,
            "history_length": 4,
            "pending_activities": [],
        } == rows[key]
        assert (None, 5) == (
            rows[f"{key}-closed"]["stuck"],
            rows[f"{key}-closed"]["history_length"],
        )
        stuck_ids = client.sql("SELECT workflow_id FROM live_workflows WHERE stuck IS NOT NULL")
        assert [key] == stuck_ids.column("workflow_id").to_pylist()
        handle.terminate("cleanup")


def test_pending_activities_show_in_list_and_live_workflows(
    any_client: df.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    handle = any_client.start(ls_gated, str(gate), workflow_id=f"ls-gated-{uuid.uuid4().hex[:8]}")
    wid = handle.workflow_id
    described = wait_until(
        lambda: (d := handle.describe()).pending_activities == ["ls_wait_for_gate"] and d,
        what="waiting on the gate",
    )

    in_list = listed(any_client, wid)
    assert ["ls_wait_for_gate"] == described.pending_activities == in_list.pending_activities
    assert 4 == described.history_length == in_list.history_length
    assert in_list.stuck is None
    row = live_rows(any_client, wid)[wid]
    assert (["ls_wait_for_gate"], 4, None) == (
        row["pending_activities"],
        row["history_length"],
        row["stuck"],
    )

    gate.touch()
    assert "opened" == handle.result(timeout=30)
    assert ([], 6) == (
        listed(any_client, wid).pending_activities,
        listed(any_client, wid).history_length,
    )
