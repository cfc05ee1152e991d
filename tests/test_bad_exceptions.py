"""Bad input, continued: exceptions that do not behave, out of activities, workflows and queries.

Part of the bad-input corpus (``test_bad_input.py`` has its helpers and the rest). Whatever
user code raises, ``SystemExit`` and ``KeyboardInterrupt`` included, or an exception whose
``__str__`` raises, becomes a recorded failure with a description that cannot raise, exactly
once, and never takes a partition (or the thread hosting every partition) down: the keeper
workflow started before the mistake still answers and completes.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from tests.test_bad_input import assert_keeper_intact, start_keeper

RAY_ARCHIVE = False  # the Ray test is about Ray-task activities, not the archive (see conftest)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no str for you")


class Unprintable2(Exception):
    def __str__(self) -> str:
        raise SystemExit("not even this")


class NotAnException(BaseException):
    """A BaseException subclass of user code's own (neither Exception nor a signal)."""


def _raise(exc: BaseException) -> None:
    raise exc


RAISERS: dict[str, Any] = {
    "SystemExit": lambda: sys.exit(3),
    "KeyboardInterrupt": lambda: _raise(KeyboardInterrupt()),
    "Unprintable": lambda: _raise(Unprintable()),
    "Unprintable2": lambda: _raise(Unprintable2()),
    "NotAnException": lambda: _raise(NotAnException("mine")),
}
"""Each kind raises the exception class of the same name."""

_runs: dict[str, int] = {}
_runs_lock = threading.Lock()


def _ran(key: str) -> None:
    with _runs_lock:
        _runs[key] = _runs.get(key, 0) + 1


FAST_TWICE = df.RetryPolicy(initial_interval=0.01, maximum_attempts=2)


@df.activity(retry=FAST_TWICE)
def bx_sync_raises(kind: str, key: str) -> None:
    _ran(key)
    RAISERS[kind]()


@df.activity(retry=FAST_TWICE)
async def bx_async_raises(kind: str, key: str) -> None:
    _ran(key)
    RAISERS[kind]()


@df.workflow
async def bx_activity_raises(ctx: df.WorkflowContext, kind: str, is_async: bool) -> dict:
    key = f"{ctx.info.workflow_id}/act"
    act = bx_async_raises if is_async else bx_sync_raises
    try:
        await ctx.activity(act, kind, key)
    except df.ActivityError as exc:
        return {"type": exc.cause_type, "message": exc.cause_message, "attempts": exc.attempts}
    return {"type": None}


@df.activity(inline=True)
def bx_note(key: str) -> str:
    _ran(key)
    return "noted"


@df.workflow
async def bx_workflow_raises(ctx: df.WorkflowContext, kind: str, in_task: bool) -> None:
    await ctx.activity(bx_note, f"{ctx.info.workflow_id}/note")

    async def body() -> None:
        RAISERS[kind]()

    if in_task:
        await asyncio.ensure_future(body())  # raised in a task the workflow awaits
    else:
        await body()


@df.workflow
async def bx_query_raises(ctx: df.WorkflowContext, kind: str) -> str:
    ctx.set_query_handler("boom", lambda: RAISERS[kind]())
    return await ctx.wait_for_signal("stop", timeout="1h", default="timed out")


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", list(RAISERS))
def test_an_activity_raising_anything_fails_its_attempt_and_is_retried(
    client: df.Client, kind: str, is_async: bool
) -> None:
    keeper = start_keeper(client)
    workflow_id = f"bx-act-{kind}-{is_async}"

    outcome = client.execute(
        bx_activity_raises, kind, is_async, workflow_id=workflow_id, timeout=30
    )

    assert kind == outcome["type"]
    assert 2 == outcome["attempts"]  # retried under its policy: the attempt was reported
    assert 2 == _runs[f"{workflow_id}/act"]
    if kind.startswith("Unprintable"):
        assert f"<{kind} whose str() raised" in outcome["message"]
    assert_keeper_intact(keeper)


@pytest.mark.parametrize("in_task", [False, True], ids=["main", "task"])
@pytest.mark.parametrize("kind", list(RAISERS))
def test_workflow_code_raising_anything_fails_the_run_once_and_the_engine_goes_on(
    data_dir: Path, kind: str, in_task: bool
) -> None:
    workflow_id = f"bx-wf-{kind}-{in_task}"
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as engine:
        client = engine.client()
        keeper = start_keeper(client)

        with pytest.raises(df.WorkflowFailedError) as caught:
            client.execute(bx_workflow_raises, kind, in_task, workflow_id=workflow_id, timeout=30)

        assert "failed" == caught.value.status
        assert kind == caught.value.cause_type
        assert_keeper_intact(keeper)
    # Reopened: the failure is durable, nothing runs again.
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as engine:
        handle = engine.client().get_handle(workflow_id)
        assert "failed" == handle.describe().status
        assert 1 == _runs[f"{workflow_id}/note"]


@pytest.mark.parametrize("kind", list(RAISERS))
def test_a_query_handler_raising_anything_is_a_query_failure(client: df.Client, kind: str) -> None:
    keeper = start_keeper(client)
    handle = client.start(bx_query_raises, kind, workflow_id=f"bx-query-{kind}")

    with pytest.raises(df.QueryFailed) as caught:
        handle.query("boom")

    assert kind in str(caught.value)
    handle.signal("stop", "done")
    assert "done" == handle.result(timeout=30)
    assert_keeper_intact(keeper)


@pytest.mark.parametrize("kind", ["SystemExit", "Unprintable", "NotAnException"])
def test_a_ray_task_activity_raising_anything_fails_its_attempt(
    ray_client: df.Client, kind: str
) -> None:
    outcome = ray_client.execute(
        bx_activity_raises, kind, False, workflow_id=f"bx-ray-{kind}", timeout=60
    )

    assert kind == outcome["type"]
    assert 2 == outcome["attempts"]
