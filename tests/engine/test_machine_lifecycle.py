"""The lifecycle rules of the pure partition machine (``engine/machine_lifecycle.py``):
continue-as-new closes a run and starts the next in one turn, whose code first runs in a turn
of its own (a durable due time that a restarted machine reloads); a deadline the run does
not hold does nothing. Over the dict-backed store of ``test_machine.py``."""

from __future__ import annotations

from typing import Any

import duraflow as df
from duraflow.engine import effects as fx
from duraflow.engine.machine import Machine
from duraflow.engine.machine_state import FIRST_ACTIVATION_SEQ, RUN_TIMEOUT_SEQ
from tests.engine.test_machine import T0, US, Harness, kinds, only


@df.workflow
async def mx_hop(ctx: df.WorkflowContext, n: int) -> int:
    if n < 1:
        await ctx.continue_as_new(n + 1)
    await ctx.sleep("1h")
    return n


def _arms(effects: list[Any], seq: int) -> list[fx.Arm]:
    return [e for e in effects if type(e) is fx.Arm and e.due.key[2] == seq]


def test_continue_as_new_closes_and_starts_the_next_run_in_one_turn() -> None:
    h = Harness()
    effects = h.start(mx_hop, 0)
    first = only(effects, fx.Reply).value.run_id
    closed = only(effects, fx.CloseWorkflow)
    assert ("continued_as_new", first) == (closed.status, closed.run_id)
    inserted = [e.row for e in effects if type(e) is fx.InsertWorkflow]
    assert [first, closed.next_run_id] == [r.run_id for r in inserted]
    second = inserted[1]
    assert (first, first) == (second.continued_from, second.first_run_id)
    # the next run's code has not run yet: its first activation is a due time of its own
    assert "+workflow.timer_started" not in kinds(effects)
    [arm] = _arms(effects, FIRST_ACTIVATION_SEQ)
    assert round(T0 * US) / US == arm.at
    ran = h.apply(arm.due)
    assert ["DropTimer", "+workflow.timer_started", "PutTimer", "Arm", "Reply"] == kinds(ran)
    assert ["Reply"] == kinds(h.apply(arm.due))  # a second delivery does nothing


def test_a_restarted_machine_runs_a_pending_first_activation_once() -> None:
    h = Harness()
    effects = h.start(mx_hop, 0)
    closed = only(effects, fx.CloseWorkflow)
    fresh = Machine(0)
    [arm] = _arms(fresh.load(h.store), FIRST_ACTIVATION_SEQ)
    assert ("w1", closed.next_run_id) == arm.due.key[:2]
    h.store.write(fresh.recover(round((T0 + 1) * US), h.store))
    h.machine = fresh
    assert "+workflow.timer_started" in kinds(h.apply(arm.due))
    assert ["Reply"] == kinds(h.apply(arm.due))


def test_a_deadline_the_run_does_not_hold_does_nothing() -> None:
    h = Harness()
    effects = h.start(mx_hop, 1)
    run_id = only(effects, fx.Reply).value.run_id
    due = fx.TimerDue(("w1", run_id, RUN_TIMEOUT_SEQ))  # no run_timeout was asked for
    assert not h.machine.live(due)
    assert ["Reply"] == kinds(h.apply(due))
