"""WorkflowHandle: signal, query, cancel, terminate, result, history and describe one run;
pause, unpause and reset it.

A handle reaches its partition through the Client that made it (routing, batching and the
blocking runner live there); a closed run that has left its partition is read from the archive.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import msgspec

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.cdc.events import AnyEvent, decode_event
from duraflow.description import describe_closed_run
from duraflow.engine.retry import Duration, parse_duration
from duraflow.errors import (
    PayloadError,
    QueryTimeout,
    ResetError,
    ResultTimeout,
    UpdateFailed,
    UpdateTimeout,
    WorkflowCancelledError,
    WorkflowClosed,
    WorkflowFailedError,
    WorkflowNotFound,
    WorkflowTerminatedError,
    WorkflowTimedOutError,
)
from duraflow.storage.codec import decode, encode

T = TypeVar("T")

NO_PAYLOAD: Any = object()
"""``update(name)`` without a payload: the handler is called with no argument."""


class HandleOwner(Protocol):
    """What a handle uses of the :class:`~duraflow.Client` that made it (the Client
    implements it; declared here so that this module does not import the client's)."""

    async def _call(self, workflow_id: str, request: Any) -> Any:
        """The reply of the partition owning ``workflow_id`` to ``request``."""

    async def _result(self, workflow_id: str, run_id: str | None) -> m.Outcome:
        """How the run closed, once it has."""

    async def _archived_run(self, workflow_id: str, run_id: str | None) -> list[AnyEvent] | None:
        """The events of a closed run found in the archive (None if none, or no archive)."""

    def _block(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's blocking runner and return its result."""


class WorkflowHandle:
    """Points at one workflow ID (and, when known, one run of it).

    Handles are cheap: :meth:`Client.get_handle` makes one without any I/O. With ``run_id``
    None, calls go to the latest run of the ID. ``result()`` follows the ID's chain of runs
    (continue-as-new, workflow retries) to the last one; a handle from ``start`` (``follow``)
    also sends its other calls to the newest run of its chain (``run_id`` moves along).
    """

    def __init__(
        self,
        client: HandleOwner,
        workflow_id: str,
        run_id: str | None = None,
        *,
        follow: bool = False,
    ) -> None:
        self._client = client
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.first_run_id = run_id
        """The first run of the chain this handle follows (``run_id`` moves along it)."""
        self._follow = follow

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r}, run_id={self.run_id!r})"

    async def _call(self, request: Any) -> Any:
        while True:
            try:
                return await self._client._call(self.workflow_id, request)
            except WorkflowClosed:
                run_id = getattr(request, "run_id", None)
                newest = await self._newest_of_chain() if self._follow else None
                if newest is None or newest == run_id:
                    raise
                self.run_id = newest
                request = msgspec.structs.replace(request, run_id=newest)

    async def _newest_of_chain(self) -> str | None:
        """The newest run of this handle's chain: the ID's latest run when it belongs to it
        (one call, however long the chain), else None (a later start of the ID began
        another chain)."""
        request = m.Describe(workflow_id=self.workflow_id, run_id=None)
        latest: m.WorkflowDescription = await self._call_or_archive(
            self._client._call(self.workflow_id, request), describe_closed_run, latest=True
        )
        return latest.run_id if latest.first_run_id == self.first_run_id else None

    async def _call_or_archive(
        self,
        calling: Awaitable[Any],
        from_archive: Callable[[list[AnyEvent]], Any],
        run_id: str | None = None,
        *,
        latest: bool = False,
    ) -> Any:
        """The reply ``calling`` awaits from the partition; for a closed run that has left the
        partition (WorkflowNotFound there: archived and past its retention), ``from_archive``
        of its events in the archive. An archive that cannot be read raises its own error."""
        try:
            return await calling
        except WorkflowNotFound as exc:
            if not exc.maybe_archived:  # the partition never let a run go: none to look up
                raise
            wanted = None if latest else run_id or self.run_id
            events = await self._client._archived_run(self.workflow_id, wanted)
            if events is None:
                raise
            return from_archive(events)

    async def signal_async(
        self, name: str, payload: Any = None, *, request_id: str | None = None
    ) -> None:
        """Append a signal durably; returns once the owning partition committed it.

        Args:
            request_id: makes the signal idempotent: a signal whose request ID was already
                accepted is not appended again. Pass your own when you may resend after an
                error (e.g. PartitionUnavailable); by default each call gets a fresh one.

        Raises:
            WorkflowNotFound, WorkflowClosed: no open run to signal.
            PayloadError: ``payload`` cannot be encoded.
        """
        _check_text(name, "signal name")
        if request_id is not None:
            _check_text(request_id, "request_id")
        data = encode(payload, f"payload of signal {name!r}")
        request = m.Signal(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            name=name,
            payload=data,
            request_id=request_id or uuid.uuid4().hex,
        )
        await self._call(request)

    def signal(self, name: str, payload: Any = None, *, request_id: str | None = None) -> None:
        """Blocking twin of :meth:`signal_async`."""
        self._client._block(self.signal_async(name, payload, request_id=request_id))

    async def query_async(self, name: str, *args: Any, timeout: Duration | None = None) -> Any:
        """Ask the run's query handler ``name``; read-only, writes no history.

        Args:
            timeout: give up after this long (default: wait). A query still queued at its
                partition then is not run at all.

        Raises:
            UnknownQuery: the run has no such handler. WorkflowClosed: the run closed.
            QueryFailed: the handler raised, changed the run's state, or blocked its
                partition (README "Rules for workflow code").
            QueryTimeout: ``timeout`` elapsed first (its partition is busy, or the handler
                is slow).

        Note:
            A handler that has started cannot be stopped: the timeout frees the caller, and
            the partition is held until the handler returns.
        """
        seconds = None if timeout is None else parse_duration(timeout, "timeout")
        data = encode(list(args), f"arguments of query {name!r}")
        request = m.Query(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            name=name,
            args=data,
            deadline_us=None if seconds is None else round((time.time() + seconds) * 1e6),
        )
        if seconds is None:
            return decode(await self._call(request))
        try:
            reply = await asyncio.wait_for(self._call(request), seconds)
        except asyncio.TimeoutError:
            raise QueryTimeout(
                f"query {name!r} of workflow {self.workflow_id!r} got no answer within "
                f"{seconds:g}s (its partition is busy, or the handler is slow)"
            ) from None
        return decode(reply)

    def query(self, name: str, *args: Any, timeout: Duration | None = None) -> Any:
        """Blocking twin of :meth:`query_async`."""
        return self._client._block(self.query_async(name, *args, timeout=timeout))

    async def update_async(
        self,
        name: str,
        payload: Any = NO_PAYLOAD,
        *,
        timeout: Duration | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Run the run's update handler ``name`` with ``payload`` and return its result, once
        that result is recorded (durable).

        Args:
            payload: the handler's one argument (none when left out).
            timeout: give up waiting after this long (default: wait).
            request_id: makes the update exactly once: a request ID the run has taken is not
                run again, and its recorded result comes back. Pass your own when you may
                resend (after UpdateTimeout, say); by default each call gets a fresh one.

        Raises:
            UpdateRejected: its validator refused it, or the run has no such handler; nothing
                was recorded.
            UpdateFailed: the handler raised (the run goes on).
            WorkflowClosed: the run is closed, or closed before the handler finished.
            WorkflowNotFound: no such workflow.
            UpdateTimeout: ``timeout`` elapsed first (a TimeoutError); the update may still
                complete: resend it with the same ``request_id`` to get its result.
            PayloadError: ``payload`` cannot be encoded.
        """
        fields = update_fields(name, payload, request_id)
        seconds = None if timeout is None else parse_duration(timeout, "timeout")
        request = m.Update(workflow_id=self.workflow_id, run_id=self.run_id, **fields)
        return await update_outcome(self._client, request, name, seconds)

    def update(
        self,
        name: str,
        payload: Any = NO_PAYLOAD,
        *,
        timeout: Duration | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Blocking twin of :meth:`update_async`."""
        return self._client._block(
            self.update_async(name, payload, timeout=timeout, request_id=request_id)
        )

    async def cancel_async(self, reason: str = "") -> None:
        """Request cancellation: the workflow sees ``asyncio.CancelledError`` and may clean up."""
        _check_text(reason, "cancel reason")
        await self._call(m.Cancel(workflow_id=self.workflow_id, run_id=self.run_id, reason=reason))

    def cancel(self, reason: str = "") -> None:
        """Blocking twin of :meth:`cancel_async`."""
        self._client._block(self.cancel_async(reason))

    async def terminate_async(self, reason: str = "") -> None:
        """Close the run at once, without running any more of its code."""
        _check_text(reason, "terminate reason")
        await self._call(
            m.Terminate(workflow_id=self.workflow_id, run_id=self.run_id, reason=reason)
        )

    def terminate(self, reason: str = "") -> None:
        """Blocking twin of :meth:`terminate_async`."""
        self._client._block(self.terminate_async(reason))

    async def result_async(self, timeout: Duration | None = None) -> Any:
        """Wait for the run to close and return its result (from the archive for a run that
        has left its partition).

        Raises:
            WorkflowNotFound: no such run in the partition or the archive.
            WorkflowFailedError: it failed (``WorkflowCancelledError`` / ``WorkflowTerminatedError``
                / ``WorkflowTimedOutError`` when cancelled, terminated or timed out).

        The run's chain is followed: a run that continued as new, or failed or timed out
        and was retried by its workflow retry policy, gives way to the next one; the result
        is the last run's.
            ResultTimeout: ``timeout`` elapsed first; the run goes on.
        """
        return await self._result_of(timeout)

    async def _result_of(
        self, timeout: Duration | None, first: Awaitable[m.Outcome] | None = None
    ) -> Any:
        """:meth:`result_async`; ``first``, if given, brings the outcome of ``run_id`` (its
        wait registered already, as ``Client.execute_async`` does)."""
        seconds = None if timeout is None else parse_duration(timeout, "timeout")
        waiting = self._final_outcome(first)
        if seconds is None:
            outcome = await waiting
        else:
            try:
                outcome = await asyncio.wait_for(waiting, seconds)
            except asyncio.TimeoutError:
                raise ResultTimeout(
                    f"workflow {self.workflow_id!r} did not close within {seconds}s"
                ) from None
        return _unwrap(outcome)

    async def _final_outcome(self, first: Awaitable[m.Outcome] | None = None) -> m.Outcome:
        """The outcome of the last run of the chain that starts at ``run_id`` (``first``
        brings that run's, if given)."""
        run_id = self.run_id
        while True:
            if first is None:
                first = self._client._result(self.workflow_id, run_id)
            outcome: m.Outcome = await self._call_or_archive(first, _archived_outcome, run_id)
            first = None
            if outcome.next_run_id is None:
                return outcome
            run_id = outcome.next_run_id
            if self._follow:  # jump to the chain's newest run (else walk it run by run)
                run_id = await self._newest_of_chain() or run_id
                self.run_id = run_id

    def result(self, timeout: Duration | None = None) -> Any:
        """Blocking twin of :meth:`result_async`."""
        return self._client._block(self.result_async(timeout))

    async def history_async(self) -> list[AnyEvent]:
        """Every recorded event of the run, in order (see ``duraflow.cdc.events``); from the
        archive for a closed run that has left its partition."""
        request = m.History(workflow_id=self.workflow_id, run_id=self.run_id)
        encoded: list[bytes] | list[AnyEvent] = await self._call_or_archive(
            self._call(request), list
        )
        return [decode_event(e) if isinstance(e, bytes) else e for e in encoded]

    def history(self) -> list[AnyEvent]:
        """Blocking twin of :meth:`history_async`."""
        return self._client._block(self.history_async())

    async def describe_async(self) -> m.WorkflowDescription:
        """Status, type, times, history length and pending activities of the run; from the
        archive for a closed run that has left its partition. A handle from ``start``
        describes the newest run of its chain."""
        while True:
            request = m.Describe(workflow_id=self.workflow_id, run_id=self.run_id)
            result: m.WorkflowDescription = await self._call_or_archive(
                self._call(request), describe_closed_run
            )
            if not (self._follow and result.next_run_id):
                return result
            self.run_id = await self._newest_of_chain() or result.next_run_id

    def describe(self) -> m.WorkflowDescription:
        """Blocking twin of :meth:`describe_async`."""
        return self._client._block(self.describe_async())

    # -- operator controls -------------------------------------------------------------------

    async def pause_async(self, reason: str = "") -> None:
        """Pause the open run: nothing new is dispatched (activity attempts, child starts)
        and timers that fall due wake nothing until :meth:`unpause_async`; signals are still
        taken. Durable (``workflow.paused`` in history); ``describe().paused`` says so.
        Pausing a paused run does nothing.

        Raises:
            WorkflowNotFound, WorkflowClosed: no open run to pause.
        """
        _check_text(reason, "pause reason")
        await self._call(m.Pause(workflow_id=self.workflow_id, run_id=self.run_id, reason=reason))

    def pause(self, reason: str = "") -> None:
        """Blocking twin of :meth:`pause_async`."""
        self._client._block(self.pause_async(reason))

    async def unpause_async(self, reason: str = "") -> None:
        """Unpause the run: what the pause held is dispatched now (each held step once).
        Unpausing a run that is not paused does nothing.

        Raises:
            WorkflowNotFound, WorkflowClosed: no open run.
        """
        _check_text(reason, "unpause reason")
        await self._call(m.Unpause(workflow_id=self.workflow_id, run_id=self.run_id, reason=reason))

    def unpause(self, reason: str = "") -> None:
        """Blocking twin of :meth:`unpause_async`."""
        self._client._block(self.unpause_async(reason))

    async def reset_async(self, to: str | int = "last_failure", reason: str = "") -> str:
        """Start a new run of this workflow ID from the closed run's history, and return its
        run ID (the ID's latest run from now on; a handle without run ID follows it).

        The new run's history is the old run's up to the point before its first failure
        (``to="last_failure"``) or up to and including event ``to`` (an event ID, as
        :meth:`history_async` numbers them): steps completed there are not run again, their
        results replay; the failed step and what follows run again with today's code. Its
        ``workflow.started`` records the run and event it was reset from. Signals recorded
        after that point reach the new run again.

        Raises:
            ResetError: the ID's latest run is still running, the run never failed (with
                ``"last_failure"``), the event ID is out of range, or today's code does not
                replay the copied history.
            WorkflowNotFound: no such run in the partition.
        """
        _check_text(reason, "reset reason")
        if not (to == "last_failure" or (isinstance(to, int) and not isinstance(to, bool))):
            raise ResetError(f"reset to= takes 'last_failure' or an event ID (int), got {to!r}")
        request = m.Reset(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            to=to,
            reason=reason,
            new_run_id=uuid.uuid4().hex,
        )
        reply: m.StartReply = await self._call(request)
        return reply.run_id

    def reset(self, to: str | int = "last_failure", reason: str = "") -> str:
        """Blocking twin of :meth:`reset_async`."""
        return self._client._block(self.reset_async(to, reason))


def update_fields(name: str, payload: Any, request_id: str | None) -> dict[str, Any]:
    """The ``name``, encoded ``args`` and ``request_id`` of an update request, checked.

    Raises:
        PayloadError: an empty or non-text name, a request ID that is not text, a payload
            that cannot be encoded.
    """
    _check_name(name, "update name")
    if request_id is not None:
        _check_text(request_id, "request_id")
    args = [] if payload is NO_PAYLOAD else [payload]
    return {
        "name": name,
        "args": encode(args, f"payload of update {name!r}"),
        "request_id": request_id or uuid.uuid4().hex,
    }


def _check_text(value: object, what: str) -> None:
    """Names and reasons are recorded in history as UTF-8 ``str``; refuse anything else here,
    before it can reach (and be stored by, or fail the turn of) a partition."""
    if not isinstance(value, str):
        raise PayloadError(f"{what} must be a str, got {type(value).__name__} {value!r:.60}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(f"{what} {value!r:.60} is not valid UTF-8 (lone surrogate)") from None


def _check_name(value: object, what: str) -> None:
    """A handler's name: non-empty text (see :func:`_check_text`)."""
    _check_text(value, what)
    if not value:
        raise PayloadError(f"{what} must not be empty")


def _unwrap(outcome: m.Outcome) -> Any:
    if outcome.status == "completed":
        return decode(outcome.result)
    error_class: type[WorkflowFailedError] = {
        "cancelled": WorkflowCancelledError,
        "terminated": WorkflowTerminatedError,
        "timed_out": WorkflowTimedOutError,
    }.get(outcome.status, WorkflowFailedError)
    raise error_class(
        outcome.workflow_id,
        outcome.run_id,
        outcome.status,
        outcome.error_type or "",
        outcome.error_message or "",
    )


async def update_outcome(owner: HandleOwner, request: Any, name: str, seconds: float | None) -> Any:
    """Send ``request`` (an ``Update`` or ``UpdateWithStart``) and wait for the update's
    outcome: in the reply when the handler finished in the same turn, else by awaiting its
    key (the client's batched, mailbox-collected ``AwaitResult``)."""

    async def round_trip() -> m.Outcome:
        outcome: m.Outcome = await owner._call(request.workflow_id, request)
        if outcome.status == "accepted":
            outcome = await owner._result(request.workflow_id, outcome.run_id)
        return outcome

    if seconds is None:
        outcome = await round_trip()
    else:
        try:
            outcome = await asyncio.wait_for(round_trip(), seconds)
        except asyncio.TimeoutError:
            raise UpdateTimeout(
                f"update {name!r} of workflow {request.workflow_id!r} got no result within "
                f"{seconds:g}s; resend it with request_id={request.request_id!r} to get its "
                "result (it runs once)"
            ) from None
    if outcome.status == "completed":
        return decode(outcome.result)
    if outcome.status == "closed":
        raise WorkflowClosed(outcome.error_message or "the run closed")
    raise UpdateFailed(name, outcome.error_type or "", outcome.error_message or "")


def _archived_outcome(events: list[AnyEvent]) -> m.Outcome:
    """How an archived run closed (what its partition answered ``AwaitResult`` with)."""
    closing = ev.last_closing(events)
    status, error_type, error_message, result = ev.run_closing(closing)
    return m.Outcome(
        events[0].workflow_id,
        events[0].run_id,
        status,
        result,
        error_type,
        error_message,
        ev.next_run(closing),
    )
