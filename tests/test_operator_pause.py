"""Pause and unpause, end to end on the in-process engine: a paused run dispatches nothing
(activities stay pending, child starts wait, timers that fall due wake nothing) until it is
unpaused, and then each held step runs once; a pause survives closing and reopening the data
directory. Timers move on the stepped clock (``duraflow.testing``), never by sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from duraflow.testing import WorkflowEnvironment
from tests.conftest import STEPPED_START

WAIT_S = 20.0

_ran: list[str] = []
_ran_lock = threading.Lock()


@df.activity(retry=df.RetryPolicy(maximum_attempts=1))
def op_step(name: str) -> str:
    with _ran_lock:
        _ran.append(name)
    return name.upper()


@df.workflow
async def op_child(ctx: df.WorkflowContext, name: str) -> str:
    return f"child {name}"


@df.workflow
async def op_held(ctx: df.WorkflowContext) -> list[str]:
    await ctx.wait_for_signal("go")
    a = await ctx.activity(op_step, "a")
    await ctx.sleep("1h")
    await ctx.wait_for_signal("child")
    c = await ctx.execute_child(op_child, "c", workflow_id="op-held-child")
    return [a, c]


@df.workflow
async def op_waits(ctx: df.WorkflowContext) -> str:
    return str(await ctx.wait_for_signal("go"))


def ran() -> list[str]:
    with _ran_lock:
        return list(_ran)


def eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return found


def types_of(handle: df.WorkflowHandle) -> list[str]:
    return [ev.event_type(e) for e in handle.history()]


def settle(handle: df.WorkflowHandle) -> None:
    """Let whatever a turn might dispatch run (a describe is answered after that turn)."""
    time.sleep(0.2)
    handle.describe()


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    with _ran_lock:
        _ran.clear()


def test_a_paused_run_holds_activities_timers_and_child_starts_until_unpaused(
    stepped_env: WorkflowEnvironment,
) -> None:
    client = stepped_env.client
    handle = client.start(op_held, workflow_id="op-held")
    handle.pause("deploying a fix")

    described = handle.describe()
    assert (True, "deploying a fix") == (described.paused, described.pause_reason)
    assert ["op-held"] == [d.workflow_id for d in client.list() if d.paused]

    # a signal is taken and the code runs; the activity it schedules stays pending
    handle.signal("go")
    eventually(lambda: "workflow.activity_scheduled" in types_of(handle), "the scheduling")
    settle(handle)
    assert [] == ran()
    assert ["op_step"] == handle.describe().pending_activities

    handle.unpause("fixed")
    eventually(lambda: "workflow.timer_started" in types_of(handle), "the activity and timer")
    assert ["a"] == ran()
    assert not handle.describe().paused

    # a timer that falls due while paused wakes nothing until the unpause
    handle.pause()
    stepped_env.advance("2h")
    settle(handle)
    assert "workflow.timer_fired" not in types_of(handle)
    handle.unpause()
    eventually(lambda: "workflow.timer_fired" in types_of(handle), "the held timer")

    # a child start is recorded while paused, and sent at the unpause
    handle.pause()
    handle.signal("child")
    eventually(lambda: "workflow.child_started" in types_of(handle), "the child's start")
    settle(handle)
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("op-held-child").describe()
    handle.unpause()

    assert ["A", "child c"] == handle.result(timeout=WAIT_S)
    assert ["a"] == ran()  # each held step ran once
    kinds = types_of(handle)
    assert 3 == kinds.count("workflow.paused") == kinds.count("workflow.unpaused")
    paused = next(e for e in handle.history() if isinstance(e, ev.WorkflowPaused))
    unpaused = next(e for e in handle.history() if isinstance(e, ev.WorkflowUnpaused))
    assert ("deploying a fix", "fixed") == (paused.reason, unpaused.reason)
    assert 1 == kinds.count("workflow.activity_completed")


def test_pause_and_unpause_are_idempotent_and_refuse_closed_or_unknown_runs(
    client: df.Client,
) -> None:
    handle = client.start(op_waits, workflow_id="op-idem")
    handle.pause("one")
    handle.pause("two")  # paused already: nothing more recorded
    assert "one" == handle.describe().pause_reason
    handle.unpause()
    handle.unpause()  # not paused: nothing recorded
    kinds = types_of(handle)
    assert (1, 1) == (kinds.count("workflow.paused"), kinds.count("workflow.unpaused"))

    handle.signal("go", 7)
    assert "7" == handle.result(timeout=WAIT_S)
    with pytest.raises(df.WorkflowClosed, match="cannot pause workflow 'op-idem'"):
        handle.pause()
    with pytest.raises(df.WorkflowClosed, match="cannot unpause"):
        handle.unpause()
    with pytest.raises(df.WorkflowNotFound, match="cannot pause: no workflow 'op-nobody'"):
        client.get_handle("op-nobody").pause()
    with pytest.raises(df.PayloadError, match="pause reason must be a str"):
        handle.pause(3)  # type: ignore[arg-type]


def test_terminating_a_paused_run_closes_it(client: df.Client) -> None:
    handle = client.start(op_waits, workflow_id="op-term")
    handle.pause()
    handle.terminate("no longer needed")
    with pytest.raises(df.WorkflowTerminatedError):
        handle.result(timeout=WAIT_S)
    assert not handle.describe().paused


def test_a_pause_survives_reopening_the_data_directory(data_dir: Path) -> None:
    with WorkflowEnvironment.start_local(data_dir=data_dir, start_time=STEPPED_START) as env:
        handle = env.client.start(op_held, workflow_id="op-reopen")
        handle.pause("overnight")
        handle.signal("go")
        eventually(lambda: "workflow.activity_scheduled" in types_of(handle), "the scheduling")
        settle(handle)

    with WorkflowEnvironment.start_local(data_dir=data_dir, start_time=STEPPED_START) as env:
        handle = env.client.get_handle("op-reopen")
        settle(handle)
        described = handle.describe()
        assert (True, "overnight", ["op_step"]) == (
            described.paused,
            described.pause_reason,
            described.pending_activities,
        )
        assert [] == ran()
        handle.unpause()
        eventually(lambda: "workflow.timer_started" in types_of(handle), "the held activity")
        env.advance("1h")
        handle.signal("child")
        assert ["A", "child c"] == handle.result(timeout=WAIT_S)
        assert "workflow.step.retry" not in types_of(handle)  # holding counted no attempt
    assert ["a"] == ran()
