"""End-to-end workflow behaviour through the public API, on real SQLite files.

Signals, queries, cancel, terminate, results, ID reuse, describe/list, child workflows and
their parent-close policies, deterministic time/randomness, asyncio inside workflows, the
async twins of the client, and a thousand workflows at once. Every workflow and activity name
here starts with ``wf_`` so it cannot clash with other test modules (the registry is global).

Tests taking ``any_client`` or ``open_any_engine`` run on both runtimes; those marked
in-process only (``parametrize("runtime", ["local"])``) test rules of the engine whose Ray
path a test in tests/actors/test_ray_core.py covers (named beside each).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import duraflow as df
from duraflow.testing import WorkflowEnvironment

T = TypeVar("T")
RAY_ARCHIVE = False  # their Ray variants test the transport, not the archive (see conftest)

# -- helpers --------------------------------------------------------------------------------------

_calls: collections.Counter[tuple[str, ...]] = collections.Counter()
_calls_lock = threading.Lock()


def _count(*key: str) -> None:
    with _calls_lock:
        _calls[key] += 1


def calls(*key: str) -> int:
    with _calls_lock:
        return _calls[key]


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy (the engine works on other threads)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def status_of(handle: df.WorkflowHandle) -> str:
    return handle.describe().status


def query_when_ready(handle: df.WorkflowHandle, name: str, *args: Any) -> Any:
    """Query once the workflow code has registered the handler."""

    def attempt() -> Any:
        try:
            return (handle.query(name, *args),)
        except df.UnknownQuery:
            return None

    return wait_until(attempt, what=f"query handler {name!r}")[0]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- activities -----------------------------------------------------------------------------------


@df.activity
def wf_record(key: str, label: str) -> str:
    _count(key, label)
    return label


@df.activity
def wf_double(x: int) -> int:
    return 2 * x


@df.activity
async def wf_slow(key: str, seconds: float) -> str:
    _count(key, "slow-started")
    await asyncio.sleep(seconds)
    _count(key, "slow-finished")
    return f"slept {seconds}"


_gates: dict[str, threading.Event] = {}


@df.activity
def wf_gate(key: str) -> str:
    """Blocks until the test opens the gate named ``key``."""
    _gates[key].wait(10)
    return "opened"


# -- workflows ------------------------------------------------------------------------------------


@df.workflow
async def wf_signal_order(ctx: df.WorkflowContext) -> dict[str, Any]:
    await ctx.wait_for_signal("go")
    items = [await ctx.wait_for_signal("item") for _ in range(3)]
    others = [await ctx.wait_for_signal("other") for _ in range(2)]
    return {"items": items, "others": others}


@df.workflow
async def wf_signal_timeout(ctx: df.WorkflowContext, raise_it: bool) -> Any:
    started = ctx.time()
    if not raise_it:
        got = await ctx.wait_for_signal("never", timeout="1d", default="the default")
        return [got, ctx.time() - started]
    try:
        await ctx.wait_for_signal("never", timeout="36h")
    except TimeoutError:
        return ["TimeoutError caught", ctx.time() - started]
    return "no timeout"


@df.workflow
async def wf_signal_timeout_uncaught(ctx: df.WorkflowContext) -> Any:
    return await ctx.wait_for_signal("never", timeout=86_400)


@df.workflow
async def wf_counter(ctx: df.WorkflowContext) -> int:
    state = {"count": 0, "last": None}
    ctx.set_query_handler("state", lambda: dict(state))
    ctx.set_query_handler("plus", lambda n: state["count"] + n)
    while True:
        value = await ctx.wait_for_signal("add")
        if value is None:
            return state["count"]
        state["count"] += value
        state["last"] = value


@df.workflow
async def wf_query_random(ctx: df.WorkflowContext) -> list[Any]:
    values = [ctx.random()]
    ctx.set_query_handler("values", lambda: list(values))
    ctx.set_query_handler("peek_random", lambda: ctx.random())
    ctx.set_query_handler("peek_uuid", lambda: str(ctx.uuid4()))
    ctx.set_query_handler("peek_randint", lambda: ctx.randint(1, 6))
    await ctx.wait_for_signal("next")
    values.append(ctx.random())
    await ctx.wait_for_signal("finish")
    return values


@df.workflow
async def wf_cancellable(ctx: df.WorkflowContext, key: str, swallow: bool) -> str:
    try:
        await ctx.wait_for_signal("never")
    except asyncio.CancelledError:
        await ctx.activity(wf_record, key, "cleanup")
        if swallow:
            return f"cleaned up, cancel_requested={ctx.cancel_requested}"
        raise
    return "not cancelled"


@df.workflow
async def wf_cancel_in_activity(ctx: df.WorkflowContext, key: str) -> str:
    try:
        return await ctx.activity(wf_gate, key)
    except asyncio.CancelledError:
        await ctx.activity(wf_record, key, "cleanup")
        raise


@df.workflow
async def wf_cancel_counter(ctx: df.WorkflowContext) -> int:
    seen = 0
    ctx.set_query_handler("seen", lambda: seen)
    while True:
        try:
            await ctx.wait_for_signal("finish")
            return seen
        except asyncio.CancelledError:
            seen += 1


@df.workflow
async def wf_terminable(ctx: df.WorkflowContext, key: str) -> str:
    try:
        await ctx.activity(wf_record, key, "before")
        await ctx.wait_for_signal("go")
        await ctx.activity(wf_record, key, "after")
    except asyncio.CancelledError:
        await ctx.activity(wf_record, key, "cleanup")
        raise
    finally:
        await ctx.activity(wf_record, key, "finally")
    return "finished"


@df.workflow
async def wf_wait_signal(ctx: df.WorkflowContext, value: Any = None) -> Any:
    got = await ctx.wait_for_signal("finish")
    return [value, got]


@df.workflow
async def wf_describe_me(ctx: df.WorkflowContext, key: str) -> str:
    return await ctx.activity(wf_gate, key)


@df.workflow
async def wf_listed_a(ctx: df.WorkflowContext) -> Any:
    return await ctx.wait_for_signal("finish")


@df.workflow
async def wf_listed_b(ctx: df.WorkflowContext) -> str:
    return "b"


@df.workflow
async def wf_square_child(ctx: df.WorkflowContext, i: int) -> int:
    doubled = await ctx.activity(wf_double, i)
    return doubled * i // 2


@df.workflow
async def wf_fanout_parent(ctx: df.WorkflowContext, n: int) -> dict[str, Any]:
    handles = [await ctx.start_child(wf_square_child, i) for i in range(n)]
    results = await asyncio.gather(*(h.result() for h in handles))
    return {"sum": sum(results), "ids": [h.workflow_id for h in handles]}


@df.workflow
async def wf_execute_child_parent(ctx: df.WorkflowContext, child_id: str) -> int:
    return await ctx.execute_child(wf_square_child, 7, workflow_id=child_id) + 1


@df.workflow
async def wf_failing_child(ctx: df.WorkflowContext) -> None:
    raise ValueError("child went wrong")


@df.workflow
async def wf_failing_child_parent(ctx: df.WorkflowContext) -> list[Any]:
    try:
        await ctx.execute_child(wf_failing_child)
    except df.ChildWorkflowError as err:
        return [err.workflow_id, err.status, err.cause_type, err.cause_message]
    return ["no error"]


@df.workflow
async def wf_taken_child_parent(ctx: df.WorkflowContext, child_id: str) -> list[Any]:
    handle = await ctx.start_child(wf_wait_signal, "from parent", workflow_id=child_id)
    try:
        await handle.result()
    except df.ChildWorkflowError as err:
        return [err.workflow_id, err.status, err.cause_type]
    return ["no error"]


@df.workflow
async def wf_policy_parent(ctx: df.WorkflowContext, child_id: str, policy: str, wait: bool) -> str:
    await ctx.start_child(wf_wait_signal, "child", workflow_id=child_id, parent_close_policy=policy)
    if wait:
        await ctx.wait_for_signal("finish")
    return "parent done"


@df.workflow
async def wf_deterministic(ctx: df.WorkflowContext) -> dict[str, Any]:
    values: dict[str, Any] = {
        "now": ctx.now().isoformat(),
        "time": ctx.time(),
        "random": ctx.random(),
        "randint": ctx.randint(1, 1_000_000),
        "uuid": str(ctx.uuid4()),
    }
    await ctx.activity(wf_double, 1)
    values["now_after_activity"] = ctx.now().isoformat()
    values["uuid_after_activity"] = str(ctx.uuid4())
    ctx.set_query_handler("values", lambda: values)
    await ctx.wait_for_signal("finish")
    return values


@df.workflow
async def wf_asyncio_timeouts(ctx: df.WorkflowContext, key: str) -> list[Any]:
    out: list[Any] = []
    try:
        await asyncio.wait_for(ctx.activity(wf_slow, key, 5.0), 0.05)
    except asyncio.TimeoutError:
        out.append("wait_for activity timed out")
    out.append(await asyncio.wait_for(ctx.activity(wf_slow, key + "-fast", 0.0), 10))
    try:
        await asyncio.wait_for(ctx.wait_for_signal("never"), 0.05)
    except asyncio.TimeoutError:
        out.append("wait_for signal timed out")
    try:
        async with asyncio.timeout(0.05):
            await ctx.activity(wf_slow, key, 5.0)
    except TimeoutError:
        out.append("timeout activity timed out")
    try:
        async with asyncio.timeout(0.05):
            await ctx.wait_for_signal("never")
    except TimeoutError:
        out.append("timeout signal timed out")
    async with asyncio.timeout(10):
        out.append(await ctx.wait_for_signal("go"))
    return out


@df.workflow
async def wf_asyncio_sleep(ctx: df.WorkflowContext, seconds: float) -> float:
    before = ctx.time()
    await asyncio.sleep(seconds)
    return ctx.time() - before


@df.workflow
async def wf_async_twins(ctx: df.WorkflowContext, x: int) -> dict[str, Any]:
    ctx.set_query_handler("x", lambda: x)
    got = await ctx.wait_for_signal("add")
    return {"sum": x + got}


@df.workflow
async def wf_many(ctx: df.WorkflowContext, i: int) -> int:
    return await ctx.activity(wf_double, i)


# -- signals --------------------------------------------------------------------------------------


# In-process only. Ray path: signals buffered in order through Ray: test_ray_core's
# test_signals_queries_describe_and_list_through_ray.
@pytest.mark.parametrize("runtime", ["local"])
def test_signals_are_buffered_in_order_before_the_workflow_waits(any_client: df.Client) -> None:
    handle = any_client.start(wf_signal_order, workflow_id=new_id("sig-order"))
    handle.signal("item", 1)
    handle.signal("other", "x")
    handle.signal("item", 2)
    handle.signal("other", "y")
    handle.signal("item", {"three": 3})
    handle.signal("go")
    assert {"items": [1, 2, {"three": 3}], "others": ["x", "y"]} == handle.result(timeout=10)


def test_wait_for_signal_timeout_returns_the_default(skipping_env: WorkflowEnvironment) -> None:
    client = skipping_env.client
    assert ["the default", 86_400.0] == client.execute(wf_signal_timeout, False, timeout=10)


def test_wait_for_signal_timeout_without_default_raises_timeout_error(
    skipping_env: WorkflowEnvironment,
) -> None:
    client = skipping_env.client
    assert ["TimeoutError caught", 36 * 3600.0] == client.execute(
        wf_signal_timeout, True, timeout=10
    )
    handle = client.start(wf_signal_timeout_uncaught)
    with pytest.raises(df.WorkflowFailedError) as caught:
        handle.result(timeout=10)
    assert "failed" == caught.value.status
    assert "TimeoutError" == caught.value.cause_type


# In-process only. Ray path: WorkflowClosed and WorkflowNotFound through Ray: test_ray_core's
# test_bad_input_errors_arrive_with_their_duraflow_class.
@pytest.mark.parametrize("runtime", ["local"])
def test_signal_to_a_closed_workflow_raises(any_client: df.Client) -> None:
    handle = any_client.start(wf_wait_signal, workflow_id=new_id("sig-closed"))
    handle.signal("finish", 1)
    handle.result(timeout=10)
    with pytest.raises(df.WorkflowClosed):
        handle.signal("finish", 2)
    missing = any_client.get_handle(new_id("never-started"))
    with pytest.raises(df.WorkflowNotFound):
        missing.signal("finish")
    with pytest.raises(df.WorkflowNotFound):
        missing.describe()
    with pytest.raises(df.WorkflowNotFound):
        missing.result(timeout=1)


# -- queries --------------------------------------------------------------------------------------


# In-process only. Ray path: queries through Ray, no history written: test_ray_core's
# test_signals_queries_describe_and_list_through_ray.
@pytest.mark.parametrize("runtime", ["local"])
def test_query_reflects_state_and_never_writes_history(any_client: df.Client) -> None:
    handle = any_client.start(wf_counter, workflow_id=new_id("query"))
    assert {"count": 0, "last": None} == query_when_ready(handle, "state")
    handle.signal("add", 5)
    wait_until(lambda: handle.query("state")["count"] == 5, what="first signal applied")
    handle.signal("add", 2)
    wait_until(lambda: handle.query("state")["count"] == 7, what="second signal applied")
    assert {"count": 7, "last": 2} == handle.query("state")
    assert 17 == handle.query("plus", 10)

    length = handle.describe().history_length
    for _ in range(20):
        handle.query("state")
        handle.query("plus", 1)
    assert length == handle.describe().history_length

    with pytest.raises(df.UnknownQuery):
        handle.query("no-such-query")
    with pytest.raises(df.QueryFailed):
        handle.query("plus", "not a number")
    assert length == handle.describe().history_length

    handle.signal("add", None)
    assert 7 == handle.result(timeout=10)
    with pytest.raises(df.WorkflowClosed):
        handle.query("state")


# In-process only. Ray path: the rule is the workflow context's; queries answered by replay in new
# partition actors with the same random values: test_ray_core's
# test_runs_continue_by_replay_after_the_ray_engine_is_closed_and_reopened.
@pytest.mark.parametrize("runtime", ["local"])
def test_query_cannot_consume_the_runs_randomness(open_any_engine: Callable[[], df.Engine]) -> None:
    """A query that drew from ctx.random() would shift the values the run sees next, and a
    replay (which runs no queries) would then disagree with the live run."""
    wid = new_id("query-random")
    with open_any_engine() as engine:
        handle = engine.client().start(wf_query_random, workflow_id=wid)
        first = query_when_ready(handle, "values")
        for name in ("peek_random", "peek_uuid", "peek_randint"):
            with pytest.raises(df.QueryFailed, match="read-only"):
                handle.query(name)
        handle.signal("next")
        live = wait_until(lambda: (v := handle.query("values"))[1:] and v, what="second value")
        assert first == live[:1]
    with open_any_engine() as engine:
        handle = engine.client().get_handle(wid)
        assert live == handle.query("values")  # rebuilt by replay
        handle.signal("finish")
        assert live == handle.result(timeout=10)


# -- cancel and terminate -------------------------------------------------------------------------


def test_cancel_runs_cleanup_then_reraises(client: df.Client) -> None:
    key = new_id("cancel")
    handle = client.start(wf_cancellable, key, False, workflow_id=key)
    handle.cancel("user asked")
    with pytest.raises(df.WorkflowCancelledError) as caught:
        handle.result(timeout=10)
    assert "cancelled" == caught.value.status
    assert "user asked" == caught.value.cause_message
    assert 1 == calls(key, "cleanup")
    assert "cancelled" == handle.describe().status


def test_cancel_swallowed_completes_normally(client: df.Client) -> None:
    key = new_id("cancel-swallow")
    handle = client.start(wf_cancellable, key, True, workflow_id=key)
    handle.cancel()
    assert "cleaned up, cancel_requested=True" == handle.result(timeout=10)
    assert 1 == calls(key, "cleanup")
    assert "completed" == handle.describe().status


def test_cancel_while_an_activity_runs_cancels_it_and_runs_cleanup(
    client: df.Client, data_dir: Path
) -> None:
    from duraflow.actors.local_host import partition_path
    from duraflow.actors.router import partition_of

    key = new_id("cancel-activity")
    _gates[key] = threading.Event()
    handle = client.start(wf_cancel_in_activity, key, workflow_id=key)
    try:
        wait_until(lambda: ["wf_gate"] == handle.describe().pending_activities, what="in flight")
        handle.cancel("stop waiting")
        with pytest.raises(df.WorkflowCancelledError):
            handle.result(timeout=10)
    finally:
        _gates[key].set()
    assert 1 == calls(key, "cleanup")
    conn = sqlite3.connect(partition_path(data_dir, partition_of(key, 2)))
    try:
        types = [
            r[0]
            for r in conn.execute(
                "SELECT event_type FROM workflow_history WHERE workflow_id = ? ORDER BY event_id",
                (key,),
            )
        ]
    finally:
        conn.close()
    assert [
        "workflow.started",
        "workflow.activity_scheduled",
        "workflow.cancel_requested",
        "workflow.activity_cancelled",
        "workflow.activity_scheduled",
        "workflow.activity_completed",
        "workflow.cancelled",
    ] == types


def test_a_repeated_cancel_is_ignored_also_after_a_restart(data_dir: Path) -> None:
    wid = new_id("cancel-twice")
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as engine:
        handle = engine.client().start(wf_cancel_counter, workflow_id=wid)
        handle.cancel("first")
        wait_until(lambda: query_when_ready(handle, "seen") == 1, what="cancel seen")
        handle.cancel("second, while resident")
        assert 1 == handle.query("seen")
        length = handle.describe().history_length
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as engine:
        handle = engine.client().get_handle(wid)
        handle.cancel("third, after a restart")
        assert length == handle.describe().history_length
        handle.signal("finish")
        assert 1 == handle.result(timeout=10)


def test_cancel_of_a_closed_workflow_raises(client: df.Client) -> None:
    handle = client.start(wf_listed_b)
    handle.result(timeout=10)
    with pytest.raises(df.WorkflowClosed):
        handle.cancel()


def test_terminate_runs_no_more_workflow_code(client: df.Client) -> None:
    key = new_id("terminate")
    handle = client.start(wf_terminable, key, workflow_id=key)
    wait_until(lambda: calls(key, "before") == 1, what="first activity")
    wait_until(lambda: not handle.describe().pending_activities, what="first activity recorded")
    handle.terminate("operator said stop")
    with pytest.raises(df.WorkflowTerminatedError) as caught:
        handle.result(timeout=10)
    assert "terminated" == caught.value.status
    assert "operator said stop" == caught.value.cause_message
    with pytest.raises(df.WorkflowClosed):
        handle.signal("go")
    time.sleep(0.1)  # give any (wrongly) scheduled activity the time to run
    assert (1, 0, 0, 0) == (
        calls(key, "before"),
        calls(key, "after"),
        calls(key, "cleanup"),
        calls(key, "finally"),
    )
    assert "terminated" == handle.describe().status
    with pytest.raises(df.WorkflowClosed):
        handle.terminate("again")


# -- result, ID conflicts, runs -----------------------------------------------------------------


# In-process only. Ray path: ResultTimeout through Ray, then the result: test_ray_core's
# test_bad_input_errors_arrive_with_their_duraflow_class and test_batching's
# test_result_waits_time_out_alone_and_can_wait_again[ray].
@pytest.mark.parametrize("runtime", ["local"])
def test_result_timeout_leaves_the_run_going(any_client: df.Client) -> None:
    handle = any_client.start(wf_wait_signal, "v", workflow_id=new_id("result-timeout"))
    started = time.monotonic()
    with pytest.raises(df.ResultTimeout):
        handle.result(timeout=0.1)
    assert time.monotonic() - started < 30  # gave up long before the run would close
    with pytest.raises(TimeoutError):  # ResultTimeout is also a TimeoutError
        handle.result(timeout="50ms")
    assert "running" == handle.describe().status
    handle.signal("finish", "s")
    assert ["v", "s"] == handle.result(timeout=10)


def test_id_conflict_fail(client: df.Client) -> None:
    wid = new_id("conflict-fail")
    first = client.start(wf_wait_signal, 1, workflow_id=wid)
    with pytest.raises(df.WorkflowAlreadyRunning):
        client.start(wf_wait_signal, 2, workflow_id=wid)
    with pytest.raises(df.WorkflowAlreadyRunning):
        client.start(wf_wait_signal, 2, workflow_id=wid, id_conflict="fail")
    first.signal("finish", "x")
    assert [1, "x"] == first.result(timeout=10)


# In-process only. Ray path: the policy is the partition's; WorkflowAlreadyRunning through Ray:
# test_ray_core's test_bad_input_errors_arrive_with_their_duraflow_class.
@pytest.mark.parametrize("runtime", ["local"])
def test_id_conflict_use_existing(any_client: df.Client) -> None:
    wid = new_id("conflict-use")
    first = any_client.start(wf_wait_signal, 1, workflow_id=wid)
    second = any_client.start(wf_wait_signal, 2, workflow_id=wid, id_conflict="use_existing")
    assert first.run_id == second.run_id
    second.signal("finish", "x")
    assert [1, "x"] == first.result(timeout=10)
    listed = any_client.list(workflow_type="wf_wait_signal")
    assert 1 == len([d for d in listed if d.workflow_id == wid])


# In-process only. Ray path: the policy is the partition's; WorkflowClosed and terminated runs
# through Ray: test_ray_core's test_bad_input_errors_arrive_with_their_duraflow_class and
# test_cancel_and_terminate_stop_the_running_ray_task.
@pytest.mark.parametrize("runtime", ["local"])
def test_id_conflict_terminate_existing(any_client: df.Client) -> None:
    wid = new_id("conflict-terminate")
    first = any_client.start(wf_wait_signal, 1, workflow_id=wid)
    second = any_client.start(wf_wait_signal, 2, workflow_id=wid, id_conflict="terminate_existing")
    assert first.run_id != second.run_id
    with pytest.raises(df.WorkflowTerminatedError):
        first.result(timeout=10)
    assert "terminated" == first.describe().status
    assert "running" == second.describe().status
    with pytest.raises(df.WorkflowClosed):
        first.signal("finish", "to the terminated run")  # the handle is pinned to its run
    any_client.get_handle(wid).signal("finish", "y")
    assert [2, "y"] == second.result(timeout=10)


def test_bad_id_conflict_policy_is_refused(client: df.Client) -> None:
    with pytest.raises(df.ConfigurationError):
        client.start(wf_listed_b, id_conflict="replace")


# In-process only. Ray path: runs are the partition's; WorkflowClosed and WorkflowNotFound (of a
# run ID) through Ray: test_ray_core's test_bad_input_errors_arrive_with_their_duraflow_class.
@pytest.mark.parametrize("runtime", ["local"])
def test_closed_id_started_again_gets_a_new_run(any_client: df.Client) -> None:
    wid = new_id("rerun")
    old = any_client.start(wf_wait_signal, "first", workflow_id=wid)
    old.signal("finish", 1)
    assert ["first", 1] == old.result(timeout=10)

    new = any_client.start(wf_wait_signal, "second", workflow_id=wid)
    assert old.run_id != new.run_id

    latest = any_client.get_handle(wid)
    assert new.run_id == latest.describe().run_id
    assert "running" == latest.describe().status
    pinned = any_client.get_handle(wid, run_id=old.run_id)
    assert old.run_id == pinned.describe().run_id
    assert "completed" == pinned.describe().status
    assert ["first", 1] == pinned.result(timeout=10)
    with pytest.raises(df.WorkflowClosed):
        pinned.signal("finish", "to the old run")

    latest.signal("finish", 2)
    assert ["second", 2] == latest.result(timeout=10)
    assert ["first", 1] == pinned.result(timeout=10)
    with pytest.raises(df.WorkflowNotFound):
        any_client.get_handle(wid, run_id="0" * 32).describe()


# -- describe and list -----------------------------------------------------------------------------


def test_describe_fields(client: df.Client) -> None:
    from duraflow.actors.router import partition_of

    key = new_id("describe")
    _gates[key] = threading.Event()
    before = dt.datetime.now(dt.timezone.utc)
    handle = client.start(wf_describe_me, key, workflow_id=key)
    try:
        running = wait_until(
            lambda: (d := handle.describe()).pending_activities and d, what="activity in flight"
        )
        assert key == running.workflow_id
        assert handle.run_id == running.run_id
        assert "wf_describe_me" == running.workflow_type
        assert "running" == running.status
        assert ["wf_gate"] == running.pending_activities
        assert running.close_time is None
        assert running.parent_workflow_id is None
        assert running.stuck is None
        assert (running.error_type, running.error_message) == (None, None)
        assert 2 == running.history_length  # started, activity_scheduled
        assert partition_of(key, 2) == running.partition
        assert running.start_time.tzinfo is not None
        assert (
            before - dt.timedelta(seconds=1)
            <= running.start_time
            <= dt.datetime.now(dt.timezone.utc)
        )
    finally:
        _gates[key].set()
    assert "opened" == handle.result(timeout=10)
    done = handle.describe()
    assert "completed" == done.status
    assert [] == done.pending_activities
    assert done.close_time is not None and done.close_time >= done.start_time
    assert 4 == done.history_length  # + activity_completed, completed
    assert isinstance(done, df.WorkflowDescription)


# In-process only. Ray path: list filters, both partition actors answering, newest first:
# test_ray_core's test_signals_queries_describe_and_list_through_ray.
@pytest.mark.parametrize("runtime", ["local"])
def test_list_filters_by_status_and_type(any_client: df.Client) -> None:
    running = [any_client.start(wf_listed_a, workflow_id=new_id("list-a")) for _ in range(3)]
    done_a = any_client.start(wf_listed_a, workflow_id=new_id("list-a"))
    done_a.signal("finish", "ok")
    done_a.result(timeout=10)
    done_b = [any_client.start(wf_listed_b, workflow_id=new_id("list-b")) for _ in range(2)]
    for h in done_b:
        h.result(timeout=10)

    def ids(**filters: Any) -> set[str]:
        return {d.workflow_id for d in any_client.list(**filters)}

    assert {h.workflow_id for h in running} == ids(status="running", workflow_type="wf_listed_a")
    assert {done_a.workflow_id} == ids(status="completed", workflow_type="wf_listed_a")
    assert {h.workflow_id for h in done_b} == ids(workflow_type="wf_listed_b")
    assert set() == ids(status="running", workflow_type="wf_listed_b")
    assert {h.workflow_id for h in [*running, done_a]} == ids(workflow_type="wf_listed_a")
    everything = any_client.list()
    assert 6 <= len(everything)
    starts = [d.start_time for d in everything]
    assert sorted(starts, reverse=True) == starts
    assert 2 == len(any_client.list(limit=2))
    assert {0, 1} >= {d.partition for d in everything}
    for h in running:
        h.terminate("cleanup")


# -- child workflows -------------------------------------------------------------------------------


# In-process only. Ray path: children over both partition actors: test_ray_core's
# test_twenty_children_fan_out_over_both_partition_actors.
@pytest.mark.parametrize("runtime", ["local"])
def test_parent_fans_out_to_children_on_both_partitions(any_client: df.Client) -> None:
    pid = new_id("fanout")
    out = any_client.execute(wf_fanout_parent, 20, workflow_id=pid, timeout=30)
    assert sum(i * i for i in range(20)) == out["sum"]
    assert 20 == len(set(out["ids"]))
    descriptions = [any_client.get_handle(cid).describe() for cid in out["ids"]]
    assert {"completed"} == {d.status for d in descriptions}
    assert {pid} == {d.parent_workflow_id for d in descriptions}
    assert {0, 1} == {d.partition for d in descriptions}
    assert 1 == any_client.get_handle(out["ids"][1]).result(timeout=10)


def test_execute_child(client: df.Client) -> None:
    child_id = new_id("exec-child")
    assert 50 == client.execute(wf_execute_child_parent, child_id, timeout=10)
    assert 49 == client.get_handle(child_id).result(timeout=10)


def test_failing_child_raises_child_workflow_error_in_parent(any_client: df.Client) -> None:
    pid = new_id("failing-parent")
    child_id, status, cause_type, cause_message = any_client.execute(
        wf_failing_child_parent, workflow_id=pid, timeout=10
    )
    assert "failed" == status
    assert "ValueError" == cause_type
    assert "child went wrong" == cause_message
    assert "failed" == any_client.get_handle(child_id).describe().status


# In-process only. Ray path: the reply is the partition's; child starts between partition actors:
# test_ray_core's test_twenty_children_fan_out_over_both_partition_actors.
@pytest.mark.parametrize("runtime", ["local"])
def test_child_id_already_running_fails_the_child_handle(any_client: df.Client) -> None:
    taken = new_id("taken")
    squatter = any_client.start(wf_wait_signal, "squatter", workflow_id=taken)
    out = any_client.execute(wf_taken_child_parent, taken, timeout=10)
    assert [taken, "not_started", "WorkflowAlreadyRunning"] == out
    described = squatter.describe()
    assert "running" == described.status
    assert squatter.run_id == described.run_id
    assert described.parent_workflow_id is None
    squatter.signal("finish", 1)
    assert ["squatter", 1] == squatter.result(timeout=10)


def test_child_is_terminated_when_parent_completes(any_client: df.Client) -> None:
    child_id = new_id("policy-child")
    parent = any_client.start(wf_policy_parent, child_id, "terminate", True)
    child = any_client.get_handle(child_id)
    wait_until(lambda: _exists(child), what="child started")
    parent.signal("finish")
    assert "parent done" == parent.result(timeout=10)
    wait_until(lambda: status_of(child) == "terminated", what="child terminated")
    with pytest.raises(df.WorkflowTerminatedError) as caught:
        child.result(timeout=10)
    assert parent.workflow_id in caught.value.cause_message


def test_child_is_terminated_when_parent_returns_right_after_starting_it(
    client: df.Client,
) -> None:
    child_id = new_id("policy-child-fast")
    parent = client.start(wf_policy_parent, child_id, "terminate", False)
    assert "parent done" == parent.result(timeout=10)
    child = client.get_handle(child_id)
    wait_until(lambda: _exists(child) and status_of(child) == "terminated", what="child terminated")


def test_child_is_terminated_when_parent_is_terminated(client: df.Client) -> None:
    child_id = new_id("policy-child-term")
    parent = client.start(wf_policy_parent, child_id, "terminate", True)
    child = client.get_handle(child_id)
    wait_until(lambda: _exists(child), what="child started")
    parent.terminate("stop the family")
    wait_until(lambda: status_of(child) == "terminated", what="child terminated")


# In-process only. Ray path: a parent-close policy reaching the child's partition through Ray:
# test_child_is_terminated_when_parent_completes[ray].
@pytest.mark.parametrize("runtime", ["local"])
def test_child_is_cancelled_with_request_cancel_policy(any_client: df.Client) -> None:
    child_id = new_id("policy-child-cancel")
    parent = any_client.start(wf_policy_parent, child_id, "request_cancel", True)
    child = any_client.get_handle(child_id)
    wait_until(lambda: _exists(child), what="child started")
    parent.signal("finish")
    parent.result(timeout=10)
    wait_until(lambda: status_of(child) == "cancelled", what="child cancelled")


def test_abandoned_child_keeps_running(client: df.Client) -> None:
    child_id = new_id("policy-child-abandon")
    parent = client.start(wf_policy_parent, child_id, "abandon", True)
    child = client.get_handle(child_id)
    wait_until(lambda: _exists(child), what="child started")
    parent.signal("finish")
    assert "parent done" == parent.result(timeout=10)
    time.sleep(0.1)
    assert "running" == status_of(child)
    child.signal("finish", "still here")
    assert ["child", "still here"] == child.result(timeout=10)


def _exists(handle: df.WorkflowHandle) -> bool:
    try:
        handle.describe()
    except df.WorkflowNotFound:
        return False
    return True


# -- determinism -------------------------------------------------------------------------------


# In-process only. Ray path: the same values after the Ray engine is closed and reopened (new
# actors replay): test_ray_core's
# test_runs_continue_by_replay_after_the_ray_engine_is_closed_and_reopened.
@pytest.mark.parametrize("runtime", ["local"])
def test_now_random_uuid_are_the_same_after_restart_and_replay(
    open_any_engine: Callable[[], df.Engine],
) -> None:
    wid = new_id("deterministic")
    with open_any_engine() as engine:
        client = engine.client()
        handle = client.start(wf_deterministic, workflow_id=wid)
        before = query_when_ready(handle, "values")
        start_time = handle.describe().start_time
    assert start_time.isoformat() == before["now"]
    assert 4 == uuid.UUID(before["uuid"]).version
    assert before["uuid"] != before["uuid_after_activity"]
    assert 0.0 <= before["random"] < 1.0
    assert before["now"] <= before["now_after_activity"]

    with open_any_engine() as engine:
        client = engine.client()
        handle = client.get_handle(wid)
        assert before == handle.query("values")  # rebuilt by replay in a fresh engine
        handle.signal("finish")
        assert before == handle.result(timeout=10)
        other = client.start(wf_deterministic)
        other_values = query_when_ready(other, "values")
        assert before["uuid"] != other_values["uuid"]  # seeded per run
        other.terminate("done")


# -- asyncio inside workflows ------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_asyncio_wait_for_and_timeout_around_activities_and_signals(client: df.Client) -> None:
    key = new_id("asyncio-timeouts")
    handle = client.start(wf_asyncio_timeouts, key, workflow_id=key)
    wait_until(lambda: handle.describe().history_length > 10, what="timeouts passed")
    handle.signal("go", "went")
    assert [
        "wait_for activity timed out",
        "slept 0.0",
        "wait_for signal timed out",
        "timeout activity timed out",
        "timeout signal timed out",
        "went",
    ] == handle.result(timeout=10)
    assert 2 == calls(key, "slow-started")
    time.sleep(0.05)
    assert 0 == calls(key, "slow-finished")  # the timed-out attempts were cancelled
    assert 1 == calls(key + "-fast", "slow-finished")


# In-process only. Ray path: a durable timer outliving the Ray engine and firing in the new actors:
# test_ray_core's test_runs_continue_by_replay_after_the_ray_engine_is_closed_and_reopened.
@pytest.mark.parametrize("runtime", ["local"])
def test_asyncio_sleep_is_a_durable_timer(
    open_any_engine: Callable[[], df.Engine], data_dir: Path
) -> None:
    # The real clock and files: the timer is a row that outlives the engine, and the
    # reopened engine keeps the run waiting on it (nothing lost, nothing fired early). That it
    # fires when due after a reopen is checked on a stepped clock just below.
    from duraflow.actors.local_host import partition_path
    from duraflow.actors.router import partition_of

    wid = new_id("durable-sleep")
    with open_any_engine() as engine:
        handle = engine.client().start(wf_asyncio_sleep, 3600.0, workflow_id=wid)
        assert "running" == handle.describe().status

    path = partition_path(data_dir, partition_of(wid, 2))

    def stored() -> tuple[list[int], list[str]]:
        with sqlite3.connect(path) as conn:
            timers = conn.execute(
                "SELECT fire_at_us FROM workflow_timers WHERE workflow_id = ?", (wid,)
            ).fetchall()
            types = conn.execute(
                "SELECT event_type FROM workflow_history WHERE workflow_id = ? ORDER BY event_id",
                (wid,),
            ).fetchall()
        conn.close()
        return [t for (t,) in timers], [t for (t,) in types]

    timers, types = stored()
    assert 1 == len(timers)
    assert ["workflow.started", "workflow.timer_started"] == types

    with open_any_engine() as engine:
        again = engine.client().get_handle(wid)
        described = again.describe()
        assert ("running", 2) == (described.status, described.history_length)
        assert (timers, types) == stored()
        again.terminate("the timer was checked")


def test_an_overdue_asyncio_sleep_fires_when_the_engine_opens_again(data_dir: Path) -> None:
    start = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)
    wid = new_id("overdue-sleep")
    with WorkflowEnvironment.start_local(data_dir=data_dir, start_time=start) as env:
        env.client.start(wf_asyncio_sleep, 3600.0, workflow_id=wid)
        env.advance("59m")
        assert "running" == env.client.get_handle(wid).describe().status

    reopened = start + dt.timedelta(hours=3)  # two hours overdue
    with WorkflowEnvironment.start_local(data_dir=data_dir, start_time=reopened) as env:
        assert 3 * 3600.0 == env.client.get_handle(wid).result(timeout=30)


# -- async twins -------------------------------------------------------------------------------


def test_async_twins(any_client: df.Client) -> None:
    client = any_client

    async def main() -> None:
        wid = new_id("async")
        handle = await client.start_async(wf_async_twins, 40, workflow_id=wid)
        with pytest.raises(df.WorkflowAlreadyRunning):
            await client.start_async(wf_async_twins, 1, workflow_id=wid)
        for _ in range(500):
            try:
                assert 40 == await handle.query_async("x")
                break
            except df.UnknownQuery:
                await asyncio.sleep(0.01)
        described = await handle.describe_async()
        assert "running" == described.status
        listed = await client.list_async(status="running", workflow_type="wf_async_twins")
        assert [wid] == [d.workflow_id for d in listed]
        with pytest.raises(df.ResultTimeout):
            await handle.result_async(timeout=0.05)
        await handle.signal_async("add", 2)
        assert {"sum": 42} == await handle.result_async(timeout=10)

        cancelled = await client.start_async(wf_wait_signal)
        await cancelled.cancel_async("async cancel")
        with pytest.raises(df.WorkflowCancelledError):
            await cancelled.result_async(timeout=10)

        terminated = await client.start_async(wf_wait_signal)
        await terminated.terminate_async("async terminate")
        with pytest.raises(df.WorkflowTerminatedError):
            await terminated.result_async(timeout=10)

        assert 14 == await client.execute_async(wf_many, 7, timeout=10)

    asyncio.run(main())


def test_a_thousand_workflows_started_at_once_all_complete(engine: df.Engine) -> None:
    client = engine.client()

    async def main() -> list[int]:
        handles = await asyncio.gather(
            *(client.start_async(wf_many, i, workflow_id=f"many-{i}") for i in range(1000))
        )
        return await asyncio.gather(*(h.result_async(timeout=60) for h in handles))

    started = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert [2 * i for i in range(1000)] == results
    assert 1000 == len(client.list(status="completed", workflow_type="wf_many", limit=5000))
    assert elapsed < 60


@df.workflow
async def wf_collect_signals(ctx: df.WorkflowContext, n: int) -> list[object]:
    return [await ctx.wait_for_signal("item") for _ in range(n)]


def test_a_signal_resent_with_the_same_request_id_is_appended_once(client: df.Client) -> None:
    handle = client.start(wf_collect_signals, 2)
    handle.signal("item", "a", request_id="req-1")
    handle.signal("item", "a", request_id="req-1")  # a resend after a lost reply
    handle.signal("item", "b", request_id="req-2")
    assert ["a", "b"] == handle.result(timeout=10)


def test_history_lists_every_recorded_event_of_a_run(any_client: df.Client) -> None:
    handle = any_client.start(wf_collect_signals, 1)
    handle.signal("item", "x")
    assert ["x"] == handle.result(timeout=30)
    kinds = [type(e).__name__ for e in handle.history()]
    assert ["WorkflowStarted", "SignalReceived", "WorkflowCompleted"] == kinds
    assert [1, 2, 3] == [e.event_id for e in handle.history()]
    with pytest.raises(df.WorkflowNotFound):
        any_client.get_handle("wf-no-such-history").history()
