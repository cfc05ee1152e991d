"""The partition machine, pure: inputs and a time in, effects out, over a dict-backed store.

No SQLite, no loop, no executor: each test feeds inputs to ``Machine.apply`` at a time it
chooses and checks the effects, applying the write effects to :class:`MemoryStore` (what
the shell does with SQLite). Every workflow and activity name starts with ``mx_``.
"""

from __future__ import annotations

from typing import Any

import pytest

import duraflow as df
from duraflow.actors import messages as m
from duraflow.actors.partition_writes import WRITERS
from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine.activities import ActivityOutcome
from duraflow.engine.definitions import workflow_definition
from duraflow.engine.machine import COMMANDS, RULES, Machine
from duraflow.errors import WorkflowNotFound
from duraflow.storage.codec import decode, encode
from duraflow.storage.rows import ActivityRow, TimerRow, WorkflowRow

T0 = 1_800_000_000.0  # the machine's clock is whatever the caller says it is
US = 1_000_000


@df.activity(retry=df.RetryPolicy(initial_interval="2s", maximum_attempts=3))
def mx_charge(amount: int) -> int:
    return amount


@df.activity(heartbeat_timeout="5s", retry=df.RetryPolicy(maximum_attempts=1))
def mx_beating() -> None:
    return None


@df.workflow
async def mx_order(ctx: df.WorkflowContext, amount: int) -> int:
    return await ctx.activity(mx_charge, amount)


@df.workflow
async def mx_beat(ctx: df.WorkflowContext) -> None:
    await ctx.activity(mx_beating)


@df.workflow
async def mx_wait(ctx: df.WorkflowContext) -> str:
    await ctx.sleep("1h")
    return str(await ctx.wait_for_signal("go"))


