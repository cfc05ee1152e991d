"""Requests and replies between clients and partitions (and between partitions).

All are msgspec Structs, so the same messages travel through the in-process host, Ray actor
calls and the partition's outbox (where they are stored as msgpack).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

# Re-exported: replies carry it (its home is the public duraflow.description).
from duraflow.description import WorkflowDescription as WorkflowDescription
from duraflow.errors import PayloadError

IdConflict = Literal["fail", "use_existing", "terminate_existing"]
"""What ``start`` does when the ID's latest run is still open."""
ID_CONFLICT_POLICIES: tuple[str, ...] = get_args(IdConflict)


class RunOptions(msgspec.Struct, frozen=True, kw_only=True):
    """A start's run options (``client.start``, ``ctx.start_child``), checked by the caller:
    timeouts and delay in seconds, ``retry`` a RetryPolicy's fields, search attributes
    checked by ``engine/search_attributes.py``."""

    execution_timeout_s: float | None = None
    run_timeout_s: float | None = None
    start_delay_s: float | None = None
    retry: dict[str, Any] | None = None
    search_attributes: dict[str, Any] | None = None


class Message(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Base of every request."""

    workflow_id: str


class Start(Message, kw_only=True):
    """Start a run (a client's start, or a parent's child start through the outbox)."""

    workflow_type: str
    code_ref: str
    args: bytes
    id_conflict: str = "fail"
    run_id: str | None = None
    parent_id: str | None = None
    parent_run_id: str | None = None
    parent_seq: int | None = None
    options: RunOptions | None = None


class Signal(Message, kw_only=True):
    run_id: str | None = None
    name: str
    payload: bytes
    request_id: str


class Query(Message, kw_only=True):
    run_id: str | None = None
    name: str
    args: bytes
    deadline_us: int | None = None
    """Wall-clock time (epoch microseconds) after which the caller no longer waits: a query
    still queued then is not run."""


class Cancel(Message, kw_only=True):
    run_id: str | None = None
    reason: str = ""


class Terminate(Message, kw_only=True):
    """Terminate a run. With ``parent_run_id``, only if that run is the target's parent."""

    run_id: str | None = None
    reason: str = ""
    parent_run_id: str | None = None


class AwaitResult(Message, kw_only=True):
    """Wait for a run to close. With ``mailbox``, the reply comes at once: the run's
    :class:`Outcome` if it is closed, else :class:`Waiting`, and the outcome goes to that
    mailbox when the run closes (see :class:`CollectResults`)."""

    run_id: str | None = None
    mailbox: str | None = None


class Describe(Message, kw_only=True):
    run_id: str | None = None


class History(Message, kw_only=True):
    """The recorded events of a run (the latest one unless ``run_id`` is given)."""

    run_id: str | None = None


class ChildClosed(Message, kw_only=True):
    """A child's outcome, sent to its parent (``workflow_id`` is the parent's)."""

    parent_run_id: str
    seq: int
    child_workflow_id: str
    status: str
    result: bytes | None = None
    error_type: str = ""
    error_message: str = ""


class ExternalRequest(Message, kw_only=True):
    """A signal, query or cancel that a workflow's code sent to ``workflow_id`` through its
    partition's outbox; the reply (or error) resolves command ``seq`` of the sender's run.
    A signal's ``request_id`` is ``"<sender run ID>:<seq>"``, so a resent one is appended once."""

    sender_id: str
    sender_run_id: str
    seq: int
    request: Signal | Query | Cancel
    child_seq: int | None = None
    """Set when the target is the sender's child of that ``seq`` (see the machine's rule)."""


class Watch(Message, kw_only=True):
    """``block_until``: tell run ``watcher_run_id`` of ``watcher_id`` (its wait ``seq``) when
    ``workflow_id`` closes. The reply is the status if the ID's latest run is closed already,
    else None (the registration is durable; :class:`WatchedClosed` follows). With ``cancel``,
    forget the registration."""

    watcher_id: str
    watcher_run_id: str
    seq: int
    cancel: bool = False


class WatchedClosed(Message, kw_only=True):
    """To a ``block_until``'s run (``workflow_id`` is the watcher's): ``target_workflow_id``
    closed with ``status``."""

    watcher_run_id: str
    seq: int
    target_workflow_id: str
    status: str


class Update(Message, kw_only=True):
    """Run the update handler ``name`` with ``args`` (a msgpack list) once per ``request_id``.

    The reply is an :class:`Outcome` whose ``run_id`` is :func:`update_key` of the request
    ID and whose ``status`` is the update's: ``"completed"`` (``result``), ``"failed"`` (the
    handler raised) or ``"accepted"`` (the handler still runs: ``AwaitResult`` with that
    ``run_id`` waits for it, and answers ``"closed"`` if the run closes first).
    """

    run_id: str | None = None
    name: str
    args: bytes
    request_id: str


class SignalWithStart(Message, kw_only=True):
    """Signal the ID's open run, starting it with ``start`` first if it has none: one step.
    The reply is the :class:`StartReply` of the run signalled."""

    start: Start
    name: str
    payload: bytes
    request_id: str


class UpdateWithStart(Message, kw_only=True):
    """Update the ID's open run, starting it with ``start`` first if it has none: one step.
    The reply is as :class:`Update`'s."""

    start: Start
    name: str
    args: bytes
    request_id: str


UPDATE_KEY_PREFIX = "update:"


def update_key(request_id: str) -> str:
    """The ``run_id`` under which an update's outcome is awaited (``AwaitResult``) and
    answered (``Outcome``): never a run's ID, which are hex."""
    return UPDATE_KEY_PREFIX + request_id


class Pause(Message, kw_only=True):
    """Pause an open run (``handle.pause``): nothing new is dispatched until unpaused."""

    run_id: str | None = None
    reason: str = ""


class Unpause(Message, kw_only=True):
    """Unpause a run: dispatch what its pause held."""

    run_id: str | None = None
    reason: str = ""


class Reset(Message, kw_only=True):
    """Start run ``new_run_id`` of the ID from a closed run's history (``handle.reset``):
    up to its first failure (``to="last_failure"``) or up to event ``to``. Replies a
    :class:`StartReply`."""

    run_id: str | None = None
    to: str | int = "last_failure"
    reason: str = ""
    new_run_id: str


class ReadEvents(msgspec.Struct, frozen=True, kw_only=True):
    """Read a partition's events after ``after_lsn`` (its change log), optionally filtered.

    ``limit`` bounds the events *scanned*; with ``wait_s`` > 0 the partition holds the
    request until an event newer than ``after_lsn`` is committed or the time is up.
    """

    after_lsn: int = 0
    limit: int = 1000
    wait_s: float = 0.0
    event_types: tuple[str, ...] | None = None
    workflow_type: str | None = None
    workflow_id: str | None = None


class EventBatch(msgspec.Struct, frozen=True):
    """Encoded events (``duraflow.cdc.events``) and where to resume: ``next_after_lsn`` is
    the last LSN scanned (filtered-out events included); ``head_lsn`` the newest committed."""

    partition: int
    events: list[bytes]
    next_after_lsn: int
    head_lsn: int


class Archived(msgspec.Struct, frozen=True, kw_only=True):
    """From the archive's consumer: every event of this partition up to ``lsn`` is committed
    to the archive, so closed runs past their retention may leave the partition's file."""

    lsn: int


class CollectResults(msgspec.Struct, frozen=True, kw_only=True):
    """Take the outcomes waiting in ``mailbox`` (a client's, filled by ``AwaitResult`` with
    ``mailbox``); with ``wait_s`` > 0 the partition holds the request until one arrives or
    the time is up. The reply is :class:`Mailed`."""

    mailbox: str
    wait_s: float = 0.0


class ListWorkflows(msgspec.Struct, frozen=True, kw_only=True):
    """List runs of one partition, newest first."""

    status: str | None = None
    workflow_type: str | None = None
    limit: int = 1000
    search: dict[str, Any] | None = None
    """Only runs whose search attributes have these values."""


OutboxMessage = Start | Terminate | Cancel | ChildClosed | ExternalRequest | Watch | WatchedClosed
Request = (
    Start
    | Signal
    | Query
    | Cancel
    | Terminate
    | AwaitResult
    | Describe
    | History
    | ChildClosed
    | ExternalRequest
    | Watch
    | WatchedClosed
    | Update
    | SignalWithStart
    | UpdateWithStart
    | Pause
    | Unpause
    | Reset
)


class StartReply(msgspec.Struct, frozen=True):
    run_id: str
    started: bool
    first_run_id: str | None = None
    """The first run of ``run_id``'s chain when not ``run_id`` itself (``use_existing``)."""


class Outcome(msgspec.Struct, frozen=True):
    """How a run closed: ``status`` and either ``result`` (msgpack) or an error."""

    workflow_id: str
    run_id: str
    status: str
    result: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    next_run_id: str | None = None
    """The run of the same ID that followed (continue-as-new, a workflow retry), if any."""


class MailedOutcome(msgspec.Struct, frozen=True):
    """An outcome in a mailbox, with the run ID its ``AwaitResult`` asked for (None: latest)."""

    requested_run_id: str | None
    outcome: Outcome


class Waiting(msgspec.Struct, frozen=True):
    """Reply to ``AwaitResult`` with a mailbox for a run still open: its outcome will be left
    in the mailbox of this ``incarnation`` of the partition (mailboxes live in memory, so a
    restarted partition, a new incarnation, has forgotten every registration)."""

    incarnation: str


class Mailed(msgspec.Struct, frozen=True):
    """Reply to ``CollectResults``: the outcomes taken from the mailbox, and the partition's
    ``incarnation``. A client whose runs were registered with another incarnation registers
    them again; ``known`` is False when this incarnation has no such mailbox at all."""

    incarnation: str
    outcomes: list[MailedOutcome]
    known: bool = True


_request_types = (*Request.__args__, ListWorkflows, ReadEvents, Archived, CollectResults)  # type: ignore[attr-defined]  # reason: typing.Union exposes __args__
_validators = {t: msgspec.msgpack.Decoder(t) for t in _request_types}
_outbox_encoder = msgspec.msgpack.Encoder()


def validated(request: object) -> object:
    """``request`` checked field by field against its message type (types, UTF-8 text).

    Requests may come from other processes (Ray) built by any code; a round trip through
    msgpack with the message's schema catches a wrong type before it reaches a partition.

    Raises:
        PayloadError: not a request message, or a field of the wrong type (named).
    """
    decoder = _validators.get(type(request))
    if decoder is None:
        raise PayloadError(f"not a duraflow request: {type(request).__name__}")
    try:
        return decoder.decode(_outbox_encoder.encode(request))
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError, UnicodeEncodeError) as exc:
        raise PayloadError(f"malformed {type(request).__name__} request: {exc}") from None


