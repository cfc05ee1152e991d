"""The operator rules of the pure partition machine (``engine/machine_operator.py``): what a
pause holds, what an unpause releases, how a pause is kept across a reload, and where a reset
cuts a history. Inputs and times in, effects out, over the dict-backed store of
``test_machine.py``. Every workflow and activity name starts with ``mo_``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import duraflow as df
from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine.activities import ActivityOutcome
from duraflow.engine.machine import Machine
from duraflow.engine.machine_operator import META_KEY, PauseMark
from duraflow.errors import ResetError
from duraflow.storage.codec import encode
from tests.engine.test_machine import T0, US, Harness, MemoryStore, kinds, only


@df.activity(retry=df.RetryPolicy(maximum_attempts=1))
def mo_step(n: int) -> int:
    return n


@df.workflow
async def mo_child(ctx: df.WorkflowContext) -> None:
    return None


@df.workflow
async def mo_flow(ctx: df.WorkflowContext) -> int:
    await ctx.wait_for_signal("go")
    first = await ctx.activity(mo_step, 1)
    await ctx.sleep("1h")
    await ctx.start_child(mo_child, workflow_id="mo-kid")
    return int(first) + int(await ctx.activity(mo_step, 2))


class Store(MemoryStore):
    """MemoryStore that also keeps activity updates (a reload reads them back)."""

    def write(self, effects: list[Any]) -> list[Any]:
        after = []
        for e in effects:  # in order, as the shell writes them
            if type(e) is fx.UpdateActivity:
                row = self.activity_rows[e.key]
                self.activity_rows[e.key] = msgspec.structs.replace(
                    row, attempt=e.attempt, state=e.state, next_at_us=e.next_at_us
                )
            else:
                after += super().write([e])
        return after


def harness() -> Harness:
    h = Harness()
    h.store = Store()
    return h


def signal(name: str, request_id: str) -> m.Signal:
    return m.Signal(workflow_id="w1", name=name, payload=encode(None), request_id=request_id)


def test_a_pause_is_recorded_and_kept_in_the_meta_row() -> None:
    h = harness()
    run_id = only(h.start(mo_flow), fx.Reply).value.run_id
    effects = h.apply(m.Pause(workflow_id="w1", reason="ops"))
    assert ["+workflow.paused", "SetMeta", "Reply"] == kinds(effects)
    marks = msgspec.json.decode(h.store.meta[META_KEY], type=dict[str, PauseMark])
    assert (run_id, "ops") == (marks["w1"].run_id, marks["w1"].reason)
    assert ["Reply"] == kinds(h.apply(m.Pause(workflow_id="w1")))  # paused already


def test_a_paused_runs_attempt_is_held_as_a_backoff_and_begins_at_unpause() -> None:
    h = harness()
    run_id = only(h.start(mo_flow), fx.Reply).value.run_id
    key = ("w1", run_id, 1)
    h.apply(m.Pause(workflow_id="w1"))
    woken = h.apply(signal("go", "s1"))
    assert "Dispatch" not in kinds(woken)
    assert fx.UpdateActivity(key, 0, "backoff", round(T0 * US)) == only(woken, fx.UpdateActivity)
    assert (0, False) == (h.machine.attempts.get(key).number, h.machine.attempts.get(key).running)

    released = h.apply(m.Unpause(workflow_id="w1"))
    assert fx.Arm(T0, fx.RetryDue(key, 1)) in released
    begun = h.apply(fx.RetryDue(key, 1))
    assert fx.Dispatch(key, 1) == only(begun, fx.Dispatch)


def test_a_reloaded_machine_stays_paused_and_holds_the_attempt_again() -> None:
    h = harness()
    run_id = only(h.start(mo_flow), fx.Reply).value.run_id
    key = ("w1", run_id, 1)
    h.apply(m.Pause(workflow_id="w1"))
    h.apply(signal("go", "s1"))

    fresh = Machine(0)
    armed = fresh.load(h.store)
    assert [] == armed
    assert {"w1"} == set(fresh.paused)
    recovered = fresh.recover(round((T0 + 1) * US), h.store)
    h.store.write(recovered)
    assert fx.Arm(T0, fx.RetryDue(key, 1)) in recovered  # the held backoff, due already
    again = fresh.apply(fx.RetryDue(key, 1), round((T0 + 1) * US), h.store)
    assert "Dispatch" not in kinds(again)  # still paused: held again, no attempt counted
    assert "+workflow.step.retry" not in kinds(again)


def test_a_due_timer_wakes_nothing_until_the_unpause() -> None:
    h = harness()
    run_id = only(h.start(mo_flow), fx.Reply).value.run_id
    h.apply(signal("go", "s1"))
    done = fx.ActivityDone(("w1", run_id, 1), 1, ActivityOutcome(ok=True, result=encode(1)))
    timer = only(h.apply(done), fx.Arm).due
    h.apply(m.Pause(workflow_id="w1"))

    h.now += 7200
    assert not h.machine.live(timer)  # a stepped clock does not wait for it
    assert ["Reply"] == kinds(h.apply(timer))  # held: the timer stays
    assert timer.key in h.store.timers_

    released = h.apply(m.Unpause(workflow_id="w1"))
    assert fx.Arm(h.now, timer) in released
    fired = h.apply(timer)
    assert ["+workflow.timer_fired", "+workflow.child_started"] == [
        k for k in kinds(fired) if k.startswith("+")
    ][:2]


@df.workflow
async def mo_kids(ctx: df.WorkflowContext) -> None:
    await ctx.wait_for_signal("kid")
    await ctx.start_child(mo_child, workflow_id="mo-kid")
    await ctx.wait_for_signal("end")


def test_a_child_start_recorded_while_paused_is_sent_at_the_unpause() -> None:
    h = harness()
    h.start(mo_kids)
    h.apply(m.Pause(workflow_id="w1"))
    woken = h.apply(signal("kid", "s1"))
    assert "+workflow.child_started" in kinds(woken)
    assert "PutOutbox" not in kinds(woken)

    released = h.apply(m.Unpause(workflow_id="w1"))
    sent = only(released, fx.PutOutbox)
    assert ("mo-kid", "mo_child") == (sent.target_id, sent.message.workflow_type)
    assert "PutOutbox" not in kinds(h.apply(m.Unpause(workflow_id="w1")))  # once


def reset_history(*events: Any) -> list[Any]:
    base = {"workflow_id": "w", "run_id": "r", "workflow_type": "t"}
    made = [ev.WorkflowStarted(args=encode([]), **base)]
    made += [cls(**base, **fields) for cls, fields in events]
    for i, e in enumerate(made, start=1):
        e.event_id = i
    return made


@pytest.mark.parametrize(
    ("events", "to", "cut"),
    [
        # the failed step's scheduling is where the copy stops
        (
            [
                (ev.ActivityScheduled, {"seq": 1, "activity": "a", "args": b""}),
                (ev.ActivityCompleted, {"seq": 1, "activity": "a", "result": b""}),
                (ev.ActivityScheduled, {"seq": 2, "activity": "b", "args": b""}),
                (
                    ev.ActivityFailed,
                    {"seq": 2, "activity": "b", "error_type": "E", "error_message": ""},
                ),
                (ev.WorkflowFailed, {"error_type": "E", "error_message": ""}),
            ],
            "last_failure",
            3,
        ),
        # a timer still pending at the failure is not copied either
        (
            [
                (ev.TimerStarted, {"seq": 1, "fire_at_us": 5}),
                (ev.ActivityScheduled, {"seq": 2, "activity": "b", "args": b""}),
                (
                    ev.ActivityFailed,
                    {"seq": 2, "activity": "b", "error_type": "E", "error_message": ""},
                ),
                (ev.WorkflowFailed, {"error_type": "E", "error_message": ""}),
            ],
            "last_failure",
            1,
        ),
        # code that raised by itself: everything before the close replays
        (
            [
                (ev.SignalReceived, {"name": "s", "payload": b""}),
                (ev.WorkflowFailed, {"error_type": "E", "error_message": ""}),
            ],
            "last_failure",
            2,
        ),
        # an event ID: up to and including it, but never into an unfinished step
        (
            [
                (ev.ActivityScheduled, {"seq": 1, "activity": "a", "args": b""}),
                (ev.ActivityCompleted, {"seq": 1, "activity": "a", "result": b""}),
                (ev.WorkflowCompleted, {"result": b""}),
            ],
            2,
            1,
        ),
    ],
)
def test_where_a_reset_cuts_a_history(events: list[Any], to: Any, cut: int) -> None:
    from duraflow.engine.machine_operator import _cut
    from duraflow.storage.rows import WorkflowRow

    history = reset_history(*events)
    status = "failed" if isinstance(history[-1], ev.WorkflowFailed) else "completed"
    row = WorkflowRow("w", "r", "t", "", status, None, None, None, 0, 1, None, None, None)
    assert cut == _cut(history, to, row)
    if status == "completed":
        with pytest.raises(ResetError, match="never failed"):
            _cut(history, "last_failure", row)