class MemoryStore:
    """The machine's Reader over dicts, and the write effects applied to them."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], WorkflowRow] = {}
        self.events: list[Any] = []
        self.activity_rows: dict[tuple[str, str, int], ActivityRow] = {}
        self.timers_: dict[tuple[str, str, int], TimerRow] = {}
        self.signals: set[str] = set()
        self.meta: dict[str, str] = {}
        self.outbox_rows: dict[int, tuple[str, bytes]] = {}

    def write(self, effects: list[Any]) -> list[Any]:
        """Apply the writes; the rest (what the shell does after the commit)."""
        after = []
        for e in effects:
            kind = type(e)
            if kind is fx.InsertWorkflow:
                self.runs[(e.row.workflow_id, e.row.run_id)] = e.row
            elif kind is fx.CloseWorkflow:
                row = self.runs[(e.workflow_id, e.run_id)]
                self.runs[(e.workflow_id, e.run_id)] = type(row)(
                    **{
                        **{f: getattr(row, f) for f in row.__struct_fields__},
                        "status": e.status,
                        "closed_at_us": e.at_us,
                        "result": e.result,
                        "error_type": e.error_type,
                        "error_message": e.error_message,
                    }
                )
            elif kind is fx.AppendEvents:
                self.events.extend(e.events)
            elif kind is fx.PutActivity:
                self.activity_rows[(e.row.workflow_id, e.row.run_id, e.row.seq)] = e.row
            elif kind is fx.DropActivity:
                self.activity_rows.pop(e.key, None)
            elif kind is fx.PutTimer:
                self.timers_[(e.row.workflow_id, e.row.run_id, e.row.seq)] = e.row
            elif kind is fx.DropTimer:
                self.timers_.pop(e.key, None)
            elif kind is fx.MarkSignal:
                self.signals.add(e.request_id)
            elif kind is fx.SetMeta:
                self.meta[e.key] = e.value
            elif kind in fx.WRITES:
                pass  # rows these tests do not read back
            else:
                after.append(e)
        return after

    # -- Reader -----------------------------------------------------------------------------

    def get_run(self, workflow_id: str, run_id: str) -> WorkflowRow | None:
        return self.runs.get((workflow_id, run_id))

    def latest_run(self, workflow_id: str) -> WorkflowRow | None:
        rows = [r for (w, _), r in self.runs.items() if w == workflow_id]
        return max(rows, key=lambda r: r.started_at_us, default=None)

    def open_runs(self) -> list[WorkflowRow]:
        return [r for r in self.runs.values() if r.status == "running"]

    def list_workflows(self, status: Any, workflow_type: Any, limit: int) -> list[Any]:
        return []

    def history(self, workflow_id: str, run_id: str) -> list[Any]:
        return [e for e in self.events if (e.workflow_id, e.run_id) == (workflow_id, run_id)]

    def last_event_id(self, workflow_id: str, run_id: str) -> int:
        return len(self.history(workflow_id, run_id))

    def max_lsn(self) -> int:
        return max((e.lsn for e in self.events), default=0)

    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def signal_seen(self, request_id: str) -> bool:
        return request_id in self.signals

    def timers(self) -> list[TimerRow]:
        return list(self.timers_.values())

    def activities(self) -> list[ActivityRow]:
        return list(self.activity_rows.values())

    def outbox(self) -> list[tuple[int, str, bytes]]:
        return [(i, t, d) for i, (t, d) in self.outbox_rows.items()]

    def prunable_runs(self, cutoff_us: int, archived_lsn: int, limit: int) -> list[Any]:
        return []

    def failed(self, exc: BaseException) -> bool:
        return False


class Harness:
    """A machine, its store, and the clock the test moves."""

    def __init__(self) -> None:
        self.machine = Machine(0)
        self.store = MemoryStore()
        self.now = T0

    def apply(self, item: Any) -> list[Any]:
        effects = self.machine.apply(item, round(self.now * US), self.store)
        self.store.write(effects)
        return effects

    def start(self, fn: Any, *args: Any, workflow_id: str = "w1") -> list[Any]:
        definition = workflow_definition(fn)
        return self.apply(
            m.Start(
                workflow_id=workflow_id,
                workflow_type=definition.name,
                code_ref=definition.code_ref,
                args=encode(list(args)),
            )
        )


def kinds(effects: list[Any]) -> list[str]:
    """Effect class names, and for appended events their types."""
    out = []
    for e in effects:
        if isinstance(e, fx.AppendEvents):
            out.extend(f"+{ev.event_type(event)}" for event in e.events)
        else:
            out.append(type(e).__name__)
    return out


def only(effects: list[Any], kind: type) -> Any:
    found = [e for e in effects if type(e) is kind]
    assert len(found) == 1, kinds(effects)
    return found[0]


# -- the rules, input by input ----------------------------------------------------------------


def test_a_start_records_the_run_then_dispatches_its_first_activity_after_the_commit() -> None:
    h = Harness()
    effects = h.start(mx_order, 7)
    assert [
        "InsertWorkflow",
        "+workflow.started",
        "+workflow.activity_scheduled",
        "PutActivity",
        "Dispatch",
        "Reply",
    ] == kinds(effects)
    assert fx.Dispatch(("w1", only(effects, fx.Reply).value.run_id, 1), 1) == only(
        effects, fx.Dispatch
    )


def test_an_activity_outcome_wakes_the_run_which_closes_and_answers_its_waiters() -> None:
    h = Harness()
    run_id = only(h.start(mx_order, 7), fx.Reply).value.run_id
    done = h.apply(
        fx.ActivityDone(("w1", run_id, 1), 1, ActivityOutcome(ok=True, result=encode(7)))
    )
    assert [
        "DropActivity",
        "+workflow.activity_completed",
        "+workflow.completed",
        "CloseWorkflow",
        "Closed",
        "Reply",
    ] == kinds(done)
    assert ("completed", 7) == (
        only(done, fx.Closed).outcome.status,
        decode(only(done, fx.Closed).outcome.result),
    )
    assert "w1" not in h.machine.open


def test_a_failed_attempt_waits_its_backoff_from_now_then_runs_again() -> None:
    h = Harness()
    run_id = only(h.start(mx_order, 7), fx.Reply).value.run_id
    key = ("w1", run_id, 1)
    h.now += 10
    failed = h.apply(fx.ActivityDone(key, 1, ActivityOutcome(ok=False, error_type="IOError")))
    assert fx.Arm(T0 + 12, fx.RetryDue(key, 2)) == only(failed, fx.Arm)
    assert fx.UpdateActivity(key, 1, "backoff", round((T0 + 12) * US)) == only(
        failed, fx.UpdateActivity
    )
    retry = only(failed, fx.AppendEvents).events[0]
    assert (2000, 3) == (retry.delay_ms, retry.max_attempts)
    assert [] == [e for e in failed if type(e) is fx.StopAttempt]  # it ended by itself

    h.now += 2
    again = h.apply(fx.RetryDue(key, 2))
    assert ["UpdateActivity", "Dispatch", "Reply"] == kinds(again)
    assert not h.machine.live(fx.RetryDue(key, 2))  # it did its work: a stepped clock skips it


def test_the_last_allowed_attempt_failing_fails_the_activity_and_the_run() -> None:
    h = Harness()
    run_id = only(h.start(mx_order, 7), fx.Reply).value.run_id
    key = ("w1", run_id, 1)
    for number in (1, 2):
        h.apply(fx.ActivityDone(key, number, ActivityOutcome(ok=False, error_type="IOError")))
        h.now += 60
        h.apply(fx.RetryDue(key, number + 1))
    last = h.apply(fx.ActivityDone(key, 3, ActivityOutcome(ok=False, error_type="IOError")))
    assert "+workflow.activity_failed" in kinds(last)
    assert "failed" == only(last, fx.Closed).outcome.status


def test_a_heartbeat_timeout_is_decided_by_the_time_given() -> None:
    h = Harness()
    run_id = only(h.start(mx_beat), fx.Reply).value.run_id
    key = ("w1", run_id, 1)
    h.now += 3
    assert ["Reply"] == kinds(h.apply(fx.Heartbeat(key, 1, None)))
    h.now += 2  # 5 s after dispatch, but only 2 s after the heartbeat: not yet
    early = h.apply(fx.HeartbeatCheck(key, 1))
    assert fx.Arm(T0 + 8, fx.HeartbeatCheck(key, 1)) == only(early, fx.Arm)
    h.now += 3
    late = h.apply(fx.HeartbeatCheck(key, 1))
    activity_failed = next(event for e in late if type(e) is fx.AppendEvents for event in e.events)
    assert "TimeoutError" == activity_failed.error_type
    assert ("failed", "ActivityError") == (
        only(late, fx.Closed).outcome.status,
        only(late, fx.Closed).outcome.error_type,
    )


def test_a_retried_signal_is_recorded_once() -> None:
    h = Harness()
    h.start(mx_wait)
    signal = m.Signal(workflow_id="w1", name="go", payload=encode("x"), request_id="r1")
    assert ["+workflow.signal_received", "MarkSignal", "Reply"] == kinds(h.apply(signal))
    assert ["Reply"] == kinds(h.apply(signal))


def test_a_signal_to_no_workflow_is_refused_and_writes_nothing() -> None:
    h = Harness()
    effects = h.apply(m.Signal(workflow_id="nobody", name="go", payload=encode(1), request_id="r"))
    assert ["Reply"] == kinds(effects)
    assert isinstance(effects[0].error, WorkflowNotFound)


def test_a_timer_fires_when_its_due_time_is_fed_and_only_then() -> None:
    h = Harness()
    started = h.start(mx_wait)
    arm = only(started, fx.Arm)
    assert T0 + 3600 == arm.at
    assert h.machine.live(arm.due)
    h.now = arm.at
    fired = h.apply(arm.due)
    assert ["DropTimer", "+workflow.timer_fired", "Reply"] == kinds(fired)
    assert not h.machine.live(arm.due)
    assert ["Reply"] == kinds(h.apply(arm.due))  # a second delivery does nothing


def test_a_restarted_machine_reloads_timers_and_retries_in_flight_attempts() -> None:
    h = Harness()
    run_id = only(h.start(mx_order, 7), fx.Reply).value.run_id
    fresh = Machine(0)
    assert [] == fresh.load(h.store)  # no timers
    recovered = fresh.recover(round((T0 + 1) * US), h.store)
    assert ["UpdateActivity", "+workflow.step.retry", "UpdateActivity", "Dispatch"] == [
        k for k in kinds(recovered) if k != "Arm"
    ]
    assert fx.Dispatch(("w1", run_id, 1), 2) == only(recovered, fx.Dispatch)


# -- the tables -------------------------------------------------------------------------------


def test_every_write_effect_has_a_writer_in_the_shell() -> None:
    assert set(fx.WRITES) == set(WRITERS)


def test_every_due_time_and_command_has_a_rule() -> None:
    dues = set(fx.Due.__args__)  # type: ignore[attr-defined]  # reason: a Union's members
    assert set() == dues - set(RULES)
    assert set() == set(ev.COMMANDS) - set(COMMANDS)


@pytest.mark.parametrize("request_type", m.Message.__subclasses__(), ids=lambda t: t.__name__)
def test_every_request_the_shell_does_not_answer_itself_has_a_rule(request_type: type) -> None:
    if request_type in (m.ReadEvents, m.CollectResults):
        pytest.skip("answered by the shell without a turn (committed rows, mailboxes)")
    assert request_type in RULES
