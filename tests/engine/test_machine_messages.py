"""The partition machine's rules for workflows talking to workflows, pure (see test_machine).

Two machines stand for two partitions; the test carries each outbox message from one to the
other and each answer back as a ``Delivered``, which is what the shell's outbox does. Every
workflow name starts with ``mm_``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import duraflow as df
from duraflow.actors import messages as m
from duraflow.engine import effects as fx
from duraflow.engine.machine_messages import CHILD_START_RETRY_S, WATCHERS_KEY
from duraflow.errors import PartitionUnavailable, WorkflowClosed, WorkflowNotFound
from duraflow.storage.codec import decode, encode
from tests.engine.test_machine import T0, Harness, kinds, only


@df.workflow
async def mm_sender(ctx: df.WorkflowContext, target: str) -> list[object]:
    ext = ctx.external_workflow(target)
    await ext.signal("n", 1)
    await ext.signal("n", 2)
    answer = await ext.query("count")
    try:
        await ext.signal("n", 3)
    except df.WorkflowClosed as exc:
        return [answer, type(exc).__name__]
    return [answer, "sent"]


@df.workflow
async def mm_parallel(ctx: df.WorkflowContext, target: str) -> None:
    ext = ctx.external_workflow(target)
    await asyncio.gather(*(ext.signal("n", i) for i in range(3)))


@df.workflow
async def mm_counter(ctx: df.WorkflowContext) -> list[int]:
    seen: list[int] = []
    ctx.set_query_handler("count", lambda: len(seen))
    ctx.set_signal_handler("n", seen.append)
    await ctx.wait_condition(lambda: len(seen) >= 2)
    return seen


@df.workflow
async def mm_blocker(ctx: df.WorkflowContext, ids: list[str], condition: str) -> dict[str, str]:
    return await ctx.block_until(ids, condition=condition)  # type: ignore[arg-type]


@df.workflow
async def mm_child_pinger(ctx: df.WorkflowContext) -> None:
    child = await ctx.start_child(mm_counter, workflow_id="kid")
    await child.signal("n", 1)


def outboxed(effects: list[Any]) -> list[Any]:
    return [e.message for e in effects if type(e) is fx.PutOutbox]


def started(h: Harness, fn: Any, *args: Any, workflow_id: str) -> tuple[str, list[Any]]:
    effects = h.start(fn, *args, workflow_id=workflow_id)
    return only(effects, fx.Reply).value.run_id, effects


def events_of(effects: list[Any]) -> list[Any]:
    return [event for e in effects if type(e) is fx.AppendEvents for event in e.events]


def test_a_signal_travels_in_the_outbox_and_its_answer_is_recorded_before_the_next_is_sent() -> (
    None
):
    sender, target = Harness(), Harness()
    started(target, mm_counter, workflow_id="t")
    run_id, effects = started(sender, mm_sender, "t", workflow_id="s")

    (request,) = outboxed(effects)  # the second signal waits for the first's answer
    assert isinstance(request, m.ExternalRequest)
    assert ("s", run_id, 1, f"{run_id}:1") == (
        request.sender_id,
        request.sender_run_id,
        request.seq,
        request.request.request_id,
    )
    received = target.apply(request)
    assert ["+workflow.signal_received", "MarkSignal", "Reply"] == kinds(received)
    reply = only(received, fx.Reply)
    assert reply.error is None

    answered = sender.apply(fx.Delivered(7, request, None, reply.value))
    assert [
        "DropOutbox",
        "+workflow.external_completed",
        "+workflow.external_signal_requested",
        "PutOutbox",
        "Reply",
    ] == kinds(answered)
    (second,) = outboxed(answered)
    assert (2, 2) == (second.seq, decode(second.request.payload))


def test_a_resent_signal_is_appended_once_even_after_its_target_closed() -> None:
    sender, target = Harness(), Harness()
    started(target, mm_counter, workflow_id="t")
    _, effects = started(sender, mm_sender, "t", workflow_id="s")
    (first,) = outboxed(effects)
    target.apply(first)
    again = target.apply(first)  # the sender never heard the answer and sent it again
    assert ["Reply"] == kinds(again)
    assert only(again, fx.Reply).error is None

    second = outboxed(sender.apply(fx.Delivered(1, first, None, None)))[0]
    closing = target.apply(second)  # the counter has its two signals: it completes
    assert "completed" == only(closing, fx.Closed).outcome.status
    assert ["Reply"] == kinds(target.apply(first))  # still recognised: nothing appended
    assert [1, 2] == decode(only(closing, fx.Closed).outcome.result)


def test_a_query_answer_and_a_refusal_are_recorded_as_the_senders_resolutions() -> None:
    sender = Harness()
    _, effects = started(sender, mm_sender, "t", workflow_id="s")
    for outbox_id in (1, 2):
        (request,) = outboxed(effects)
        effects = sender.apply(fx.Delivered(outbox_id, request, None, None))
    (query,) = outboxed(effects)
    assert isinstance(query.request, m.Query)
    effects = sender.apply(fx.Delivered(3, query, None, encode(2)))
    completed = [e for e in events_of(effects) if type(e).__name__ == "ExternalCompleted"]
    assert 2 == decode(completed[0].result)  # recorded: a replay reads it from history

    (third,) = outboxed(effects)
    refused = WorkflowClosed("cannot signal workflow 't': run r already completed")
    done = sender.apply(fx.Delivered(4, third, refused, None))
    failed = next(e for e in events_of(done) if type(e).__name__ == "ExternalFailed")
    assert ("WorkflowClosed", str(refused)) == (failed.error_type, failed.error_message)
    assert [2, "WorkflowClosed"] == decode(only(done, fx.Closed).outcome.result)


def test_a_target_partition_away_means_a_resend_later_and_nothing_recorded() -> None:
    sender = Harness()
    _, effects = started(sender, mm_sender, "t", workflow_id="s")
    (request,) = outboxed(effects)
    away = sender.apply(fx.Delivered(5, request, PartitionUnavailable("restarting"), None))
    assert ["Arm", "Reply"] == kinds(away)
    assert fx.OutboxRetry(5) == only(away, fx.Arm).due


def test_signals_sent_at_once_leave_one_at_a_time_in_issue_order() -> None:
    sender = Harness()
    _, effects = started(sender, mm_parallel, "t", workflow_id="s")
    order = []
    for outbox_id in range(1, 4):
        (request,) = outboxed(effects)
        order.append(decode(request.request.payload))
        effects = sender.apply(fx.Delivered(outbox_id, request, None, None))
    assert [0, 1, 2] == order
    assert "completed" == only(effects, fx.Closed).outcome.status


def test_a_signal_to_a_child_whose_start_has_not_arrived_is_sent_again_soon() -> None:
    parent = Harness()
    _, effects = started(parent, mm_child_pinger, workflow_id="p")
    start, signal = outboxed(effects)
    assert (isinstance(start, m.Start), 1) == (True, signal.child_seq)
    early = parent.apply(fx.Delivered(2, signal, WorkflowNotFound("no workflow 'kid'"), None))
    assert fx.Arm(T0 + CHILD_START_RETRY_S, fx.OutboxRetry(2)) == only(early, fx.Arm)
    assert [] == events_of(early)


def test_block_until_registers_with_open_and_unknown_ids_and_hears_when_they_close() -> None:
    waiter, targets = Harness(), Harness()
    started(targets, mm_counter, workflow_id="open-one")
    run_id, effects = started(
        waiter, mm_blocker, ["open-one", "later"], "all_complete", workflow_id="w"
    )
    watches = outboxed(effects)
    assert ["open-one", "later"] == [w.workflow_id for w in watches]
    for watch in watches:
        assert only(targets.apply(watch), fx.Reply).value is None  # registered
    assert WATCHERS_KEY + "later" in targets.store.meta

    for n in (1, 2):  # the open one completes after two signals
        closing = targets.apply(
            m.Signal(workflow_id="open-one", name="n", payload=encode(n), request_id=f"c{n}")
        )
    (notice,) = outboxed(closing)
    assert ("w", run_id, "open-one", "completed") == (
        notice.workflow_id,
        notice.watcher_run_id,
        notice.target_workflow_id,
        notice.status,
    )
    assert ["+workflow.blocked_workflow_closed", "Reply"] == kinds(waiter.apply(notice))
    assert ["Reply"] == kinds(waiter.apply(notice))  # a second delivery records nothing

    started(targets, mm_counter, workflow_id="later")  # did not exist when the wait began
    (late,) = outboxed(targets.apply(m.Terminate(workflow_id="later", reason="ops")))
    finished = waiter.apply(late)
    assert {"open-one": "completed", "later": "terminated"} == decode(
        only(finished, fx.Closed).outcome.result
    )
    assert [] == outboxed(finished)  # nothing left to forget


def test_block_until_on_a_closed_id_is_answered_at_once_and_any_complete_forgets_the_rest() -> None:
    waiter, targets = Harness(), Harness()
    started(targets, mm_counter, workflow_id="done")
    targets.apply(m.Terminate(workflow_id="done", reason="ops"))
    _, effects = started(waiter, mm_blocker, ["done", "never"], "any_complete", workflow_id="w")
    done_watch, never_watch = outboxed(effects)
    status = only(targets.apply(done_watch), fx.Reply).value
    assert "terminated" == status
    targets.apply(never_watch)

    finished = waiter.apply(fx.Delivered(1, done_watch, None, status))
    assert {"done": "terminated"} == decode(only(finished, fx.Closed).outcome.result)
    (forget,) = outboxed(finished)
    assert (forget.workflow_id, forget.cancel) == ("never", True)
    targets.apply(forget)
    assert "" == targets.store.meta[WATCHERS_KEY + "never"]
