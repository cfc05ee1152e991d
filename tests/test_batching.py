"""Client batching and result mailboxes: many requests in one turn, results by long-poll."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

import duraflow as df
from duraflow.actors import messages as m
from duraflow.actors.mailboxes import Mailboxes
from duraflow.actors.router import partition_of
from duraflow.engine.definitions import workflow_definition

RAY_ARCHIVE = False  # the Ray variants test the transport, not the archive (see conftest)


@df.activity(inline=True)
def bt_double(x: int) -> int:
    return 2 * x


@df.workflow
async def bt_steps(ctx: df.WorkflowContext, x: int) -> int:
    return await ctx.activity(bt_double, await ctx.activity(bt_double, x))


@df.workflow
async def bt_wait(ctx: df.WorkflowContext) -> Any:
    return await ctx.wait_for_signal("go")


def turns(engine: df.Engine) -> int:
    return sum(s["turns"] for s in engine.stats())


def test_requests_made_together_share_turns_and_results_arrive(any_engine: df.Engine) -> None:
    client = any_engine.client()
    count = 300

    async def scenario() -> list[int]:
        handles = await asyncio.gather(*(client.start_async(bt_steps, i) for i in range(count)))
        return await asyncio.gather(*(h.result_async(timeout=60) for h in handles))

    before = turns(any_engine)
    assert [4 * i for i in range(count)] == asyncio.run(scenario())
    # 300 starts, 300 result registrations and 600 activity outcomes: one turn each would be
    # 1,200 turns; batched, the starts alone take one turn per partition.
    assert turns(any_engine) - before < count


def test_a_failing_request_fails_alone_in_its_batch(any_client: df.Client) -> None:
    same = {partition_of(w, 2) for w in ("bt-ok-2", "bt-no-such-workflow", "bt-ok-3")}
    assert 1 == len(same), "the three requests go to one partition, in one batch"

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            any_client.start_async(bt_steps, 1, workflow_id="bt-ok-2"),
            any_client.get_handle("bt-no-such-workflow").signal_async("go"),
            any_client.start_async(bt_steps, 2, workflow_id="bt-ok-3"),
            return_exceptions=True,
        )

    first, missing, second = asyncio.run(scenario())
    assert isinstance(missing, df.WorkflowNotFound)
    assert "bt-no-such-workflow" in str(missing)
    assert 4 == first.result(timeout=30)
    assert 8 == second.result(timeout=30)


def test_result_waits_time_out_alone_and_can_wait_again(any_client: df.Client) -> None:
    handle = any_client.start(bt_wait, workflow_id="bt-wait-1")

    async def scenario() -> tuple[Any, Any, Any]:
        patient = asyncio.ensure_future(handle.result_async(timeout=30))
        with pytest.raises(df.ResultTimeout):
            await handle.result_async(timeout=0.2)
        again = asyncio.ensure_future(handle.result_async(timeout=30))
        await asyncio.sleep(0.1)
        await handle.signal_async("go", "now")
        latest = await any_client.get_handle("bt-wait-1").result_async(timeout=30)
        return await patient, await again, latest

    assert ("now", "now", "now") == asyncio.run(scenario())
    assert "now" == handle.result(timeout=5)  # closed: answered at once from the partition


def test_results_of_runs_closed_before_anyone_waited(any_client: df.Client) -> None:
    handles = [any_client.start(bt_steps, i) for i in range(5)]
    assert [4 * i for i in range(5)] == [h.result(timeout=30) for h in handles]
    assert [4 * i for i in range(5)] == [h.result(timeout=30) for h in handles]


def test_execute_sends_the_start_and_the_result_wait_in_one_turn(any_engine: df.Engine) -> None:
    client = any_engine.client()

    async def scenario() -> None:
        with pytest.raises(asyncio.TimeoutError):  # parked on its signal: it goes on
            await asyncio.wait_for(client.execute_async(bt_wait, workflow_id="bt-exec-1"), 0.5)

    before = turns(any_engine)
    asyncio.run(scenario())
    assert 1 == turns(any_engine) - before  # not one turn for the start, one for the wait
    client.get_handle("bt-exec-1").signal("go", 5)
    assert 5 == client.get_handle("bt-exec-1").result(timeout=30)
    assert [4, 8] == [client.execute(bt_steps, x, timeout=30) for x in (1, 2)]
    parked = client.start(bt_wait, workflow_id="bt-exec-2")
    with pytest.raises(df.WorkflowAlreadyRunning):  # the start fails, and the wait with it
        client.execute(bt_wait, workflow_id="bt-exec-2", timeout=30)
    parked.signal("go", 6)
    assert 6 == parked.result(timeout=30)


def test_a_malformed_batch_is_refused_with_the_field_named(ray_engine: df.Engine) -> None:
    import ray

    actor = ray_engine.client()._host._handles[0]  # type: ignore[attr-defined]  # reason: the raw actor, as foreign code would call it
    bad = msgspec.msgpack.encode([{"type": "Start", "workflow_id": 7}])
    reply = ray.get(actor.call_batch.remote(bad))
    assert isinstance(reply.error, df.PayloadError)
    assert "workflow_id" in str(reply.error)
    assert isinstance(ray.get(actor.call_batch.remote(b"\xc1")).error, df.PayloadError)


def test_a_batch_with_one_bad_request_runs_none_of_it(any_engine: df.Engine) -> None:
    client = any_engine.client()
    host = client._host  # type: ignore[attr-defined]  # reason: the host's batch call, as the batcher makes it
    workflow_id = "bt-half-batch"
    start = m.Start(
        workflow_id=workflow_id,
        workflow_type=workflow_definition(bt_steps).name,
        code_ref=workflow_definition(bt_steps).code_ref,
        args=msgspec.msgpack.encode([1]),
        run_id="r1",
    )
    waits_without_mailbox = m.AwaitResult(workflow_id=workflow_id)
    partition = partition_of(workflow_id, host.partitions)

    with pytest.raises(df.PayloadError, match="mailbox"):
        asyncio.run(host.call_batch(partition, [start, waits_without_mailbox]))

    # the well-formed Start before the bad request did not run either
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle(workflow_id).describe()
    [reply] = asyncio.run(host.call_batch(partition, [start]))
    assert reply.started
    assert 4 == client.get_handle(workflow_id).result(timeout=30)


# -- mailboxes on their own ------------------------------------------------------------------


def outcome(workflow_id: str) -> m.MailedOutcome:
    return m.MailedOutcome(None, m.Outcome(workflow_id, "run", "completed", b"\x01"))


def test_mailbox_collects_what_arrived_and_waits_for_more() -> None:
    async def scenario() -> tuple[Any, ...]:
        boxes = Mailboxes()
        unknown = await boxes.collect("nobody", 0.0)
        boxes.register("box")
        boxes.deliver("box", outcome("a"))
        boxes.deliver("elsewhere", outcome("b"))  # no such mailbox: dropped
        first = await boxes.collect("box", 1.0)
        later = asyncio.ensure_future(boxes.collect("box", 5.0))
        await asyncio.sleep(0.01)
        boxes.deliver("box", outcome("c"))
        second = await later
        empty = await boxes.collect("box", 0.05)
        return unknown, first, second, empty

    unknown, first, second, empty = asyncio.run(scenario())
    assert unknown is None
    assert ["a"] == [item.outcome.workflow_id for item in first]
    assert ["c"] == [item.outcome.workflow_id for item in second]
    assert [] == empty


def test_a_mailbox_nobody_collects_from_expires() -> None:
    now = [0.0]
    boxes = Mailboxes(ttl_s=100.0, clock=lambda: now[0])
    boxes.register("gone")
    now[0] = 60.0
    boxes.register("alive")
    now[0] = 130.0
    boxes.register("alive")  # registering sweeps: "gone" was idle for 130 s
    assert 1 == len(boxes)

    async def collect() -> Any:
        return await boxes.collect("gone", 0.0)

    assert asyncio.run(collect()) is None
