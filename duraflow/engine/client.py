"""Client and WorkflowHandle: start, signal, query, cancel, terminate, result, describe, list.

Every call has an ``_async`` twin that does the work; the plain method blocks on it. The client
reaches partitions only through the small :class:`Host` protocol, which the in-process host
and the Ray host implement (httpx's transport seam).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

import msgspec

from duraflow.actors import messages as m
from duraflow.actors.router import partition_of
from duraflow.cdc import events as ev
from duraflow.cdc.events import AnyEvent, decode_event
from duraflow.cdc.subscribers import Subscription
from duraflow.engine.batching import Batcher
from duraflow.engine.definitions import Duration, parse_duration, workflow_definition
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.payloads import encode_args, workflow_types
from duraflow.errors import (
    ConfigurationError,
    PartitionUnavailable,
    PayloadError,
    QueryError,
    QueryTimeout,
    ResultTimeout,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotFound,
    WorkflowTerminatedError,
)
from duraflow.loop_thread import LoopThread
from duraflow.storage.codec import decode, encode

T = TypeVar("T")
RUNNER_CLOSE_WAIT_S = 5.0
"""How long closing a client waits for its loop's tasks to end, then for its thread."""


class Host(Protocol):
    """Where partitions live. Calls may be awaited from any event loop."""

    partitions: int

    async def call(self, partition: int, request: Any) -> Any: ...

    async def call_batch(self, partition: int, requests: list[Any]) -> list[Any]:
        """Replies to ``requests`` handled in one turn, an error in place of each failure."""


class ArchiveAccess(Protocol):
    """The archive as a client reads it (``duraflow.storage.query.ArchiveReader``, wired by
    duraflow.runtime: the engine layer does not import storage)."""

    def open(self, live: list[dict[str, Any]], *, own_database: bool = False) -> Any:
        """A DuckDB session over the archive's views, with ``live`` as ``live_workflows``
        (on a database of its own with ``own_database``). Its ``.sql()`` and
        ``.fetch_arrow()`` run read-only SQL only."""

    def run_events(self, workflow_id: str, run_id: str | None) -> list[bytes]:
        """The encoded events of a closed run in the archive (the latest closed run of the
        ID when ``run_id`` is None), in order; empty when the archive has none."""


_connector: Callable[[str, str], tuple[Host, ArchiveAccess | None]] | None = None
"""Makes the host of a running deployment; set by duraflow.runtime, the composition root
(the engine layer does not import the hosts)."""


def set_connector(connector: Callable[[str, str], tuple[Host, ArchiveAccess | None]]) -> None:
    """Install how :meth:`Client.connect` reaches a deployment (called by duraflow.runtime)."""
    global _connector  # reason: one process-wide seam, set once at import
    _connector = connector


class BlockingRunner:
    """Runs the async twins for the blocking API on one private background loop."""

    def __init__(self) -> None:
        self._loop_thread = LoopThread("duraflow-client")
        self._closing = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._loop_thread.run(coro)
        except concurrent.futures.CancelledError:
            if not self._closing:
                raise
            raise PartitionUnavailable(
                "the client was closed (client.close() or engine.close()) while this call "
                "waited for a partition"
            ) from None

    def close(self) -> None:
        """End what still runs on the loop, then stop the loop and its thread
        (:meth:`LoopThread.stop`)."""
        self._closing = True
        self._loop_thread.stop(RUNNER_CLOSE_WAIT_S)


