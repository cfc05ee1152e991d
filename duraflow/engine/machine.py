"""The partition's rules as a pure machine: ``apply(input, now_us, reader) -> effects``.

An input is a request (``actors.messages``: start, signal, query, cancel, terminate, ...),
an executor's report (``ActivityDone``, ``Heartbeat``), a due time the machine armed (a
``Due``), or an outbox delivery's outcome (``Delivered``). The rule for each is found in
:data:`RULES`, a table keyed by the input's type; the commands a workflow's code issues are
done by the rules in :data:`COMMANDS`. The machine keeps the partition's runs in memory,
reads its file only through ``reader`` and writes nothing: the effects it returns
(:mod:`duraflow.engine.effects`) are applied by the shell (``actors/partition.py``).

To learn what a signal does to a run, read ``signal`` in
:mod:`duraflow.engine.machine_requests`; the activity rules are in
:mod:`duraflow.engine.machine_activities`; signals, queries and cancels between workflows
and ``block_until`` in :mod:`duraflow.engine.machine_messages`; updates (and
signal/update-with-start) in :mod:`duraflow.engine.machine_updates`; pause, unpause and
reset (and what a pause holds back) in :mod:`duraflow.engine.machine_operator`.
"""

from __future__ import annotations

from typing import Any

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine import machine_activities as activities
from duraflow.engine import machine_messages as messages
from duraflow.engine import machine_operator as operator
from duraflow.engine import machine_requests as requests
from duraflow.engine import machine_updates as updates
from duraflow.engine.attempts import AttemptTable
from duraflow.engine.machine_state import OpenRun, Reader, Rule, RunBroke, State
from duraflow.errors import DuraflowError, PartitionUnavailable

DELIVERED: dict[type, Rule] = {
    m.ExternalRequest: messages.request_delivered,
    m.Watch: messages.watch_delivered,
}
"""What an outbox message's delivery (answered or refused) does, by message type; the rest,
and every delivery that may succeed later, go to ``requests.delivered``."""


def _delivered(st: State, item: fx.Delivered) -> Any:
    rule = DELIVERED.get(type(item.message))
    if rule is None or isinstance(item.error, PartitionUnavailable):
        return requests.delivered(st, item)
    return rule(st, item)


RULES: dict[type, Rule] = {
    m.Start: requests.start,
    m.Signal: requests.signal,
    m.Query: requests.query,
    m.Cancel: requests.cancel,
    m.Terminate: requests.terminate,
    m.AwaitResult: updates.awaiting(requests.await_result),
    m.Describe: operator.describing(requests.describe),
    m.History: requests.history,
    m.ListWorkflows: operator.listing(requests.list_runs),
    m.Archived: requests.archived,
    m.ChildClosed: requests.child_closed,
    fx.Delivered: _delivered,
    fx.ActivityDone: activities.done,
    fx.Heartbeat: activities.heartbeat,
    fx.TimerDue: operator.holding_timers(requests.timer_due),
    fx.RetryDue: activities.retry_due,
    fx.AttemptTimeout: activities.attempt_timeout,
    fx.HeartbeatCheck: activities.heartbeat_check,
    fx.ScheduleTimeout: activities.schedule_timeout,
    fx.OutboxRetry: requests.resend,
    fx.PruneDue: requests.prune,
    m.ExternalRequest: messages.receive,
    m.Watch: messages.watch,
    m.WatchedClosed: messages.watched_closed,
    m.Update: updates.update,
    m.SignalWithStart: updates.signal_with_start,
    m.UpdateWithStart: updates.update_with_start,
    m.Pause: operator.pause,
    m.Unpause: operator.unpause,
    m.Reset: operator.reset,
}
"""The rule for each input type."""

