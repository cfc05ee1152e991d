"""Workflows talking to workflows, end to end on the in-process runtime (DESIGN section 5):
``ctx.external_workflow`` signal / query / cancel, child handles' signal and query,
``signal_parent`` / ``query_parent``, ``block_until``, signal handlers and ``wait_condition``.

Two partitions, and IDs picked so the two sides of each exchange live on different ones.
Timeouts run on the time-skipping environment. The Ray crash test is in
tests/actors/test_messages_crash.py. Every workflow name here starts with ``msg_``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.actors.router import partition_of
from duraflow.cdc import events as ev
from duraflow.testing import Replayer, WorkflowEnvironment

PARTITIONS = 2


def on_partition(prefix: str, partition: int) -> str:
    """A workflow ID starting with ``prefix`` that partition ``partition`` owns."""
    n = 0
    while partition_of(f"{prefix}-{n}", PARTITIONS) != partition:
        n += 1
    return f"{prefix}-{n}"


def types_of(handle: df.WorkflowHandle) -> list[str]:
    return [ev.event_type(e) for e in handle.history()]


# -- workflows --------------------------------------------------------------------------------


@df.workflow
async def msg_collector(ctx: df.WorkflowContext, expected: int) -> list[Any]:
    got: list[Any] = []
    ctx.set_query_handler("count", lambda: len(got))
    ctx.set_signal_handler("item", got.append)
    await ctx.wait_condition(lambda: len(got) >= expected)
    return got


@df.workflow
async def msg_sender(ctx: df.WorkflowContext, target: str, n: int, at_once: bool) -> int:
    ext = ctx.external_workflow(target)
    if at_once:  # issued together: they still leave, and arrive, in issue order
        await asyncio.gather(*(ext.signal("item", i) for i in range(n)))
    else:
        for i in range(n):
            await ext.signal("item", i)
    return n


@df.workflow
async def msg_prober(ctx: df.WorkflowContext, target: str) -> dict[str, Any]:
    """What each kind of request to ``target`` gives (errors by type name)."""
    ext = ctx.external_workflow(target)
    out: dict[str, Any] = {}
    for what, call in (
        ("signal", lambda: ext.signal("item", "x")),
        ("query", lambda: ext.query("count")),
        ("cancel", lambda: ext.cancel("probe")),
    ):
        try:
            out[what] = await call()
        except df.DuraflowError as exc:
            out[what] = type(exc).__name__
    return out


@df.workflow
async def msg_waiter(ctx: df.WorkflowContext) -> str:
    try:
        await ctx.wait_for_signal("never")
    except asyncio.CancelledError:
        return "cleaned up"
    return "signalled"


@df.workflow
async def msg_querier(ctx: df.WorkflowContext, target: str) -> int:
    count = await ctx.external_workflow(target).query("count")
    await ctx.external_workflow(target).signal("item", "after the query")
    return int(count)


@df.workflow
async def msg_child(ctx: df.WorkflowContext, n: int) -> dict[str, Any]:
    await ctx.signal_parent("report", {"child": n})
    factor = await ctx.query_parent("factor")
    extra = await ctx.wait_for_signal("extra")
    return {"value": n * factor + extra}


@df.workflow
async def msg_parent(ctx: df.WorkflowContext) -> dict[str, Any]:
    reports: list[Any] = []
    ctx.set_query_handler("factor", lambda: 10)
    ctx.set_signal_handler("report", reports.append)
    child = await ctx.start_child(msg_child, 4, workflow_id=f"{ctx.info.workflow_id}/kid")
    await child.signal("extra", 2)  # sent right after the start: it waits for the child
    result = await child.result()
    return {"reports": reports, "result": result}


@df.workflow
async def msg_orphan(ctx: df.WorkflowContext) -> list[str]:
    errors = []
    for call in (lambda: ctx.signal_parent("x"), lambda: ctx.query_parent("y")):
        try:
            await call()
        except df.NoParentWorkflow as exc:
            errors.append(str(exc))
    return errors


@df.workflow
async def msg_child_queried(ctx: df.WorkflowContext) -> dict[str, Any]:
    child = await ctx.start_child(msg_collector, 1, workflow_id=f"{ctx.info.workflow_id}/c")
    count = await child.query("count")  # right after the start, too
    await child.signal("item", "one")
    return {"count": count, "result": await child.result()}


@df.workflow
async def msg_blocker(
    ctx: df.WorkflowContext, ids: list[str], condition: str, timeout: float | None
) -> dict[str, Any]:
    began = ctx.time()
    try:
        closed = await ctx.block_until(ids, condition=condition, timeout=timeout)  # type: ignore[arg-type]
    except TimeoutError:
        return {"timeout_after": ctx.time() - began}
    return {"closed": closed}


@df.workflow
async def msg_fails(ctx: df.WorkflowContext) -> None:
    await ctx.wait_for_signal("go")
    raise ValueError("asked to fail")


@df.workflow
async def msg_conditions(ctx: df.WorkflowContext) -> dict[str, Any]:
    items: list[Any] = []
    began = ctx.time()
    await ctx.sleep(60)  # signals sent meanwhile are buffered until the handler is set

    async def slow(item: Any) -> None:
        await asyncio.sleep(1)  # an async handler may await (a durable timer)
        items.append(item)

    ctx.set_signal_handler("item", slow)
    await ctx.wait_condition(lambda: len(items) >= 2)
    try:
        await ctx.wait_condition(lambda: len(items) >= 3, timeout="1h")
    except TimeoutError:
        timed_out = ctx.time() - began
    return {"items": items, "timed_out_at": timed_out}


@df.workflow
async def msg_bad_handler(ctx: df.WorkflowContext) -> None:
    def handler(item: Any) -> None:
        raise KeyError(item)

    ctx.set_signal_handler("item", handler)
    await ctx.wait_for_signal("never")


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("at_once", [False, True], ids=["one-by-one", "at-once"])
def test_signals_between_partitions_arrive_once_each_in_the_order_sent(
    client: df.Client, at_once: bool
) -> None:
    target = on_partition("msg-collect", 1)
    collector = client.start(msg_collector, 30, workflow_id=target)
    sender = client.start(msg_sender, target, 30, at_once, workflow_id=on_partition("msg-send", 0))

    assert 30 == sender.result(timeout=30)
    assert list(range(30)) == collector.result(timeout=30)
    assert 30 == types_of(collector).count("workflow.signal_received")
    assert 30 == types_of(sender).count("workflow.external_completed")


def test_requests_to_a_closed_run_or_an_unknown_id_fail_as_a_clients_would(
    client: df.Client,
) -> None:
    closed_id = on_partition("msg-closed", 1)
    client.start(msg_collector, 0, workflow_id=closed_id).result(timeout=10)
    unknown_id = on_partition("msg-unknown", 1)

    to_closed = client.start(msg_prober, closed_id, workflow_id=on_partition("msg-p1", 0))
    to_unknown = client.start(msg_prober, unknown_id, workflow_id=on_partition("msg-p2", 0))

    assert dict.fromkeys(("signal", "query", "cancel"), "WorkflowClosed") == to_closed.result(
        timeout=10
    )
    assert dict.fromkeys(("signal", "query", "cancel"), "WorkflowNotFound") == to_unknown.result(
        timeout=10
    )
    with pytest.raises(df.WorkflowClosed):
        client.get_handle(closed_id).signal("item", "x")
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle(unknown_id).signal("item", "x")


def test_a_workflow_cancels_another_whose_code_sees_the_cancellation(client: df.Client) -> None:
    waiter = client.start(msg_waiter, workflow_id=on_partition("msg-wait", 1))
    prober = client.start(msg_prober, waiter.workflow_id, workflow_id=on_partition("msg-c", 0))

    assert {"signal": None, "query": "UnknownQuery", "cancel": None} == prober.result(timeout=10)
    assert "cleaned up" == waiter.result(timeout=10)


def test_a_query_answer_is_recorded_so_replay_returns_it_without_asking(
    client: df.Client,
) -> None:
    target = on_partition("msg-q", 1)
    collector = client.start(msg_collector, 3, workflow_id=target)
    collector.signal("item", "a")
    collector.signal("item", "b")
    querier = client.start(msg_querier, target, workflow_id=on_partition("msg-qr", 0))

    assert 2 == querier.result(timeout=10)
    assert ["a", "b", "after the query"] == collector.result(timeout=10)
    history = querier.history()
    answer = next(e for e in history if isinstance(e, ev.ExternalCompleted) and e.seq == 1)
    assert b"\x02" == answer.result
    # The target is closed now: a replay that asked again would get WorkflowClosed.
    assert 1 == Replayer(workflows=[msg_querier]).replay(history)


# -- children and parents -----------------------------------------------------------------------


def test_children_signal_and_query_their_parent_which_signals_and_queries_them(
    client: df.Client,
) -> None:
    parent = client.start(msg_parent, workflow_id=on_partition("msg-parent", 0))
    assert {"reports": [{"child": 4}], "result": {"value": 42}} == parent.result(timeout=10)

    queried = client.start(msg_child_queried, workflow_id=on_partition("msg-cq", 1))
    assert {"count": 0, "result": ["one"]} == queried.result(timeout=10)


def test_signal_parent_and_query_parent_without_a_parent_raise_no_parent_workflow(
    client: df.Client,
) -> None:
    errors = client.start(msg_orphan, workflow_id="msg-orphan").result(timeout=10)
    assert 2 == len(errors)
    assert all("'msg-orphan' was not started as a child" in e for e in errors), errors


# -- block_until --------------------------------------------------------------------------------


def test_block_until_all_complete_counts_any_status_and_ids_that_start_later(
    client: df.Client,
) -> None:
    failing = client.start(msg_fails, workflow_id=on_partition("msg-f", 1))
    later = on_partition("msg-later", 1)
    blocker = client.start(
        msg_blocker,
        [failing.workflow_id, later, failing.workflow_id],
        "all_complete",
        None,
        workflow_id=on_partition("msg-b", 0),
    )
    failing.signal("go")
    client.start(msg_collector, 0, workflow_id=later)  # did not exist when the wait began

    assert {"closed": {failing.workflow_id: "failed", later: "completed"}} == blocker.result(
        timeout=10
    )


def test_block_until_any_complete_returns_the_first_and_forgets_the_others(
    client: df.Client,
) -> None:
    done = client.start(msg_collector, 0, workflow_id=on_partition("msg-d", 1))
    done.result(timeout=10)
    blocker = client.start(
        msg_blocker,
        [on_partition("msg-never", 1), done.workflow_id],
        "any_complete",
        None,
        workflow_id=on_partition("msg-any", 0),
    )
    assert {"closed": {done.workflow_id: "completed"}} == blocker.result(timeout=10)
    ended = next(e for e in blocker.history() if isinstance(e, ev.BlockUntilEnded))
    assert [on_partition("msg-never", 1)] == ended.pending


def test_block_until_waits_across_an_engine_restart(data_dir: Path) -> None:
    target = on_partition("msg-restart-t", 1)
    options: dict[str, Any] = {"runtime": "local", "partitions": PARTITIONS}
    with df.Engine(data_dir, **options) as engine:
        client = engine.client()
        client.start(msg_fails, workflow_id=target)
        client.start(msg_blocker, [target], "all_complete", None, workflow_id="msg-restart-b")
    with df.Engine(data_dir, **options) as engine:
        client = engine.client()
        client.get_handle(target).signal("go")
        result = client.get_handle("msg-restart-b").result(timeout=10)
    assert {"closed": {target: "failed"}} == result


def test_block_until_and_wait_condition_raise_timeout_error_at_their_timeout(
    skipping_env: WorkflowEnvironment,
) -> None:
    client = skipping_env.client
    blocker = client.start(
        msg_blocker, ["msg-nobody"], "all_complete", 3600.0, workflow_id="msg-bt"
    )
    assert {"timeout_after": 3600.0} == blocker.result(timeout=30)

    conditions = client.start(msg_conditions, workflow_id="msg-cond")
    conditions.signal("item", "first")
    conditions.signal("item", "second")
    # 60 s asleep, two handler calls of 1 s each in arrival order, then one hour more.
    assert {"items": ["first", "second"], "timed_out_at": 60 + 1 + 3600} == conditions.result(
        timeout=30
    )


def test_bad_block_until_calls_are_refused_with_the_cause(client: df.Client) -> None:
    @df.workflow(name="msg_bad_blocks")
    async def bad_blocks(ctx: df.WorkflowContext) -> list[str]:
        out = []
        for ids, condition in (
            ([], "all_complete"),
            ("one-id", "all_complete"),
            ([ctx.info.workflow_id], "all_complete"),
            (["x"], "most_complete"),
        ):
            try:
                await ctx.block_until(ids, condition=condition)  # type: ignore[arg-type]
            except df.ConfigurationError as exc:
                out.append(str(exc))
        return out

    messages = client.start(bad_blocks, workflow_id="msg-bad").result(timeout=10)
    assert 4 == len(messages)
    assert "at least one" in messages[0] and "not one str" in messages[1]
    assert "its own workflow" in messages[2] and "'most_complete'" in messages[3]


# -- signal handlers ----------------------------------------------------------------------------


def test_a_signal_handler_that_raises_fails_the_run_naming_the_signal(client: df.Client) -> None:
    handle = client.start(msg_bad_handler, workflow_id="msg-bad-handler")
    handle.signal("item", "boom")
    with pytest.raises(df.WorkflowFailedError) as caught:
        handle.result(timeout=10)
    assert "KeyError" in str(caught.value)


def test_runs_dropped_from_memory_after_every_turn_still_exchange_in_order(
    data_dir: Path,
) -> None:
    """Each answer and each signal finds its run hibernated: rebuilt by replay, the sender's
    pending request (and the queue behind it) and the collector's handler are back."""
    with df.Engine(data_dir, runtime="local", partitions=PARTITIONS, max_resident_runs=0) as engine:
        client = engine.client()
        target = on_partition("msg-hib-t", 1)
        collector = client.start(msg_collector, 10, workflow_id=target)
        sender = client.start(
            msg_sender, target, 10, True, workflow_id=on_partition("msg-hib-s", 0)
        )
        assert 10 == sender.result(timeout=30)
        assert list(range(10)) == collector.result(timeout=30)


