"""The activity half of a Partition: attempts, retries with backoff, timeouts, heartbeats.

Mixed into :class:`duraflow.actors.partition.Partition` (it uses the partition's turn, history
and timer heap); kept apart so each file has one job. Everything here runs inside a turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from duraflow.cdc import events as ev
from duraflow.engine.activities import ActivityOutcome
from duraflow.engine.definitions import delay_s

if TYPE_CHECKING:
    from duraflow.actors.attempts import Attempt, AttemptTable
    from duraflow.actors.partition import OpenRun, _Effects
    from duraflow.storage.sqlite_store import PartitionStore, WorkflowRow


class ActivityDone(msgspec.Struct):
    """An executor's report: attempt ``number`` of activity ``key`` ended with ``outcome``."""

    key: tuple[str, str, int]
    number: int
    outcome: ActivityOutcome


class Heartbeat(msgspec.Struct):
    """A heartbeat of attempt ``number`` of activity ``key``."""

    key: tuple[str, str, int]
    number: int
    details: bytes | None


class ActivitySteps:
    """Activity scheduling for the partition (a mixin: state lives on the Partition)."""

    _attempts: AttemptTable
    _open: dict[str, OpenRun]
    _fx: _Effects
    _executor: Any

    if TYPE_CHECKING:

        def _db(self) -> PartitionStore: ...
        def _clock(self) -> float: ...
        def _now_us(self) -> int: ...
        def _push(self, due: float, kind: str, key: Any) -> None: ...
        def _append(self, open_run: OpenRun, events: list[ev.Event]) -> None: ...
        def _resolve(self, open_run: OpenRun, event: ev.Event) -> None: ...
        def _base(self, row: WorkflowRow, at_us: int) -> dict[str, Any]: ...
        def _post(self, item: Any, future: Any) -> None: ...
        def post_threadsafe(self, item: Any) -> None: ...

    def _begin_attempt(self, attempt: Attempt, number: int) -> None:
        """Mark attempt ``number`` running; it is dispatched after this turn commits."""
        now = self._clock()
        attempt.begin(number, now)
        options = attempt.options
        key = attempt.key
        if options.start_to_close_timeout is not None:
            self._push(now + options.start_to_close_timeout, "attempt_timeout", (key, number))
        if options.heartbeat_timeout is not None:
            self._push(now + options.heartbeat_timeout, "heartbeat_check", (key, number))
        if number == 1 and options.schedule_to_close_timeout is not None:
            deadline = attempt.scheduled_at_us / 1e6 + options.schedule_to_close_timeout
            self._push(deadline, "schedule_timeout", (key, 0))
        self._fx.dispatch.append(attempt)

    def _start_attempt(self, attempt: Attempt) -> None:
        if self._attempts.get(attempt.key) is not attempt or not attempt.running:
            return  # resolved or cancelled in the same turn
        number = attempt.number
        task = attempt.task(
            lambda details: self.post_threadsafe(Heartbeat(attempt.key, number, details))
        )
        self._executor.start(
            task, lambda outcome: self.post_threadsafe(ActivityDone(attempt.key, number, outcome))
        )
        if task.reports_start:
            attempt.started_at = None  # its timeouts are armed again by its first heartbeat

    def _activity_done(self, done: ActivityDone) -> None:
        attempt = self._attempts.get(done.key)
        if attempt is None or attempt.number != done.number or not attempt.running:
            return  # a late outcome of an attempt that timed out or was cancelled
        outcome = done.outcome
        if outcome.ok:
            self._activity_resolved(attempt, True, outcome.result or b"", "", "")
        else:
            self._attempt_failed(attempt, outcome.error_type, outcome.error_message)

    def _attempt_failed(
        self, attempt: Attempt, error_type: str, message: str, delay: float | None = None
    ) -> None:
        attempt.stop()
        open_run = self._open[attempt.key[0]]
        retry = attempt.options.retry
        following = attempt.number + 1
        wait = delay_s(retry, following) if delay is None else delay
        now = self._clock()
        deadline = attempt.deadline()
        if (
            error_type != "PayloadError"
            and retry.allows(following, error_type)
            and (deadline is None or now + wait < deadline)
        ):
            next_at_us = round((now + wait) * 1e6)
            wid, rid, seq = attempt.key
            self._db().update_activity(wid, rid, seq, attempt.number, "backoff", next_at_us)
            retry_event = ev.ActivityRetry(
                **self._base(open_run.row, self._now_us()),
                seq=seq,
                activity=attempt.definition.name,
                attempt=attempt.number,
                error_type=error_type,
                error_message=message,
                next_attempt_at_us=next_at_us,
                max_attempts=retry.maximum_attempts,
                delay_ms=round(wait * 1000),
            )
            self._append(open_run, [retry_event])
            if wait <= 0:
                self._retry_due(attempt.key, following)
            else:
                self._push(now + wait, "retry", (attempt.key, following))
        else:
            self._activity_resolved(attempt, False, b"", error_type, message)

    def _activity_resolved(
        self, attempt: Attempt, ok: bool, result: bytes, error_type: str, message: str
    ) -> None:
        wid, rid, seq = attempt.key
        open_run = self._open[wid]
        self._attempts.drop(attempt.key)
        open_run.activity_seqs.discard(seq)
        self._db().delete_activity(wid, rid, seq)
        base = self._base(open_run.row, self._now_us())
        name = attempt.definition.name
        event: ev.Event
        if ok:
            event = ev.ActivityCompleted(
                **base, seq=seq, activity=name, result=result, attempt=attempt.number
            )
        else:
            event = ev.ActivityFailed(
                **base,
                seq=seq,
                activity=name,
                error_type=error_type,
                error_message=message,
                attempt=attempt.number,
            )
        self._resolve(open_run, event)

    def _retry_due(self, key: tuple[str, str, int], number: int) -> None:
        attempt = self._attempts.get(key)
        if attempt is None or attempt.running or attempt.number != number - 1:
            return
        self._db().update_activity(*key, number, "running", None)
        self._begin_attempt(attempt, number)

    def heartbeat(self, key: tuple[str, str, int], number: int, details: bytes | None) -> bool:
        """Queue a heartbeat of attempt ``number``; False if that attempt is no longer wanted."""
        attempt = self._attempts.get(key)
        if attempt is None or attempt.number != number or not attempt.running:
            return False
        self._post(Heartbeat(key, number, details), None)
        return True

    def _heartbeat(self, beat: Heartbeat) -> None:
        attempt = self._attempts.get(beat.key)
        if attempt is None or attempt.number != beat.number or not attempt.running:
            return
        now = attempt.last_heartbeat = self._clock()
        if attempt.started_at is None:  # it has waited to run until now
            attempt.started_at = now
            options = attempt.options
            if options.start_to_close_timeout is not None:
                self._push(
                    now + options.start_to_close_timeout, "attempt_timeout", (beat.key, beat.number)
                )
            if options.heartbeat_timeout is not None:
                self._push(
                    now + options.heartbeat_timeout, "heartbeat_check", (beat.key, beat.number)
                )
        if beat.details is not None:
            attempt.heartbeat_details = beat.details
            self._db().set_activity_heartbeat(*beat.key, beat.details)

    def _recover_activities(self) -> None:
        """Re-arm backoffs and deadlines; attempts that were in flight run again (counted)."""
        for row in self._db().activities():
            open_run = self._open.get(row.workflow_id)
            if open_run is None or open_run.row.run_id != row.run_id:
                continue
            attempt = self._attempts.restore(row)
            open_run.activity_seqs.add(row.seq)
            timeout = attempt.options.schedule_to_close_timeout
            if timeout is not None:
                self._push(
                    attempt.scheduled_at_us / 1e6 + timeout, "schedule_timeout", (attempt.key, 0)
                )
            if row.state == "backoff":
                self._push((row.next_at_us or 0) / 1e6, "retry", (attempt.key, row.attempt + 1))
            else:
                self._attempt_failed(
                    attempt,
                    "PartitionRestarted",
                    "the partition restarted while this attempt was running",
                    delay=0.0,
                )

    def _deadline_stale(self, kind: str, key: tuple[str, str, int], number: int) -> bool:
        """Whether a ``retry`` or deadline entry of the timer heap would do nothing now."""
        attempt = self._attempts.get(key)
        if attempt is None:
            return True
        if kind == "schedule_timeout":
            return False
        if kind == "retry":
            return attempt.running or attempt.number != number - 1
        return attempt.number != number or not attempt.running

    def _readopt_activities(self, before: AttemptTable) -> None:
        """After a rolled-back turn: the activity table again from the file, keeping the
        attempts ``before`` holds that still run (their outcomes will come), and every
        deadline and backoff armed again."""
        now = self._clock()
        for row in self._db().activities():
            open_run = self._open.get(row.workflow_id)
            if open_run is None or open_run.row.run_id != row.run_id:
                continue
            key = (row.workflow_id, row.run_id, row.seq)
            attempt = self._attempts.readopt(row, before.get(key), now)
            before.forget(key)
            open_run.activity_seqs.add(row.seq)
            options = attempt.options
            if options.schedule_to_close_timeout is not None:
                deadline = attempt.scheduled_at_us / 1e6 + options.schedule_to_close_timeout
                self._push(deadline, "schedule_timeout", (key, 0))
            if not attempt.running:
                self._push((row.next_at_us or 0) / 1e6, "retry", (key, row.attempt + 1))
                continue
            started = attempt.started_at
            if started is not None and options.start_to_close_timeout is not None:
                self._push(
                    started + options.start_to_close_timeout, "attempt_timeout", (key, row.attempt)
                )
            if started is not None and options.heartbeat_timeout is not None:
                self._push(
                    attempt.last_heartbeat + options.heartbeat_timeout,
                    "heartbeat_check",
                    (key, row.attempt),
                )
        before.cancel_all()  # scheduled by the rolled-back turn only: never dispatched

    def _attempt_deadline(self, kind: str, key: tuple[str, str, int], number: int) -> None:
        attempt = self._attempts.get(key)
        if attempt is None:
            return
        options = attempt.options
        if kind == "schedule_timeout":
            attempt.stop()
            self._activity_resolved(
                attempt,
                False,
                b"",
                "TimeoutError",
                f"schedule_to_close_timeout of {options.schedule_to_close_timeout}s elapsed",
            )
            return
        if attempt.number != number or not attempt.running or attempt.started_at is None:
            return  # over, or still waiting to run (its start arms these deadlines again)
        if kind == "attempt_timeout":
            assert options.start_to_close_timeout is not None
            if self._clock() < attempt.started_at + options.start_to_close_timeout:
                return  # armed at dispatch; the deadline armed at its start is later
            self._attempt_failed(
                attempt,
                "TimeoutError",
                f"start_to_close_timeout of {options.start_to_close_timeout}s elapsed",
            )
        elif kind == "heartbeat_check":
            assert options.heartbeat_timeout is not None
            silent_until = attempt.last_heartbeat + options.heartbeat_timeout
            if silent_until <= self._clock():
                self._attempt_failed(
                    attempt,
                    "TimeoutError",
                    f"no heartbeat within heartbeat_timeout of {options.heartbeat_timeout}s",
                )
            else:
                self._push(silent_until, "heartbeat_check", (key, number))