COMMANDS: dict[type, Rule] = {
    ev.ActivityScheduled: activities.schedule,
    ev.ActivityCancelled: activities.cancel,
    ev.TimerStarted: requests.start_timer,
    ev.TimerCancelled: requests.cancel_timer,
    ev.ExternalSignalRequested: messages.send_request,
    ev.ExternalQueryRequested: messages.send_request,
    ev.ExternalCancelRequested: messages.send_request,
    ev.BlockUntilStarted: messages.watch_targets,
    ev.BlockUntilEnded: messages.unwatch_targets,
    ev.ChildStarted: operator.holding_child_starts(requests.start_child),
    ev.PatchMarker: operator.patch_marked,
    **dict.fromkeys(ev.CLOSING, requests.close),
    ev.UpdateCompleted: updates.finished,
    ev.UpdateFailed: updates.finished,
}
"""What each command a workflow's code issued does (called with ``(open_run, command)``)."""

LIVE: dict[type, Any] = {
    fx.TimerDue: operator.live_unless_paused(requests.timer_live),
    fx.RetryDue: activities.live,
    fx.AttemptTimeout: activities.live,
    fx.HeartbeatCheck: activities.live,
    fx.ScheduleTimeout: activities.live,
}
"""Whether a due time would still do something (the rest always may)."""

ON_CLOSE = (messages.notify_watchers, updates.run_closed)
"""What else happens as a run closes: ``block_until`` calls waiting on its ID are told, its
waiting updates are answered."""

DEFERRED = requests.DEFERRED


