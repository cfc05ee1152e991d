"""The partition machine's update rules, pure: an update's acceptance, outcome and waiters,
exactly once per request ID, and signal/update-with-start (over the dict-backed store of
test_machine). Every workflow and activity name starts with ``mu_``."""

from __future__ import annotations

from typing import Any

import duraflow as df
from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine.activities import ActivityOutcome
from duraflow.engine.definitions import workflow_definition
from duraflow.storage.codec import decode, encode
from tests.engine.test_machine import Harness, kinds, only


@df.activity
def mu_price(sku: str) -> int:
    return len(sku)


@df.workflow
async def mu_cart(ctx: df.WorkflowContext) -> list[Any]:
    items: list[Any] = []

    def add(item: str) -> int:
        items.append(item)
        return len(items)

    def no_empty(item: str) -> None:
        if not item:
            raise ValueError("an item needs a name")

    async def add_priced(sku: str) -> int:
        price = await ctx.activity(mu_price, sku)
        items.append((sku, price))
        return int(price)

    ctx.set_update_handler("add", add, validator=no_empty)
    ctx.set_update_handler("add_priced", add_priced)
    await ctx.wait_for_signal("checkout")
    return items


def update(name: str, *args: Any, request_id: str = "r1", workflow_id: str = "w1") -> m.Update:
    return m.Update(
        workflow_id=workflow_id, name=name, args=encode(list(args)), request_id=request_id
    )


def start_message(workflow_id: str = "w1", run_id: str = "run-a") -> m.Start:
    definition = workflow_definition(mu_cart)
    return m.Start(
        workflow_id=workflow_id,
        workflow_type=definition.name,
        code_ref=definition.code_ref,
        args=encode([]),
        run_id=run_id,
    )


def reply(effects: list[Any]) -> Any:
    return only(effects, fx.Reply)


def events_of(h: Harness, kind: type) -> list[Any]:
    return [e for e in h.store.events if isinstance(e, kind)]


def test_a_sync_handler_is_accepted_run_and_answered_in_the_same_turn() -> None:
    h = Harness()
    h.start(mu_cart)
    effects = h.apply(update("add", "apple"))
    assert [
        "+workflow.update_accepted",
        "+workflow.update_completed",
        "Closed",
        "Reply",
    ] == kinds(effects)
    outcome = reply(effects).value
    assert ("completed", 1, m.update_key("r1")) == (
        outcome.status,
        decode(outcome.result),
        outcome.run_id,
    )
    accepted, done = [e.events[0] for e in effects if type(e) is fx.AppendEvents]
    assert accepted.event_id == done.accepted_event_id


def test_a_refused_update_records_nothing_and_says_why() -> None:
    h = Harness()
    h.start(mu_cart)
    before = list(h.store.events)
    refused = reply(h.apply(update("add", "")))
    unknown = reply(h.apply(update("remove", "x", request_id="r2")))
    assert isinstance(refused.error, df.UpdateRejected)
    assert "an item needs a name" == str(refused.error)
    assert isinstance(unknown.error, df.UpdateRejected)
    assert "no update handler 'remove'" in str(unknown.error)
    assert before == h.store.events


def test_an_async_handler_answers_its_waiter_when_its_activity_completes() -> None:
    h = Harness()
    run_id = reply(h.start(mu_cart)).value.run_id
    first = h.apply(update("add_priced", "pear"))
    assert "accepted" == reply(first).value.status
    key = ("w1", run_id, only(first, fx.Dispatch).key[2])

    waiting = h.apply(m.AwaitResult(workflow_id="w1", run_id=m.update_key("r1"), mailbox="mb"))
    assert fx.AwaitClose("w1", m.update_key("r1"), m.update_key("r1"), "mb") == only(
        waiting, fx.AwaitClose
    )
    done = h.apply(fx.ActivityDone(key, 1, ActivityOutcome(ok=True, result=encode(4))))
    closed = only(done, fx.Closed).outcome
    assert ("completed", 4) == (closed.status, decode(closed.result))
    assert m.update_key("r1") == closed.run_id


