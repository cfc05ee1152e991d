"""The history event tagged union: every state change of a workflow run, in one place.

A run's history is a sequence of these events; it is both what replay reads and the CDC
outbox that subscribers and the archive consume. Each event carries the workflow ID, run ID,
workflow type, its event ID (1, 2, 3 ... within the run), the partition and LSN (a
partition-wide, strictly increasing log sequence number) and the time it was recorded
(``at_us``, microseconds since the epoch, UTC).

Three kinds of events:

* **resolutions** come from outside the workflow code and are fed to it on replay:
  ``workflow.started``, ``workflow.activity_completed``, ``workflow.activity_failed``,
  ``workflow.timer_fired``, ``workflow.signal_received``, ``workflow.cancel_requested``,
  ``workflow.child_completed``, ``workflow.child_failed``, ``workflow.external_completed``,
  ``workflow.external_failed``, ``workflow.blocked_workflow_closed``,
  ``workflow.update_accepted``;
* **commands** are what the workflow code did; replay checks that re-run code issues the
  same ones: ``workflow.activity_scheduled``, ``workflow.activity_cancelled``,
  ``workflow.timer_started``, ``workflow.timer_cancelled``, ``workflow.child_started``,
  ``workflow.completed``, ``workflow.failed``, ``workflow.cancelled``,
  ``workflow.external_signal_requested``, ``workflow.external_query_requested``,
  ``workflow.external_cancel_requested``, ``workflow.block_until_started``,
  ``workflow.block_until_ended``, ``workflow.update_completed``, ``workflow.update_failed``;
* **information** that replay skips: ``workflow.step.retry`` (an activity attempt failed and
  will be retried), ``workflow.terminated`` (closed from outside without running code),
  ``workflow.paused`` and ``workflow.unpaused`` (an operator's pause).

``workflow.patched`` is a command too (``ctx.patched`` / ``ctx.deprecate_patch``, matched by
its patch ID on replay).

The four closing events (:data:`CLOSING`) each close their run; :data:`CLOSING_RULES` is the
one place that says what each means for it (status, error type and message, result), read by
the partition, the client (:func:`run_closing`) and the archive's SQL.

Payload fields (``args``, ``result``, ``payload``) hold msgpack bytes made by
``duraflow.storage.codec``.

Schema evolution (msgspec's rules): add fields only with defaults; never rename or retype a
field that has been written; never reuse a tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec


class Event(msgspec.Struct, kw_only=True, tag_field="type", gc=False):
    """Fields every history event carries.

    ``event_id`` and ``lsn`` are stamped by the partition when it appends the event, and are
    never changed after that.

    Events are not tracked by Python's cycle collector (``gc=False``): their fields are
    strings, numbers and bytes, which cannot form a cycle, and the partitions and the archive
    make tens of thousands a second (tracked, they set off a collection every few hundred, a
    third of the cost of decoding them). A field added later must not hold anything that could
    refer back to its event.
    """

    workflow_id: str
    run_id: str
    workflow_type: str
    event_id: int = 0
    partition: int = 0
    lsn: int = 0
    at_us: int = 0


class WorkflowStarted(Event, tag="workflow.started"):
    args: bytes
    code_ref: str = ""
    python: str = ""
    parent_id: str | None = None
    parent_run_id: str | None = None
    parent_seq: int | None = None
    attempt: int = 1
    code_hash: str = ""
    """The workflow code's hash when the run started (``describe()`` compares it with now's)."""
    reset_from_run_id: str | None = None
    """A run made by ``handle.reset()``: the run whose history it copied, up to and including
    event ``reset_from_event_id``, and why (``reset_reason``)."""
    reset_from_event_id: int | None = None
    reset_reason: str = ""
    seed: str = ""
    """The run ID that seeds the run's randomness when not its own (a reset run's source's)."""


class ActivityScheduled(Event, tag="workflow.activity_scheduled"):
    seq: int
    activity: str
    args: bytes


class ActivityCompleted(Event, tag="workflow.activity_completed"):
    seq: int
    activity: str
    result: bytes
    attempt: int = 1


class ActivityFailed(Event, tag="workflow.activity_failed"):
    seq: int
    activity: str
    error_type: str
    error_message: str
    attempt: int = 1


class ActivityRetry(Event, tag="workflow.step.retry"):
    """Attempt ``attempt`` failed; the next one runs after ``delay_ms`` (seed 004's
    ``delay``), at ``next_attempt_at_us``. ``max_attempts`` is the policy's (0: unlimited)."""

    seq: int
    activity: str
    attempt: int
    error_type: str
    error_message: str
    next_attempt_at_us: int
    max_attempts: int = 0
    delay_ms: int = 0


class ActivityCancelled(Event, tag="workflow.activity_cancelled"):
    seq: int
    activity: str


class TimerStarted(Event, tag="workflow.timer_started"):
    seq: int
    fire_at_us: int


class TimerFired(Event, tag="workflow.timer_fired"):
    seq: int


class TimerCancelled(Event, tag="workflow.timer_cancelled"):
    seq: int


class SignalReceived(Event, tag="workflow.signal_received"):
    name: str
    payload: bytes


