"""What the partition machine asks its shell to do, and the inputs only the shell makes, as data.

The machine (:mod:`duraflow.engine.machine`) never writes a file or sends a message: each
``apply`` returns a list of effects. The shell applies the *writes* (rows and events) at once,
inside the turn's one transaction, so the next input of the same turn reads them; everything
else (replies, dispatching attempts, sending to other partitions, arming due times) waits until
that transaction committed. Due times are a typed union (``Due``): when one falls due the shell
feeds it back to the machine as an input, like a request.

Schema-evolution rules (msgspec): effects live only in memory, but each is a tagged Struct so
a log or a test can name it; new fields get defaults.
"""

from __future__ import annotations

from typing import Any

import msgspec

from duraflow.actors import messages as m
from duraflow.engine.activities import ActivityOutcome
from duraflow.storage.rows import ActivityRow, TimerRow, WorkflowRow

Key = tuple[str, str, int]
"""(workflow ID, run ID, seq) of a scheduled activity or a timer."""


# -- due times: armed by the machine, fed back by the shell when they fall due ------------------


class TimerDue(msgspec.Struct, tag=True, frozen=True):
    """A durable timer of a run (``asyncio.sleep`` / ``ctx.sleep``)."""

    key: Key


class RetryDue(msgspec.Struct, tag=True, frozen=True):
    """An activity's backoff ended: attempt ``number`` may begin."""

    key: Key
    number: int


class AttemptTimeout(msgspec.Struct, tag=True, frozen=True):
    """Attempt ``number``'s start-to-close timeout may have elapsed."""

    key: Key
    number: int


class HeartbeatCheck(msgspec.Struct, tag=True, frozen=True):
    """Attempt ``number`` may have been silent for its heartbeat timeout."""

    key: Key
    number: int


class ScheduleTimeout(msgspec.Struct, tag=True, frozen=True):
    """An activity's schedule-to-close timeout (all attempts) elapsed."""

    key: Key


class OutboxRetry(msgspec.Struct, tag=True, frozen=True):
    """Send an undelivered outbox message again."""

    outbox_id: int


class PruneDue(msgspec.Struct, tag=True, frozen=True):
    """Delete the next batch of archived closed runs."""


Due = (
    TimerDue | RetryDue | AttemptTimeout | HeartbeatCheck | ScheduleTimeout | OutboxRetry | PruneDue
)


# -- inputs the shell makes (requests are ``actors.messages``) --------------------------------


class ActivityDone(msgspec.Struct, tag=True):
    """An executor's report: attempt ``number`` of activity ``key`` ended with ``outcome``."""

    key: Key
    number: int
    outcome: ActivityOutcome


class Heartbeat(msgspec.Struct, tag=True):
    """A heartbeat of attempt ``number`` of activity ``key``."""

    key: Key
    number: int
    details: bytes | None


class Delivered(msgspec.Struct, tag=True):
    """The outcome of sending outbox row ``outbox_id`` (``error`` None: it arrived, and
    ``value`` is the receiver's reply)."""

    outbox_id: int
    message: Any
    error: Any = None  # BaseException | None; kept untyped: exceptions are not msgspec types
    value: Any = None


# -- writes: applied at once, inside the turn's transaction -----------------------------------


class Write(msgspec.Struct, tag=True):
    """An effect the shell writes to the partition's file inside the turn's transaction."""


class InsertWorkflow(Write):
    row: WorkflowRow


class CloseWorkflow(Write):
    """Close a run's row and drop its timers, activities and signal marks."""

    workflow_id: str
    run_id: str
    status: str
    at_us: int
    result: bytes | None
    error_type: str | None
    error_message: str | None


class AppendEvents(Write):
    """History rows (already stamped with event IDs and LSNs): also the CDC outbox."""

    events: list[Any]


class SetStuck(Write):
    workflow_id: str
    run_id: str
    stuck: str | None


class PutActivity(Write):
    row: ActivityRow


class UpdateActivity(Write):
    key: Key
    attempt: int
    state: str
    next_at_us: int | None


class SetActivityHeartbeat(Write):
    key: Key
    details: bytes


class DropActivity(Write):
    key: Key


class PutTimer(Write):
    row: TimerRow


class DropTimer(Write):
    key: Key


class MarkSignal(Write):
    """Remember a signal's request ID, so a retried signal is appended once."""

    request_id: str
    workflow_id: str
    run_id: str
    lsn: int


class PutOutbox(Write):
    """A message to another partition: a durable outbox row, sent after the commit."""

    target_id: str
    message: m.OutboxMessage


class DropOutbox(Write):
    outbox_id: int


class SetMeta(Write):
    key: str
    value: str


class DeleteRun(Write):
    """Delete a closed run that the archive holds (tiering)."""

    workflow_id: str
    run_id: str


# -- after the commit -------------------------------------------------------------------------


class AfterCommit(msgspec.Struct, tag=True):
    """An effect the shell carries out once the turn's transaction committed."""


class Reply(AfterCommit):
    """The answer to the request being applied (``error``: a DuraflowError raised instead)."""

    value: Any = None
    error: Any = None


class AwaitClose(AfterCommit):
    """The request waits for an open run to close: keep its future, or register its mailbox."""

    workflow_id: str
    run_id: str
    requested_run_id: str | None
    mailbox: str | None


class Dispatch(AfterCommit):
    """Start attempt ``number`` of activity ``key`` on the executor."""

    key: Key
    number: int


class StopAttempt(AfterCommit):
    """Tell attempt ``number`` of ``key``, if it still runs, that it is no longer wanted."""

    key: Key
    number: int


class Send(AfterCommit):
    """Send outbox row ``outbox_id`` (already durable) to the owner of ``target_id``."""

    outbox_id: int
    target_id: str
    message: m.OutboxMessage


class Arm(AfterCommit):
    """Feed ``due`` back to the machine at ``at`` (epoch seconds)."""

    at: float
    due: Due


class Closed(AfterCommit):
    """A run closed: answer whoever waits for its result."""

    outcome: m.Outcome


WRITES: tuple[type[Write], ...] = tuple(Write.__subclasses__())
"""The effects applied inside the transaction; the rest (``AfterCommit``) once it committed."""