def test_a_retried_request_id_gets_the_recorded_outcome_and_runs_nothing_again() -> None:
    h = Harness()
    h.start(mu_cart)
    first = reply(h.apply(update("add", "apple"))).value
    again = h.apply(update("add", "apple"))
    assert ["Reply"] == kinds(again)
    assert first == reply(again).value
    h.machine.hibernate("w1")  # rebuilt from history: the handler's state is replayed once
    assert first == reply(h.apply(update("add", "apple"))).value
    assert 1 == len(events_of(h, ev.UpdateAccepted))
    second = reply(h.apply(update("add", "pear", request_id="r2"))).value
    assert 2 == decode(second.result)  # the replayed run holds exactly one apple


def test_a_run_closing_first_answers_its_waiting_updates_with_closed() -> None:
    h = Harness()
    h.start(mu_cart)
    h.apply(update("add_priced", "pear"))
    closing = h.apply(
        m.Signal(workflow_id="w1", name="checkout", payload=encode(None), request_id="s")
    )
    outcomes = [e.outcome for e in closing if type(e) is fx.Closed]
    update_outcome = next(o for o in outcomes if o.run_id == m.update_key("r1"))
    assert ("closed", "WorkflowClosed") == (update_outcome.status, update_outcome.error_type)
    assert "completed before the handler of update 'add_priced'" in update_outcome.error_message
    late = reply(h.apply(update("add_priced", "pear")))
    assert isinstance(late.error, df.WorkflowClosed)
    assert "before the handler of update 'add_priced'" in str(late.error)
    awaited = reply(h.apply(m.AwaitResult(workflow_id="w1", run_id=m.update_key("r1"))))
    assert "closed" == awaited.value.status


def test_a_terminated_hibernated_run_answers_its_waiting_updates_too() -> None:
    h = Harness()
    h.start(mu_cart)
    h.apply(update("add_priced", "pear"))
    h.machine.hibernate("w1")
    done = h.apply(m.Terminate(workflow_id="w1", reason="ops"))
    closed = [e.outcome for e in done if type(e) is fx.Closed]
    assert {"terminated", "closed"} == {o.status for o in closed}


def test_signal_with_start_starts_one_run_however_many_requests_come() -> None:
    h = Harness()
    replies = []
    for n in range(5):
        request = m.SignalWithStart(
            workflow_id="w1",
            start=start_message(run_id=f"run-{n}"),
            name="note",
            payload=encode(n),
            request_id=f"s{n}",
        )
        replies.append(reply(h.apply(request)).value)
    assert [True, False, False, False, False] == [r.started for r in replies]
    assert {"run-0"} == {r.run_id for r in replies}
    assert 1 == len(h.store.runs)
    assert [0, 1, 2, 3, 4] == [decode(e.payload) for e in events_of(h, ev.SignalReceived)]


def test_update_with_start_starts_once_and_a_retry_after_close_gets_its_result() -> None:
    h = Harness()

    def with_start(item: str, request_id: str, run_id: str) -> Any:
        request = m.UpdateWithStart(
            workflow_id="w1",
            start=start_message(run_id=run_id),
            name="add",
            args=encode([item]),
            request_id=request_id,
        )
        return reply(h.apply(request)).value

    assert 1 == decode(with_start("apple", "u1", "run-a").result)
    assert 2 == decode(with_start("pear", "u2", "run-b").result)
    assert 1 == len(h.store.runs)
    h.apply(m.Signal(workflow_id="w1", name="checkout", payload=encode(None), request_id="s"))
    assert 2 == decode(with_start("pear", "u2", "run-c").result)  # recorded, not run again
    assert 1 == len(h.store.runs)
    assert 1 == decode(with_start("plum", "u3", "run-d").result)  # a new run, a new cart
    assert 2 == len(h.store.runs)