class CancelRequested(Event, tag="workflow.cancel_requested"):
    reason: str = ""


class ChildStarted(Event, tag="workflow.child_started"):
    seq: int
    child_workflow_id: str
    child_workflow_type: str
    code_ref: str = ""
    args: bytes = b""
    parent_close_policy: str = "terminate"


class ChildCompleted(Event, tag="workflow.child_completed"):
    seq: int
    child_workflow_id: str
    result: bytes


class ChildFailed(Event, tag="workflow.child_failed"):
    seq: int
    child_workflow_id: str
    status: str
    error_type: str
    error_message: str


class WorkflowPaused(Event, tag="workflow.paused"):
    """An operator paused the run: nothing new is dispatched until it is unpaused."""

    reason: str = ""


class WorkflowUnpaused(Event, tag="workflow.unpaused"):
    """The run was unpaused: what its pause held is dispatched now."""

    reason: str = ""


class PatchMarker(Event, tag="workflow.patched"):
    """``ctx.patched(patch_id)`` (or ``ctx.deprecate_patch``) took the new code path."""

    patch_id: str
    deprecated: bool = False


class WorkflowCompleted(Event, tag="workflow.completed"):
    """The run returned ``result``. ``duration_ms`` (on every closing event) counts from the
    run's start; ``status`` is seed 001's field (always ``"completed"`` here)."""

    result: bytes
    status: str = "completed"
    duration_ms: int = 0


class WorkflowFailed(Event, tag="workflow.failed"):
    error_type: str
    error_message: str
    duration_ms: int = 0


class WorkflowCancelled(Event, tag="workflow.cancelled"):
    reason: str = ""
    duration_ms: int = 0


class WorkflowTerminated(Event, tag="workflow.terminated"):
    reason: str = ""
    duration_ms: int = 0


# -- workflows talking to workflows (DESIGN section 5) ------------------------------------------


class ExternalSignalRequested(Event, tag="workflow.external_signal_requested"):
    """The code signalled another workflow (``ctx.external_workflow(id).signal``, a child
    handle's ``signal``, ``ctx.signal_parent``): sent through the outbox, resolved by
    ``workflow.external_completed`` / ``workflow.external_failed`` of the same ``seq``.
    ``target_run_id`` set: that run only (the parent's); else the ID's latest run.
    ``child_seq``: the target is this run's child of that ``seq`` (a child handle's request
    waits until the child's start arrived)."""

    seq: int
    target_workflow_id: str
    name: str
    payload: bytes
    target_run_id: str | None = None
    child_seq: int | None = None


class ExternalQueryRequested(Event, tag="workflow.external_query_requested"):
    """The code queried another workflow; the answer is recorded by
    ``workflow.external_completed`` (``result``) so a replay does not ask again."""

    seq: int
    target_workflow_id: str
    name: str
    args: bytes
    target_run_id: str | None = None
    child_seq: int | None = None


class ExternalCancelRequested(Event, tag="workflow.external_cancel_requested"):
    """The code asked another workflow's latest run to cancel."""

    seq: int
    target_workflow_id: str
    reason: str = ""
    child_seq: int | None = None


class ExternalCompleted(Event, tag="workflow.external_completed"):
    """The target's partition committed the request ``seq`` (a query's answer in ``result``)."""

    seq: int
    target_workflow_id: str
    result: bytes = b""


class ExternalFailed(Event, tag="workflow.external_failed"):
    """The target's partition refused request ``seq`` (``WorkflowClosed``, ``WorkflowNotFound``,
    ``UnknownQuery``, ``QueryFailed``, ...): the code's await raises that error."""

    seq: int
    target_workflow_id: str
    error_type: str
    error_message: str


class BlockUntilStarted(Event, tag="workflow.block_until_started"):
    """``ctx.block_until(workflow_ids, condition)``: each target's partition is asked to tell
    this run when the ID closes (at once if it is closed already)."""

    seq: int
    workflow_ids: list[str]
    condition: str


class BlockedWorkflowClosed(Event, tag="workflow.blocked_workflow_closed"):
    """A workflow that ``block_until`` ``seq`` waits on is closed with ``status``."""

    seq: int
    target_workflow_id: str
    status: str


class BlockUntilEnded(Event, tag="workflow.block_until_ended"):
    """``block_until`` ``seq`` stopped waiting (condition met, timeout, cancel) before the
    IDs in ``pending`` closed: their partitions are told to forget it."""

    seq: int
    pending: list[str]


# -- updates (DESIGN section 5): a request that the run answers with its handler's result ------


class UpdateAccepted(Event, tag="workflow.update_accepted"):
    """The run took update ``name`` (its validator, if any, let it through): the handler runs
    with ``args``. ``update_id`` is the caller's request ID (one update per ID per run)."""

    update_id: str
    name: str
    args: bytes


class UpdateCompleted(Event, tag="workflow.update_completed"):
    """The handler of the update accepted as event ``accepted_event_id`` returned ``result``."""

    update_id: str
    name: str
    accepted_event_id: int
    result: bytes


