"""The partition machine's table of scheduled activities and the state of their current attempt.

Pure state: the shell holds the running attempts' tasks (``Dispatch`` / ``StopAttempt``).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from duraflow.engine.activities import ActivityInfo, ActivityTask
from duraflow.engine.definitions import ActivityDefinition, ActivityOptions, resolve_activity
from duraflow.engine.retry import delay_s
from duraflow.errors import UnknownActivity
from duraflow.storage.codec import decode
from duraflow.storage.rows import ActivityRow

Key = tuple[str, str, int]
"""(workflow ID, run ID, seq) of a scheduled activity."""

_options_encoder = msgspec.msgpack.Encoder()
_options_decoder = msgspec.msgpack.Decoder(ActivityOptions)


class Attempt:
    """A scheduled activity and its current attempt (number, running, heartbeat)."""

    __slots__ = (
        "args",
        "definition",
        "heartbeat_details",
        "key",
        "last_heartbeat",
        "number",
        "options",
        "running",
        "scheduled_at_us",
        "started_at",
    )

    def __init__(
        self,
        key: Key,
        definition: ActivityDefinition,
        options: ActivityOptions,
        args: bytes,
        scheduled_at_us: int,
    ) -> None:
        self.key = key
        self.definition = definition
        self.options = options
        self.args = args
        self.scheduled_at_us = scheduled_at_us
        self.number = 0
        self.running = False
        self.last_heartbeat = 0.0
        self.started_at: float | None = None
        """When the current attempt started running; None while it waits to (a Ray task
        waiting for a worker or resources). Its start_to_close and heartbeat timeouts count
        from here."""
        self.heartbeat_details: bytes | None = None

    def row(self, number: int, state: str, next_at_us: int | None) -> ActivityRow:
        wid, rid, seq = self.key
        return ActivityRow(
            wid,
            rid,
            seq,
            self.definition.name,
            self.definition.code_ref,
            self.args,
            _options_encoder.encode(self.options),
            number,
            state,
            self.scheduled_at_us,
            next_at_us,
            self.heartbeat_details,
        )

    def begin(self, number: int, now: float, waits_to_run: bool) -> None:
        """Attempt ``number`` is running from ``now`` (``waits_to_run``: its timeouts count
        from its first heartbeat instead, which it sends when it starts)."""
        self.number = number
        self.running = True
        self.last_heartbeat = now
        self.started_at = None if waits_to_run else now

    @property
    def timed(self) -> bool:
        """Whether an attempt has a start-to-close or heartbeat timeout."""
        return bool(self.options.start_to_close_timeout or self.options.heartbeat_timeout)

    def deadline(self) -> float | None:
        """When schedule_to_close_timeout ends all attempts (seconds), if it is set."""
        timeout = self.options.schedule_to_close_timeout
        return None if timeout is None else self.scheduled_at_us / 1e6 + timeout

    def retry_wait(self, error_type: str, now: float, delay: float | None = None) -> float | None:
        """How long to wait before the next attempt after this one failed with
        ``error_type`` at ``now`` (``delay``: instead of the policy's backoff); None when the
        policy, the error or the schedule-to-close deadline allows no more attempts."""
        retry = self.options.retry
        following = self.number + 1
        wait = delay_s(retry, following) if delay is None else delay
        deadline = self.deadline()
        if (
            error_type != "PayloadError"
            and retry.allows(following, error_type)
            and (deadline is None or now + wait < deadline)
        ):
            return wait
        return None

    def task(self, heartbeat: Callable[[bytes | None], None]) -> ActivityTask:
        wid, rid, seq = self.key
        info = ActivityInfo(
            activity=self.definition.name,
            workflow_id=wid,
            run_id=rid,
            seq=seq,
            attempt=self.number,
            heartbeat_details=decode(self.heartbeat_details),
        )
        task = ActivityTask(self.definition, self.args, info, heartbeat)
        task.timed = self.timed
        return task


class AttemptTable:
    """Scheduled, unresolved activities by key."""

    def __init__(self) -> None:
        self._by_key: dict[Key, Attempt] = {}

    def schedule(
        self,
        key: Key,
        definition: ActivityDefinition,
        options: ActivityOptions,
        args: bytes,
        scheduled_at_us: int,
    ) -> Attempt:
        attempt = Attempt(key, definition, options, args, scheduled_at_us)
        self._by_key[key] = attempt
        return attempt

    def restore(self, row: ActivityRow) -> Attempt:
        """The attempt state of a row read back after a restart."""
        try:
            definition = resolve_activity(row.activity, row.code_ref)
        except UnknownActivity as exc:
            definition = _missing(row.activity, row.code_ref, str(exc))
        key = (row.workflow_id, row.run_id, row.seq)
        attempt = self.schedule(
            key, definition, _options_decoder.decode(row.options), row.args, row.scheduled_at_us
        )
        attempt.number = row.attempt
        attempt.running = row.state == "running"
        attempt.heartbeat_details = row.heartbeat
        return attempt

    def readopt(self, row: ActivityRow, old: Attempt | None, now: float) -> Attempt:
        """The attempt ``row`` records, after a rolled-back turn: ``old`` itself when it is
        that attempt (its code may still be running; its outcome is awaited), else one
        restored from the row (a running one counts its timeouts from ``now``)."""
        if old is not None and old.number == row.attempt:
            attempt = old
            self._by_key[attempt.key] = attempt
            attempt.running = row.state == "running"
            attempt.heartbeat_details = row.heartbeat
        else:
            attempt = self.restore(row)
            if attempt.running:
                attempt.started_at = attempt.last_heartbeat = now
        return attempt

    def get(self, key: Key) -> Attempt | None:
        return self._by_key.get(key)

    def any_running(self) -> bool:
        """Whether an attempt is running (not waiting out a retry backoff)."""
        return any(attempt.running for attempt in self._by_key.values())

    def drop(self, key: Key) -> Attempt | None:
        return self._by_key.pop(key, None)

    def values(self) -> list[Attempt]:
        return list(self._by_key.values())


def _missing(name: str, code_ref: str, message: str) -> ActivityDefinition:
    """A definition whose attempts fail with UnknownActivity until the code is importable."""

    def unavailable(*args: object) -> None:
        raise UnknownActivity(message)

    return ActivityDefinition(name, unavailable, code_ref, ActivityOptions(), is_async=False)