class WorkflowHandle:
    """Points at one workflow ID (and, when known, one run of it).

    Handles are cheap: :meth:`Client.get_handle` makes one without any I/O. With ``run_id``
    None, calls go to the latest run of the ID.
    """

    def __init__(self, client: Client, workflow_id: str, run_id: str | None = None) -> None:
        self._client = client
        self.workflow_id = workflow_id
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r}, run_id={self.run_id!r})"

    async def _call(self, request: Any) -> Any:
        return await self._client._call(self.workflow_id, request)

    async def _call_or_archive(
        self, calling: Awaitable[Any], from_archive: Callable[[list[AnyEvent]], Any]
    ) -> Any:
        """The reply ``calling`` awaits from the partition; for a closed run that has left the
        partition (WorkflowNotFound there: archived and past its retention), ``from_archive``
        of its events in the archive. An archive that cannot be read raises its own error."""
        try:
            return await calling
        except WorkflowNotFound as exc:
            if not exc.maybe_archived:  # the partition never let a run go: none to look up
                raise
            events = await self._client._archived_run(self.workflow_id, self.run_id)
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
                when cancelled or terminated).
            ResultTimeout: ``timeout`` elapsed first; the run goes on.
        """
        seconds = None if timeout is None else parse_duration(timeout, "timeout")
        waiting = self._call_or_archive(
            self._client._result(self.workflow_id, self.run_id), _archived_outcome
        )
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
        archive for a closed run that has left its partition."""
        request = m.Describe(workflow_id=self.workflow_id, run_id=self.run_id)
        result: m.WorkflowDescription = await self._call_or_archive(
            self._call(request), _archived_description
        )
        return result

    def describe(self) -> m.WorkflowDescription:
        """Blocking twin of :meth:`describe_async`."""
        return self._client._block(self.describe_async())


