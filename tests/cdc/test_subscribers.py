"""CDC subscriptions: every event type with its fields, in order, resumable, never slowing
workflows down; on both runtimes."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import duraflow as df
from duraflow.cdc import events as ev

COMMON = ("workflow_id", "run_id", "workflow_type", "event_id", "partition", "lsn", "at_us")


@df.activity(retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=2))
def cdc_flaky(fail: bool) -> str:
    if fail:
        raise ValueError("cdc boom")
    return "ok"


@df.workflow
async def cdc_child(ctx: df.WorkflowContext, fail: bool) -> str:
    if fail:
        raise RuntimeError("child failed")
    return "child ok"


@df.workflow
async def cdc_everything(ctx: df.WorkflowContext) -> str:
    ctx.set_update_handler("ok", lambda x: x)  # update_accepted, update_completed
    ctx.set_update_handler("bad", lambda: 1 / 0)  # update_failed
    ctx.patched("cdc-patch")  # workflow.patched
    await ctx.activity(cdc_flaky, False)
    with contextlib.suppress(df.ActivityError):
        await ctx.activity(cdc_flaky, True)  # one retry, then activity_failed
    task = asyncio.ensure_future(ctx.activity(cdc_flaky, False))
    await asyncio.sleep(0)  # the task schedules its activity
    task.cancel()  # activity_cancelled
    await asyncio.sleep(0)
    await ctx.sleep(0.01)  # timer_started, timer_fired
    await asyncio.wait_for(ctx.activity(cdc_flaky, False), 60)  # timer_cancelled when done
    await ctx.wait_for_signal("go")
    await ctx.execute_child(cdc_child, False)  # child_started, child_completed
    with contextlib.suppress(df.ChildWorkflowError):
        await ctx.execute_child(cdc_child, True)  # child_failed
    kid = await ctx.start_child(cdc_wait, workflow_id=f"{ctx.info.workflow_id}-kid")
    await kid.signal("hello", 1)  # external_signal_requested, external_completed
    with contextlib.suppress(df.UnknownQuery):
        await kid.query("nothing")  # external_query_requested, external_failed
    await kid.cancel("enough")  # external_cancel_requested
    with contextlib.suppress(df.ChildWorkflowError):
        await kid.result()
    # block_until_started, blocked_workflow_closed, block_until_ended (for the other ID)
    await ctx.block_until([kid.workflow_id, "cdc-nobody"], condition="any_complete")
    return "done"


@df.workflow
async def cdc_wait(ctx: df.WorkflowContext) -> None:
    await ctx.wait_for_signal("never")


@df.workflow
async def cdc_fails(ctx: df.WorkflowContext) -> None:
    raise ValueError("workflow failed")


def _tag(event: ev.Event) -> str:
    return ev.event_type(event)


def _collect(sub: df.Client, until: int, timeout: float = 20) -> list[ev.Event]:
    seen: list[ev.Event] = []
    deadline = time.monotonic() + timeout
    while len(seen) < until and time.monotonic() < deadline:
        event = sub.get(timeout=max(0.01, deadline - time.monotonic()))  # type: ignore[attr-defined]
        if event is not None:
            seen.append(event)
    return seen


def test_every_event_type_arrives_with_its_fields(any_client: df.Client) -> None:
    with any_client.subscribe(from_="earliest") as sub:
        handle = any_client.start(cdc_everything, workflow_id="cdc-all")
        time.sleep(0.3)
        assert 5 == handle.update("ok", 5)
        with pytest.raises(df.UpdateFailed):
            handle.update("bad")
        handle.signal("go", 1)
        assert "done" == handle.result(timeout=30)
        cancelled = any_client.start(cdc_wait, workflow_id="cdc-cancel")
        cancelled.pause("ops")  # workflow.paused
        cancelled.unpause()  # workflow.unpaused
        cancelled.cancel("stop")
        terminated = any_client.start(cdc_wait, workflow_id="cdc-term")
        terminated.terminate("bye")
        failed = any_client.start(cdc_fails, workflow_id="cdc-fail")
        with pytest.raises(df.WorkflowFailedError):
            failed.result(timeout=10)
        with pytest.raises(df.WorkflowCancelledError):
            cancelled.result(timeout=10)
        seen: list[ev.Event] = []
        deadline = time.monotonic() + 20
        while set(ev.EVENT_TYPES) - {_tag(e) for e in seen} and time.monotonic() < deadline:
            event = sub.get(timeout=1)
            if event is not None:
                seen.append(event)
    assert set(ev.EVENT_TYPES) == {_tag(e) for e in seen}
    for event in seen:
        assert all(getattr(event, f) not in (None, "") for f in COMMON), event
        assert event.lsn > 0 and event.event_id > 0 and event.at_us > 0
    by_type = {_tag(e): e for e in seen}
    retry = by_type["workflow.step.retry"]
    assert "cdc boom" == retry.error_message
    assert (1, 2) == (retry.attempt, retry.max_attempts)
    assert round((retry.next_attempt_at_us - retry.at_us) / 1000) == retry.delay_ms
    completed = by_type["workflow.completed"]
    started = next(
        e for e in seen if e.run_id == completed.run_id and _tag(e) == "workflow.started"
    )
    assert "completed" == completed.status
    assert (completed.at_us - started.at_us) // 1000 == completed.duration_ms
    for closing in ("workflow.failed", "workflow.cancelled", "workflow.terminated"):
        assert by_type[closing].duration_ms >= 0
    assert "ValueError" == by_type["workflow.activity_failed"].error_type
    cancels = {e.workflow_id: e.reason for e in seen if _tag(e) == "workflow.cancel_requested"}
    assert cancels and cancels.items() <= {"cdc-cancel": "stop", "cdc-all-kid": "enough"}.items()
    assert "bye" == by_type["workflow.terminated"].reason
    assert "cdc_everything" == by_type["workflow.child_started"].workflow_type
    assert {"failed", "cancelled"} == {e.status for e in seen if _tag(e) == "workflow.child_failed"}
    assert ["cdc-nobody"] == by_type["workflow.block_until_ended"].pending


def test_events_come_in_lsn_order_per_partition_and_resume_without_a_gap(
    any_client: df.Client,
) -> None:
    sub = any_client.subscribe(event_types=["workflow.signal_received"], from_="earliest")
    handles = [any_client.start(cdc_wait, workflow_id=f"cdc-order-{i}") for i in range(6)]
    for round_ in range(5):
        for h in handles:
            h.signal("tick", round_)
    first = _collect(sub, 12)
    sub.close()
    resumed = any_client.subscribe(event_types=["workflow.signal_received"], from_=sub.offsets)
    rest = _collect(resumed, 30 - 12)
    resumed.close()
    everything = first + rest
    assert 30 == len(everything)
    assert 30 == len({(e.workflow_id, e.event_id) for e in everything})
    for partition in {e.partition for e in everything}:
        lsns = [e.lsn for e in everything if e.partition == partition]
        assert sorted(lsns) == lsns
    for h in handles:
        h.terminate()


def test_a_stalled_subscriber_does_not_slow_workflows(any_client: df.Client) -> None:
    sub = any_client.subscribe(from_="latest", buffer=1)
    assert sub.get(timeout=0.2) is None  # starts the pollers; nothing new yet
    t0 = time.monotonic()
    handles = [any_client.start(cdc_everything, workflow_id=f"cdc-slow-{i}") for i in range(5)]
    for h in handles:
        h.signal("go", 1)
    assert ["done"] * 5 == [h.result(timeout=60) for h in handles]
    elapsed = time.monotonic() - t0
    # The subscriber read nothing meanwhile; it still gets the events, from where it was.
    first = sub.get(timeout=5)
    sub.close()
    assert first is not None and "workflow.started" == _tag(first)
    assert elapsed < 30


def test_latest_means_after_subscribe_returns_not_after_the_first_read(
    any_client: df.Client,
) -> None:
    any_client.start(cdc_fails, workflow_id="cdc-before-latest")
    sub = any_client.subscribe(event_types=["workflow.failed"], from_="latest")
    any_client.start(cdc_fails, workflow_id="cdc-after-latest").describe()
    time.sleep(0.2)  # committed well before the first read below

    got = _collect(sub, 1)
    sub.close()

    assert ["cdc-after-latest"] == [e.workflow_id for e in got]


def test_filters_by_workflow_id_and_type_and_bad_filters_are_refused(
    any_client: df.Client,
) -> None:
    with pytest.raises(df.ConfigurationError, match="unknown event types"):
        any_client.subscribe(event_types=["workflow.exploded"])
    with pytest.raises(df.ConfigurationError, match="from_"):
        any_client.subscribe(from_="yesterday")
    sub = any_client.subscribe(workflow_id="cdc-only-me", from_="earliest")
    any_client.start(cdc_fails, workflow_id="cdc-not-me")
    any_client.start(cdc_fails, workflow_id="cdc-only-me")
    got = _collect(sub, 2)
    sub.close()
    assert {"cdc-only-me"} == {e.workflow_id for e in got}
    assert ["workflow.started", "workflow.failed"] == [_tag(e) for e in got]


def test_async_iteration(any_client: df.Client) -> None:
    async def main() -> list[str]:
        sub = any_client.subscribe(event_types=["workflow.failed"], from_="earliest")
        await any_client.start_async(cdc_fails, workflow_id="cdc-async-1")
        await any_client.start_async(cdc_fails, workflow_id="cdc-async-2")
        ids = []
        async for event in sub:
            ids.append(event.workflow_id)
            if len(ids) == 2:
                break
        sub.close()
        return sorted(ids)

    assert ["cdc-async-1", "cdc-async-2"] == asyncio.run(main())
