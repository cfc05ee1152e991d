"""Errors raised by duraflow.

DuraflowError
├── InvalidWorkflowId        ID empty, over 1,000 bytes, or has NUL / control characters
├── UnknownWorkflowType      no @workflow of that name is registered or importable
├── UnknownActivity          no @activity of that name is registered or importable
├── NotAnActivityError       ctx.activity() was given something that is not an @activity
├── PayloadError             a value that cannot travel as sent: unencodable, nested deeper than
│                            128 levels, refused by its annotation, or it would change type
├── InvalidDuration          "30s", "24h", "7d" or seconds; anything else
├── WorkflowNotFound         no workflow (or run) with that ID
├── WorkflowAlreadyRunning   start() of an ID whose latest run is still open
├── WorkflowClosed           signal / query / cancel / update of a run that has already closed
├── NoParentWorkflow         ctx.signal_parent / ctx.query_parent in a run that is no child
├── UpdateRejected           the update's validator refused it, or no handler of that name;
│                            nothing was recorded
├── UpdateFailed             the update's handler raised (.cause_type, .cause_message)
├── UnknownQuery             the run has no query handler of that name
├── QueryFailed              the query handler raised
├── NonDeterminismError      replay diverged; names the recorded and the issued command
├── ResetError               reset() of a run still running, that never failed, to an event
│                            out of range, or whose history replays no more
├── WorkflowCodeError        workflow code broke a rule (README "Rules for workflow code"):
│   │                        it started a thread
│   └── WorkflowBlocked      an activation or query handler held its partition past the
│                            deadlock threshold (2 s): time.sleep or blocking I/O?
├── ActivityError            an activity failed for good (.activity, .cause_type, .attempts)
├── ActivityCancelledError   heartbeat() of an attempt no longer wanted (timed out, cancelled)
├── ChildWorkflowError       a child closed without a result (.workflow_id, .cause_type)
├── WorkflowFailedError      result() of a run that failed, was cancelled or terminated
│   ├── WorkflowCancelledError
│   └── WorkflowTerminatedError
├── ResultTimeout            result(timeout=) elapsed first (also a TimeoutError)
├── QueryTimeout             query(timeout=) elapsed first (also a TimeoutError)
├── UpdateTimeout            update(timeout=) elapsed first (also a TimeoutError); the
│                            update may still complete
├── ConfigurationError       bad option values; a data dir that is unusable, damaged, edited,
│                            or copied/moved with an archive naming the original's files
├── QueryError               SQL over the archive that DuckDB refused (its message), or no SQL text
│   └── StatementNotAllowed  a statement that does not only read (COPY, ATTACH, SET, CREATE, ...)
├── RequestFailed            not retriable: the partition could not apply this request (a value
│                            its file cannot hold, or a bug); nothing of it was recorded
└── PartitionUnavailable     retriable: the owning partition is restarting, closed, or its file
    │                        is failing (I/O error, disk full); another try may succeed
    └── PartitionFenced      its file was taken over by a newer owner (a newer epoch): this
                             owner wrote nothing more and stopped; a retry reaches the new one

Workflow code sees cancellation as ``asyncio.CancelledError`` (a BaseException), so a
workflow's ``except Exception`` does not swallow it.
"""

from __future__ import annotations


class DuraflowError(Exception):
    """Root of every error duraflow raises on purpose."""


class InvalidWorkflowId(DuraflowError, ValueError):
    """A workflow ID that is empty, longer than 1,000 bytes, or holds control characters."""


class UnknownWorkflowType(DuraflowError, LookupError):
    """No workflow of that type is registered (or importable from its recorded module)."""


class UnknownActivity(DuraflowError, LookupError):
    """No activity of that name is registered (or importable from its recorded module)."""


class NotAnActivityError(DuraflowError, TypeError):
    """``ctx.activity`` was called with something that is not decorated with ``@activity``."""


class PayloadError(DuraflowError, TypeError):
    """A value that cannot travel as sent: msgspec cannot encode it, it nests deeper than
    ``MAX_PAYLOAD_DEPTH`` (128) levels, its annotation refuses it, or with no annotation it
    would arrive as another type (a set as a list, a datetime as a str). The message names the
    value's role (``argument 'order' of workflow 'checkout'``)."""


class InvalidDuration(DuraflowError, ValueError):
    """A duration that is neither seconds nor a string like ``"30s"``, ``"24h"``, ``"7d"``."""