_batch_decoder = msgspec.msgpack.Decoder(list[Request])  # type: ignore[valid-type]  # reason: Request is a Union alias


_by_name = {t.__name__: decoder for t, decoder in _validators.items()}


def encode_request(request: object) -> tuple[str, bytes]:
    """One request as its type's name and msgpack (see :func:`decode_request`).

    Raises:
        PayloadError: not a request message, or a field that msgpack cannot hold.
    """
    if type(request) not in _validators:
        raise PayloadError(f"not a duraflow request: {type(request).__name__}")
    try:
        return type(request).__name__, _outbox_encoder.encode(request)
    except (msgspec.EncodeError, TypeError, UnicodeEncodeError) as exc:
        raise PayloadError(f"malformed {type(request).__name__} request: {exc}") from None


def decode_request(name: str, data: bytes) -> object:
    """Decode and check a request encoded by :func:`encode_request`.

    Raises:
        PayloadError: no request type of that name, or a field of the wrong type (named).
    """
    decoder = _by_name.get(name)
    if decoder is None:
        raise PayloadError(f"not a duraflow request: {name!r}")
    try:
        return decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"malformed {name} request: {exc}") from None


def encode_requests(requests: list[Request]) -> bytes:  # type: ignore[valid-type]  # reason: as above
    """A batch of client requests as one msgpack payload (see :func:`decode_requests`)."""
    try:
        return _outbox_encoder.encode(requests)
    except (msgspec.EncodeError, TypeError, UnicodeEncodeError) as exc:
        raise PayloadError(f"malformed request in a batch: {exc}") from None


def decode_requests(data: bytes) -> list[Request]:  # type: ignore[valid-type]  # reason: as above
    """Decode and check a batch of requests (every field against its message type).

    Raises:
        PayloadError: not a list of request messages, or a field of the wrong type (named).
    """
    try:
        return _batch_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"malformed request batch: {exc}") from None


_outbox_decoder: msgspec.msgpack.Decoder[OutboxMessage] = msgspec.msgpack.Decoder(OutboxMessage)  # type: ignore[arg-type]  # reason: Union is a valid decoder type


def encode_outbox(message: OutboxMessage) -> bytes:
    return _outbox_encoder.encode(message)


def decode_outbox(data: bytes) -> OutboxMessage:
    return _outbox_decoder.decode(data)