class Machine(State):
    """One partition's runs and rules (see the module docstring); the shell owns one."""

    commands = COMMANDS
    rules = RULES
    on_close = ON_CLOSE

    def apply(self, item: Any, now_us: int, reader: Reader) -> list[Any]:
        """The effects of applying ``item`` at ``now_us``: write effects first in the order
        made, a ``Reply`` last for a request (``AwaitClose`` instead when it waits).

        Raises:
            TypeError: no rule for the input's type.
            RunBroke: recording a run's work failed outside its code (the shell rolls the
                turn back and applies its inputs one at a time).
        """
        effects = self.begin(now_us, reader)
        rule = RULES.get(type(item))
        if rule is None:
            raise TypeError(f"partition {self.index}: unknown input {type(item).__name__}")
        try:
            reply = rule(self, item)
        except DuraflowError as exc:
            effects.append(fx.Reply(error=exc))
            return effects
        finally:
            if self.paused:
                operator.hold(self, effects)
        if reply is not DEFERRED:
            effects.append(fx.Reply(reply))
        return effects

    def load(self, reader: Reader) -> list[Any]:
        """Read the open runs and their timers (at open, or after a rolled-back turn); the
        first turn after a load recovers (:meth:`recover`). Returns the timers' ``Arm``s."""
        effects = self.begin(self.now_us, reader)
        self.archived_lsn = int(reader.get_meta("archived_lsn") or 0)
        self.pruned = reader.get_meta("pruned") == "1"
        # Pruned runs take their rows with them; LSNs must still never go back.
        self.lsn = max(reader.max_lsn(), self.archived_lsn)
        self.open = {row.workflow_id: OpenRun(row, None) for row in reader.open_runs()}
        operator.load(self, reader)
        for timer in reader.timers():
            open_run = self.open.get(timer.workflow_id)
            if open_run is not None and open_run.row.run_id == timer.run_id:
                open_run.timer_seqs.add(timer.seq)
                key = (timer.workflow_id, timer.run_id, timer.seq)
                self.arm(timer.fire_at_us / 1e6, fx.TimerDue(key))
        self.recovering = True
        return effects

    def recover(self, now_us: int, reader: Reader) -> list[Any]:
        """The first turn after a load: resend undelivered outbox messages, re-arm backoffs,
        run again the attempts that were in flight, and try stuck runs' code again."""
        effects = self.begin(now_us, reader)
        self.recovering = False
        for row_id, target, data in reader.outbox():
            effects.append(fx.Send(row_id, target, m.decode_outbox(data)))
        activities.recover(self)
        for open_run in list(self.open.values()):
            if open_run.row.stuck is not None and self.resident_run(open_run) is not None:
                # The code is back (or fixed): clear the mark; the rebuild above already
                # issued what the recorded events ask for.
                effects.append(fx.SetStuck(open_run.row.workflow_id, open_run.row.run_id, None))
        if self.paused:
            operator.hold(self, effects)
        return effects

    def rewind(self, now_us: int, reader: Reader) -> list[Any]:
        """After a rolled-back transaction: make memory match the file again (``Arm``s for
        the timers, deadlines and backoffs it holds).

        Resident runs are dropped (rebuilt by replay when next needed); open runs, timers
        and activities are read again. Stuck marks and the attempts still running are kept
        (their outcomes are awaited, not run again).
        """
        before = dict(self.open)
        for workflow_id, open_run in self.closed_this_turn.items():
            before.setdefault(workflow_id, open_run)  # open again in the file
        for open_run in before.values():
            if open_run.run is not None:
                open_run.run.discard()
                open_run.run = None
        self.resident.clear()
        recovering = self.recovering
        attempts, self.attempts = self.attempts, AttemptTable()
        self.now_us = now_us
        effects = self.load(reader)
        self.recovering = recovering
        for workflow_id, open_run in self.open.items():
            old = before.get(workflow_id)
            if old is not None and old.row.run_id == open_run.row.run_id:
                open_run.stuck = old.stuck
        if not recovering:  # else nothing was dispatched yet: the recovery restores them all
            activities.readopt(self, attempts)
        return effects

    def blame(self, effects: list[Any], index: int, exc: Exception) -> Exception:
        """The error to raise when writing ``effects[index]`` (of the last apply) raised
        ``exc``: a RunBroke naming the run it recorded (so that run alone is marked stuck,
        or the request that woke it refused), else ``exc`` itself."""
        key = _run_of(effects[index])
        if key is None:
            return exc
        rebuilding = any(first <= index < end for first, end in self.rebuilds)
        return RunBroke(key, exc, rebuilding=rebuilding)

    def live(self, due: Any) -> bool:
        """Whether ``due`` would still do something (a stepped clock skips those that
        would not)."""
        check = LIVE.get(type(due))
        return True if check is None else check(self, due)

    def stick(self, workflow_id: str, run_id: str, why: str) -> bool:
        """Mark an open run stuck (the shell records it); False if it is gone or was stuck
        already."""
        open_run = self.open.get(workflow_id)
        if open_run is None or open_run.row.run_id != run_id or open_run.stuck is not None:
            return False
        open_run.stuck = why
        return True

    # -- residency (the shell decides when) ---------------------------------------------------

    def evict_over(self, cap: int) -> None:
        """Drop least recently used runs from memory while more than ``cap`` are resident."""
        resident = self.resident
        while len(resident) > cap:
            self.hibernate(next(iter(resident)))

    def hibernate_idle(self, horizon: float) -> None:
        """Drop from memory the runs not used since ``horizon`` (epoch seconds)."""
        resident = self.resident
        while resident:
            workflow_id, touched = next(iter(resident.items()))
            if touched > horizon:
                break
            self.hibernate(workflow_id)

    def stats(self) -> dict[str, int]:
        return {
            "open": len(self.open),
            "resident": sum(1 for o in self.open.values() if o.run is not None),
            "lsn": self.lsn,
        }


def _run_of(effect: Any) -> tuple[str, str] | None:
    """The (workflow ID, run ID) a write effect records something of, if one."""
    if isinstance(effect, fx.AppendEvents):
        first = effect.events[0]
        return (first.workflow_id, first.run_id)
    row = getattr(effect, "row", None)
    if row is not None:
        return (row.workflow_id, row.run_id)
    key = getattr(effect, "key", None)
    if isinstance(key, tuple):
        return (key[0], key[1])
    run_id = getattr(effect, "run_id", None)
    return None if run_id is None else (effect.workflow_id, run_id)