class WorkflowNotFound(DuraflowError, LookupError):
    """No workflow (or no run) with that workflow ID.

    Attributes:
        maybe_archived: set by a partition that has moved closed runs to the archive, so the
            run may be there (the client then looks it up in the archive).
    """

    maybe_archived: bool = False


class WorkflowAlreadyRunning(DuraflowError):
    """``start`` of a workflow ID whose latest run is still open."""


class WorkflowClosed(DuraflowError):
    """A signal, query, cancel or update sent to a run that has already closed (or an
    update whose run closed before its handler returned)."""


class UpdateRejected(DuraflowError):
    """An update the run refused: its validator raised (the message is the validator's), or
    the run has no update handler of that name. Nothing of it was recorded."""


class UpdateFailed(DuraflowError):
    """The update's handler raised; the run goes on (the failure is recorded).

    Attributes:
        name: the update's name.
        cause_type, cause_message: the error the handler raised.
    """

    def __init__(self, name: str, cause_type: str, cause_message: str) -> None:
        super().__init__(f"update {name!r} failed: {cause_type}: {cause_message}")
        self.name = name
        self.cause_type = cause_type
        self.cause_message = cause_message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.cause_type, self.cause_message))


class NoParentWorkflow(DuraflowError, LookupError):
    """``ctx.signal_parent`` or ``ctx.query_parent`` in a run that no workflow started as its
    child (started by a client, a schedule or the CLI)."""


class UnknownQuery(DuraflowError, LookupError):
    """The run has no query handler of that name."""


class QueryFailed(DuraflowError):
    """The workflow's query handler raised; the message carries its error."""


class NonDeterminismError(DuraflowError):
    """Replayed workflow code issued a different command than its history records."""


class ResetError(DuraflowError):
    """``handle.reset()`` cannot make a new run from that run: the ID's latest run is still
    running, the run never failed (``to="last_failure"``), the event ID is out of range, or
    today's code no longer replays the copied history (the message says which)."""


class WorkflowCodeError(DuraflowError, RuntimeError):
    """Workflow code did what workflow code may not (README "Rules for workflow code"):
    started a thread, for one; raised into the code at the call, so a run that does not
    catch it fails with it (and so would its replay)."""


class WorkflowBlocked(WorkflowCodeError):
    """Workflow code (an activation or a query handler) held its partition longer than the
    deadlock threshold (``deadlock_threshold``, 2 s by default) without an ``await``: a
    ``time.sleep``, blocking I/O or a long computation, during which every other workflow of
    the partition waited. The run is marked stuck (``describe().stuck``) and dropped from
    memory; reopening the engine replays it (fix the code first), or terminate it."""


class ActivityError(DuraflowError):
    """An activity failed for good (retries exhausted, non-retryable error, or timeout).

    Attributes:
        activity: the activity's name.
        cause_type: the type name of the last attempt's error (``"TimeoutError"`` for timeouts).
        cause_message: that error's message.
        attempts: how many attempts were made.
    """

    def __init__(self, activity: str, cause_type: str, cause_message: str, attempts: int) -> None:
        super().__init__(
            f"activity {activity!r} failed after {attempts} attempt(s): "
            f"{cause_type}: {cause_message}"
        )
        self.activity = activity
        self.cause_type = cause_type
        self.cause_message = cause_message
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.activity, self.cause_type, self.cause_message, self.attempts))


class ActivityCancelledError(DuraflowError):
    """Raised by ``heartbeat()`` when this attempt is no longer wanted (timed out, cancelled)."""


class ChildWorkflowError(DuraflowError):
    """A child workflow failed, was cancelled or terminated, or could not start.

    Attributes:
        workflow_id: the child's workflow ID.
        status: ``"failed"``, ``"cancelled"``, ``"terminated"`` or ``"not_started"``.
        cause_type, cause_message: what the child failed with.
    """

    def __init__(self, workflow_id: str, status: str, cause_type: str, cause_message: str) -> None:
        super().__init__(f"child workflow {workflow_id!r} {status}: {cause_type}: {cause_message}")
        self.workflow_id = workflow_id
        self.status = status
        self.cause_type = cause_type
        self.cause_message = cause_message

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.workflow_id, self.status, self.cause_type, self.cause_message)
        return (type(self), args)