def _check_text(value: object, what: str) -> None:
    """Names and reasons are recorded in history as UTF-8 ``str``; refuse anything else here,
    before it can reach (and be stored by, or fail the turn of) a partition."""
    if not isinstance(value, str):
        raise PayloadError(f"{what} must be a str, got {type(value).__name__} {value!r:.60}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(f"{what} {value!r:.60} is not valid UTF-8 (lone surrogate)") from None


def _unwrap(outcome: m.Outcome) -> Any:
    if outcome.status == "completed":
        return decode(outcome.result)
    error_class: type[WorkflowFailedError] = {
        "cancelled": WorkflowCancelledError,
        "terminated": WorkflowTerminatedError,
    }.get(outcome.status, WorkflowFailedError)
    raise error_class(
        outcome.workflow_id,
        outcome.run_id,
        outcome.status,
        outcome.error_type or "",
        outcome.error_message or "",
    )


def _closing(events: list[AnyEvent]) -> tuple[str, str | None, str | None, bytes | None]:
    """(status, error type, error message, result) of a closed run's events, as its
    partition recorded them when it closed."""
    for event in reversed(events):
        if isinstance(event, ev.WorkflowCompleted):
            return "completed", None, None, event.result
        if isinstance(event, ev.WorkflowFailed):
            return "failed", event.error_type, event.error_message, None
        if isinstance(event, ev.WorkflowCancelled):
            return "cancelled", "CancelledError", event.reason or "cancelled", None
        if isinstance(event, ev.WorkflowTerminated):
            return "terminated", "Terminated", event.reason or "terminated", None
    raise ValueError("the run has no closing event")


def _archived_outcome(events: list[AnyEvent]) -> m.Outcome:
    """How an archived run closed (what its partition answered ``AwaitResult`` with)."""
    status, error_type, error_message, result = _closing(events)
    return m.Outcome(
        events[0].workflow_id, events[0].run_id, status, result, error_type, error_message
    )


def _archived_description(events: list[AnyEvent]) -> m.WorkflowDescription:
    """An archived run described as its partition described it once closed."""
    started = events[0]
    status, error_type, error_message, _ = _closing(events)
    closed_at = next(e.at_us for e in reversed(events) if isinstance(e, ev.CLOSING))

    def when(us: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(us / 1e6, tz=dt.timezone.utc)

    return m.WorkflowDescription(
        workflow_id=started.workflow_id,
        run_id=started.run_id,
        workflow_type=started.workflow_type,
        status=status,
        start_time=when(started.at_us),
        close_time=when(closed_at),
        parent_workflow_id=started.parent_id if isinstance(started, ev.WorkflowStarted) else None,
        history_length=max(e.event_id for e in events),
        error_type=error_type,
        error_message=error_message,
        partition=started.partition,
    )


class Client:
    """Starts workflows and makes handles. Get one from ``Engine.client()``."""

    def __init__(
        self, host: Host, runner: BlockingRunner, archive: ArchiveAccess | None = None
    ) -> None:
        self._host = host
        self._batcher = Batcher(host)
        self._runner = runner
        self._archive = archive
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._subscriptions_lock = threading.Lock()  # subscribe and close, from any thread

    @classmethod
    def connect(cls, address: str = "auto", *, namespace: str = "duraflow") -> Client:
        """A client of a deployment already running on a Ray cluster (``duraflow serve``, or
        an engine in another driver), from any Ray driver.

        Raises:
            PartitionUnavailable: no deployment in that namespace.
        """
        if _connector is None:
            raise RuntimeError("import duraflow (not duraflow.engine.client alone) to connect")
        host, archive = _connector(address, namespace)
        return cls(host, BlockingRunner(), archive)

    def close(self) -> None:
        """Close every subscription of this client (their readers' loops end), then stop its
        background loop (an engine's client closes with the engine). Idempotent."""
        with self._subscriptions_lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
        self._runner.close()

    def _block(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    async def _call(self, workflow_id: str, request: Any) -> Any:
        check_workflow_id(workflow_id)
        partition = partition_of(workflow_id, self._host.partitions)
        return await self._batcher.call(partition, request)

    async def _result(self, workflow_id: str, run_id: str | None) -> m.Outcome:
        check_workflow_id(workflow_id)
        partition = partition_of(workflow_id, self._host.partitions)
        return await self._batcher.result(partition, workflow_id, run_id)

    async def _archived_run(self, workflow_id: str, run_id: str | None) -> list[AnyEvent] | None:
        """The events of a closed run found in the archive (None if none, or no archive)."""
        if self._archive is None:
            return None
        encoded = await asyncio.to_thread(self._archive.run_events, workflow_id, run_id)
        events = [decode_event(data) for data in encoded]
        if not events or not any(isinstance(e, ev.CLOSING) for e in events):
            return None
        return events

    async def start_async(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        id_conflict: m.IdConflict = "fail",
    ) -> WorkflowHandle:
        """Start a workflow run; returns once its start is durable.

        Args:
            workflow: an ``@workflow`` function or a registered workflow type name.
            workflow_id: the ID (default: a random UUID). IDs are data: any string without
                control characters, up to 1,000 bytes.
            id_conflict: when the ID's latest run is still open: ``"fail"`` (default, raises
                WorkflowAlreadyRunning), ``"use_existing"`` (returns its handle) or
                ``"terminate_existing"``.

        Raises:
            UnknownWorkflowType, InvalidWorkflowId, PayloadError, WorkflowAlreadyRunning.
        """
        definition = workflow_definition(workflow)
        workflow_id = uuid.uuid4().hex if workflow_id is None else check_workflow_id(workflow_id)
        if id_conflict not in m.ID_CONFLICT_POLICIES:
            raise ConfigurationError(
                f"id_conflict must be one of {m.ID_CONFLICT_POLICIES}, got {id_conflict!r}"
            )
        data = encode_args(workflow_types(definition), args, f"workflow {definition.name!r}")
        reply: m.StartReply = await self._call(
            workflow_id,
            m.Start(
                workflow_id=workflow_id,
                workflow_type=definition.name,
                code_ref=definition.code_ref,
                args=data,
                id_conflict=id_conflict,
                run_id=uuid.uuid4().hex,
            ),
        )
        return WorkflowHandle(self, workflow_id, reply.run_id)

    def start(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        id_conflict: m.IdConflict = "fail",
    ) -> WorkflowHandle:
        """Blocking twin of :meth:`start_async`."""
        return self._block(
            self.start_async(workflow, *args, workflow_id=workflow_id, id_conflict=id_conflict)
        )

    async def execute_async(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Start a workflow and wait for its result."""
        handle = await self.start_async(workflow, *args, workflow_id=workflow_id)
        return await handle.result_async(timeout)

    def execute(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Blocking twin of :meth:`execute_async`."""
        return self._block(
            self.execute_async(workflow, *args, workflow_id=workflow_id, timeout=timeout)
        )

    def get_handle(self, workflow_id: str, run_id: str | None = None) -> WorkflowHandle:
        """A handle to an existing workflow ID (its latest run unless ``run_id`` is given)."""
        return WorkflowHandle(self, check_workflow_id(workflow_id), run_id)

    def subscribe(
        self,
        event_types: list[str] | tuple[str, ...] | None = None,
        *,
        workflow_type: str | None = None,
        workflow_id: str | None = None,
        from_: str | Mapping[int, int] = "latest",
        buffer: int = 1000,
    ) -> Subscription:
        """Subscribe to history events (CDC): at least once, in order per partition.

        Args:
            event_types: e.g. ``["workflow.completed"]`` (default: every type).
            workflow_type, workflow_id: only events of these workflows.
            from_: ``"latest"`` (events committed after this call returns; default),
                ``"earliest"`` (everything still in the partitions) or
                ``subscription.offsets`` saved earlier, to resume.
            buffer: events held for a slow reader; when full, reading from partitions pauses
                (workflows are never slowed down).

        Returns:
            A Subscription: iterate it with ``for`` or ``async for``; ``.offsets`` says where it
            is. Close it when done (``close()``, or ``with`` / ``async with``); one that nothing
            refers to any more (a ``for`` loop over ``client.subscribe()`` left early) closes
            itself, and ``client.close()`` / ``engine.close()`` close every one.
        """
        subscription = Subscription(
            self._host,
            self._runner,
            event_types=event_types,
            workflow_type=workflow_type,
            workflow_id=workflow_id,
            from_=from_,
            buffer=buffer,
        )
        with self._subscriptions_lock:
            self._subscriptions.add(subscription)
        return subscription

    def duckdb(self) -> Any:
        """A DuckDB session over the archive: views ``history``, ``workflows`` and
        ``activities`` (archived and warm rows, each once) and ``live_workflows`` (runs in
        the partitions now). ``.sql(query, params)`` runs read-only SQL as :meth:`sql` does
        and gives DuckDB's relation; ``.fetch_arrow(query, params)`` a pyarrow Table. Close
        it when done (it is a context manager).

        Note:
            ``.con`` is the session's raw DuckDB connection, for your own code: the
            statement check of ``.sql()`` does not apply to it, so never run others' SQL on
            it. Its database is the session's own (what you create there goes with it),
            reads files only in the archive's data folders, and its settings are locked.

        Raises:
            ConfigurationError: the engine was made with ``archive=False``.
        """
        return self._session(with_live=True, own_database=True)

    def _session(self, with_live: bool, own_database: bool = False) -> Any:
        if self._archive is None:
            raise ConfigurationError(
                "this client has no archive to query: open the engine with archive=True "
                "(the default)"
            )
        # Listing every partition's runs costs a call to each; only pay it when asked for.
        runs = self.list(limit=1_000_000) if with_live else []
        live = [msgspec.structs.asdict(d) for d in runs]
        return self._archive.open(live, own_database=own_database)

    def sql(self, query: str, params: Any = None) -> Any:
        """Run read-only SQL over the archive and live runs (see :meth:`duckdb` for the
        views); ``?`` parameters bind ``params``. Returns a pyarrow Table.

        Only ``SELECT``, ``WITH``, ``EXPLAIN``, ``DESCRIBE``, ``SUMMARIZE`` and ``PIVOT``
        statements run, on a DuckDB database that reads no file but the archive's and whose
        settings are locked: no query writes, or changes what a later one sees.

        Example: ``client.sql("SELECT workflow_type, count(*) FROM workflows GROUP BY 1")``.

        Raises:
            StatementNotAllowed: a statement that does more than read (``COPY``, ``ATTACH``,
                ``SET``, ``CREATE``, ``INSTALL``...); nothing of the query ran.
            QueryError: DuckDB refused or failed the query (its message), or ``query`` is
                not text.
        """
        if not isinstance(query, str):
            raise QueryError(f"an SQL query must be text (str), not {type(query).__name__}")
        with self._session(with_live="live_workflows" in query.lower()) as session:
            return session.fetch_arrow(query, params)

    async def list_async(
        self, status: str | None = None, workflow_type: str | None = None, limit: int = 1000
    ) -> list[m.WorkflowDescription]:
        """Runs across all partitions, newest first, filtered by status and type; each as
        ``describe()`` gives it (``stuck``, ``history_length``, ``pending_activities``)."""
        request = m.ListWorkflows(status=status, workflow_type=workflow_type, limit=limit)
        parts = await asyncio.gather(
            *(self._host.call(p, request) for p in range(self._host.partitions))
        )
        merged = [d for part in parts for d in part]
        merged.sort(key=lambda d: d.start_time, reverse=True)
        return merged[:limit]

    def list(
        self, status: str | None = None, workflow_type: str | None = None, limit: int = 1000
    ) -> list[m.WorkflowDescription]:
        """Blocking twin of :meth:`list_async`."""
        return self._block(self.list_async(status, workflow_type, limit))