class UpdateFailed(Event, tag="workflow.update_failed"):
    """The handler of the update accepted as event ``accepted_event_id`` raised."""

    update_id: str
    name: str
    accepted_event_id: int
    error_type: str
    error_message: str


AnyEvent = (
    WorkflowStarted
    | ActivityScheduled
    | ActivityCompleted
    | ActivityFailed
    | ActivityRetry
    | ActivityCancelled
    | TimerStarted
    | TimerFired
    | TimerCancelled
    | SignalReceived
    | CancelRequested
    | ChildStarted
    | ChildCompleted
    | ChildFailed
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCancelled
    | WorkflowTerminated
    | ExternalSignalRequested
    | ExternalQueryRequested
    | ExternalCancelRequested
    | ExternalCompleted
    | ExternalFailed
    | BlockUntilStarted
    | BlockedWorkflowClosed
    | BlockUntilEnded
    | UpdateAccepted
    | UpdateCompleted
    | UpdateFailed
    | WorkflowPaused
    | WorkflowUnpaused
    | PatchMarker
)

RESOLUTIONS: tuple[type[Event], ...] = (
    WorkflowStarted,
    ActivityCompleted,
    ActivityFailed,
    TimerFired,
    SignalReceived,
    CancelRequested,
    ChildCompleted,
    ChildFailed,
    ExternalCompleted,
    ExternalFailed,
    BlockedWorkflowClosed,
    UpdateAccepted,
)
COMMANDS: tuple[type[Event], ...] = (
    ActivityScheduled,
    ActivityCancelled,
    TimerStarted,
    TimerCancelled,
    ChildStarted,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCancelled,
    ExternalSignalRequested,
    ExternalQueryRequested,
    ExternalCancelRequested,
    BlockUntilStarted,
    BlockUntilEnded,
    UpdateCompleted,
    UpdateFailed,
    PatchMarker,
)
CLOSING: tuple[type[Event], ...] = (
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCancelled,
    WorkflowTerminated,
)


class FromField(NamedTuple):
    """A value taken from the closing event's field ``name`` (``or_else`` when it is empty)."""

    name: str
    or_else: str | None = None


ClosingValue = str | FromField | None
"""What a run's closing says about one of its columns: a constant, an event field, or nothing."""


class ClosingRule(NamedTuple):
    """What a closing event makes of its run: the status, and where its error type, error
    message and result come from."""

    status: str
    error_type: ClosingValue = None
    error_message: ClosingValue = None
    result: ClosingValue = None


CLOSING_RULES: dict[type[Event], ClosingRule] = {
    WorkflowCompleted: ClosingRule("completed", result=FromField("result")),
    WorkflowFailed: ClosingRule("failed", FromField("error_type"), FromField("error_message")),
    WorkflowCancelled: ClosingRule(
        "cancelled", "CancelledError", FromField("reason", or_else="cancelled")
    ),
    WorkflowTerminated: ClosingRule(
        "terminated", "Terminated", FromField("reason", or_else="terminated")
    ),
}
"""The one place that says what each closing event means for its run. The partition records
it when the run closes, the client reads it back from an archived history
(:func:`run_closing`) and the archive's ``workflows`` table derives its columns from it (the
SQL is generated from this table in ``storage/archive_schema.py``)."""


class RunClosing(NamedTuple):
    """How a run closed, as its partition records it and ``describe()`` / ``result()`` say."""

    status: str
    error_type: str | None
    error_message: str | None
    result: bytes | None


def run_closing(event: Event) -> RunClosing:
    """Status, error type, error message and result that the closing ``event`` gives its run.

    Raises:
        KeyError: ``event`` does not close a run (not one of :data:`CLOSING`).
    """
    rule = CLOSING_RULES[type(event)]
    return RunClosing(
        rule.status,
        _closing_value(rule.error_type, event),
        _closing_value(rule.error_message, event),
        _closing_value(rule.result, event),
    )


def last_closing(events: Sequence[Event]) -> Event:
    """The event that closed the run of ``events`` (the last of :data:`CLOSING` among them).

    Raises:
        ValueError: none of ``events`` closes a run.
    """
    for event in reversed(events):
        if isinstance(event, CLOSING):
            return event
    raise ValueError("the run has no closing event")


def _closing_value(value: ClosingValue, event: Event) -> Any:
    if not isinstance(value, FromField):
        return value
    found = getattr(event, value.name)
    if not found and value.or_else is not None:
        return value.or_else
    return found


EVENT_TYPES: tuple[str, ...] = tuple(
    cls.__struct_config__.tag  # type: ignore[misc]  # reason: msgspec types tag as str | int
    for cls in AnyEvent.__args__  # type: ignore[attr-defined]  # reason: typing.Union exposes __args__
)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)  # type: ignore[arg-type]  # reason: Union is a valid decoder type


def encode_event(event: Event) -> bytes:
    """msgpack bytes of one event (its tag included)."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> AnyEvent:
    """The event encoded in ``data``; the right subclass is chosen by its ``type`` tag."""
    return _decoder.decode(data)


def event_type(event: Event) -> str:
    """The event's tag, such as ``"workflow.completed"``."""
    return event.__struct_config__.tag  # type: ignore[return-value]  # reason: our tags are str