class WorkflowFailedError(DuraflowError):
    """``result()`` of a run that did not complete.

    Attributes:
        workflow_id, run_id: the run.
        status: ``"failed"``, ``"cancelled"`` or ``"terminated"``.
        cause_type, cause_message: the error the workflow raised (or the terminate reason).
    """

    def __init__(
        self, workflow_id: str, run_id: str, status: str, cause_type: str, cause_message: str
    ) -> None:
        super().__init__(
            f"workflow {workflow_id!r} (run {run_id}) {status}: {cause_type}: {cause_message}"
        )
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.status = status
        self.cause_type = cause_type
        self.cause_message = cause_message

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.workflow_id, self.run_id, self.status, self.cause_type, self.cause_message)
        return (type(self), args)


class WorkflowCancelledError(WorkflowFailedError):
    """``result()`` of a run that was cancelled."""


class WorkflowTerminatedError(WorkflowFailedError):
    """``result()`` of a run that was terminated."""


class ResultTimeout(DuraflowError, TimeoutError):
    """``result(timeout=...)`` elapsed before the run closed; the run goes on."""


class QueryTimeout(DuraflowError, TimeoutError):
    """``query(timeout=...)`` elapsed before the answer came (the partition was busy, or the
    handler slow). A query that has not started by then is not run at all."""


class UpdateTimeout(DuraflowError, TimeoutError):
    """``update(timeout=...)`` elapsed before the handler's result was durable. The update
    may still be accepted and complete: send it again with the same ``request_id`` to get
    its result (it runs once)."""


class ConfigurationError(DuraflowError, ValueError):
    """An option or a data directory that does not fit: another partition count, a data
    directory that is a file or not writable, a missing, damaged or foreign partition file or
    ``deployment.json``, an archive that names another data directory's files. The message
    names the path."""


class QueryError(DuraflowError, ValueError):
    """SQL over the archive (``client.sql``, ``duraflow sql``) that could not run: DuckDB's
    own error (a syntax error, an unknown column...) with DuckDB's message, or a query that
    is not SQL text. (A workflow's query handler that raises is :class:`QueryFailed`.)"""


class StatementNotAllowed(QueryError):
    """A statement that does more than read: SQL over the archive runs ``SELECT``, ``WITH``,
    ``EXPLAIN``, ``DESCRIBE``, ``SUMMARIZE`` and ``PIVOT`` statements only.

    Attributes:
        statement: the refused statement's type as DuckDB names it (``"COPY"``, ``"ATTACH"``,
            ``"SET"``, ``"CREATE"``, ``"LOAD"`` for ``INSTALL`` and ``LOAD``...).
    """

    def __init__(self, message: str, statement: str) -> None:
        super().__init__(message)
        self.statement = statement

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.args[0], self.statement))


class RequestFailed(DuraflowError):
    """The partition could not apply a request, for a reason that retrying cannot fix: applying
    it raised an error no request should cause (a value its SQLite file cannot hold, such as an
    integer over 64 bits, or a bug in duraflow). Nothing of the request was recorded, and the
    other requests of the same turn were applied as usual.

    (An open run whose own work fails this way is marked stuck instead: ``describe().stuck``
    says why, and the run waits there until it is repaired, rather than failing over and over.)

    Attributes:
        workflow_id: the workflow the request was for ("" if none).
        request: the request's kind (``"start"``, ``"signal"``, ...).
        cause_type, cause_message: the error applying it raised.
    """

    def __init__(self, workflow_id: str, request: str, cause_type: str, cause_message: str) -> None:
        target = f" of workflow {workflow_id!r}" if workflow_id else ""
        super().__init__(
            f"{request}{target} could not be applied, and retrying will fail the same way: "
            f"{cause_type}: {cause_message} (nothing of it was recorded)"
        )
        self.workflow_id = workflow_id
        self.request = request
        self.cause_type = cause_type
        self.cause_message = cause_message

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.workflow_id, self.request, self.cause_type, self.cause_message)
        return (type(self), args)


class PartitionUnavailable(DuraflowError):
    """The owning partition is restarting (another process may still hold its file), closed,
    or its file is failing (an I/O error, a full disk); the call may be retried once it is
    back. A request the partition cannot apply whatever the retries raises
    :class:`RequestFailed` instead."""


class PartitionFenced(PartitionUnavailable):
    """A partition's file was taken over by a newer owner while this one was stalled (stopped,
    frozen, or cut off from its cluster): the file's epoch is newer than the one this owner
    opened it at. The turn that found it was rolled back; this owner writes nothing more and
    stops (README "Fencing"). Retriable: the new owner serves the partition."""