def test_the_new_events_reach_the_archive_with_their_fields(
    engine: df.Engine, client: df.Client
) -> None:
    done = client.start(msg_collector, 0, workflow_id=on_partition("msg-arch-d", 1))
    done.result(timeout=10)
    blocker = client.start(
        msg_blocker,
        [done.workflow_id, "msg-arch-never"],
        "any_complete",
        None,
        workflow_id=on_partition("msg-arch-b", 0),
    )
    prober = client.start(msg_prober, done.workflow_id, workflow_id="msg-arch-p")
    blocker.result(timeout=10)
    prober.result(timeout=10)
    assert engine.sync_archive(timeout=30)

    rows = client.sql(
        "SELECT event_type, data FROM history WHERE workflow_id IN ('msg-arch-p', ?) "
        "ORDER BY event_type",
        [blocker.workflow_id],
    ).to_pylist()
    by_type = {r["event_type"]: r["data"] for r in rows}
    assert {
        "workflow.external_signal_requested",
        "workflow.external_query_requested",
        "workflow.external_cancel_requested",
        "workflow.external_failed",
        "workflow.block_until_started",
        "workflow.blocked_workflow_closed",
        "workflow.block_until_ended",
    } <= set(by_type)
    assert '"msg-arch-never"' in by_type["workflow.block_until_ended"]
    assert '"WorkflowClosed"' in by_type["workflow.external_failed"]
