"""Client: start workflows, make handles, list runs, subscribe, and query the archive.

Every call has an ``_async`` twin that does the work; the plain method blocks on it
(``duraflow.client.blocking``). The client reaches partitions only through the small
:class:`~duraflow.client.host.Host` protocol, which the in-process host and the Ray host
implement (httpx's transport seam), and sends requests in batches (``duraflow.client.batching``).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

import msgspec

from duraflow.actors import messages as m
from duraflow.actors.router import partition_of
from duraflow.cdc import events as ev
from duraflow.cdc.events import AnyEvent, decode_event
from duraflow.cdc.subscribers import Subscription
from duraflow.client.batching import Batcher, retrieved
from duraflow.client.blocking import BlockingRunner
from duraflow.client.handle import NO_PAYLOAD, WorkflowHandle, update_fields, update_outcome
from duraflow.client.handle import _check_name as check_handler_name
from duraflow.client.host import Host
from duraflow.engine import run_options, search_attributes
from duraflow.engine.definitions import check_name, find_workflow, workflow_definition
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.payloads import encode_args, workflow_types
from duraflow.engine.retry import Duration, RetryPolicy, parse_duration
from duraflow.errors import ConfigurationError, QueryError
from duraflow.storage.codec import encode, join

T = TypeVar("T")


class ArchiveAccess(Protocol):
    """The archive as a client reads it (``duraflow.storage.query.ArchiveReader``, wired by
    duraflow.runtime: the client does not import storage's archive modules)."""

    def open(self, live: list[dict[str, Any]], *, own_database: bool = False) -> Any:
        """A DuckDB session over the archive's views, with ``live`` as ``live_workflows``
        (on a database of its own with ``own_database``). Its ``.sql()`` and
        ``.fetch_arrow()`` run read-only SQL only."""

    def run_events(self, workflow_id: str, run_id: str | None) -> list[bytes]:
        """The encoded events of a closed run in the archive (the latest closed run of the
        ID when ``run_id`` is None), in order; empty when the archive has none."""


_connector: Callable[[str, str], tuple[Host, ArchiveAccess | None]] | None = None
"""Makes the host of a running deployment; set by duraflow.runtime, the composition root
(the client does not import the hosts)."""


def _start_payload(workflow: Callable[..., Any] | str, args: Any) -> tuple[str, str, bytes]:
    """(type name, code ref, encoded arguments) of a start: from the definition when this
    process has it, else the bare name (the partition resolves it and checks the arguments
    against the workflow's annotations)."""
    if isinstance(workflow, str) and find_workflow(workflow) is None:
        name = check_name(workflow, "workflow type name")
        assert name is not None
        role = f"workflow {name!r}"
        parts = [encode(v, f"argument {i} of {role}") for i, v in enumerate(args)]
        return name, "", join(parts)
    definition = workflow_definition(workflow)
    data = encode_args(workflow_types(definition), args, f"workflow {definition.name!r}")
    return definition.name, definition.code_ref, data


def _start_request(
    workflow: Callable[..., Any] | str,
    args: Any,
    workflow_id: str | None,
    id_conflict: m.IdConflict = "fail",
    **options: Any,
) -> m.Start:
    """A client's ``Start`` of a new run (its ID and run ID random unless given), checked.

    Raises:
        UnknownWorkflowType, InvalidWorkflowId, PayloadError, ConfigurationError,
        InvalidDuration: as ``Client.start_async`` says.
    """
    workflow_type, code_ref, data = _start_payload(workflow, args)
    workflow_id = uuid.uuid4().hex if workflow_id is None else check_workflow_id(workflow_id)
    if id_conflict not in m.ID_CONFLICT_POLICIES:
        raise ConfigurationError(
            f"id_conflict must be one of {m.ID_CONFLICT_POLICIES}, got {id_conflict!r}"
        )
    return m.Start(
        workflow_id=workflow_id,
        workflow_type=workflow_type,
        code_ref=code_ref,
        args=data,
        id_conflict=id_conflict,
        run_id=uuid.uuid4().hex,
        options=run_options.make(**options),
    )


def set_connector(connector: Callable[[str, str], tuple[Host, ArchiveAccess | None]]) -> None:
    """Install how :meth:`Client.connect` reaches a deployment (called by duraflow.runtime)."""
    global _connector  # reason: one process-wide seam, set once at import
    _connector = connector


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
            raise RuntimeError("import duraflow (not duraflow.client alone) to connect")
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

    async def _result(
        self,
        workflow_id: str,
        run_id: str | None,
        registration: asyncio.Future[Any] | None = None,
    ) -> m.Outcome:
        check_workflow_id(workflow_id)
        partition = partition_of(workflow_id, self._host.partitions)
        return await self._batcher.result(partition, workflow_id, run_id, registration)

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
        execution_timeout: Duration | None = None,
        run_timeout: Duration | None = None,
        retry: RetryPolicy | None = None,
        start_delay: Duration | None = None,
        search_attributes: dict[str, Any] | None = None,
    ) -> WorkflowHandle:
        """Start a workflow run; returns once its start is durable.

        Args:
            workflow: an ``@workflow`` function, or a workflow type name: one this process
                has not imported is resolved by the partition (a served deployment's
                ``--app`` modules), so any client can start any served type.
            workflow_id: the ID (default: a random UUID). IDs are data: any string without
                control characters, up to 1,000 bytes.
            id_conflict: when the ID's latest run is still open: ``"fail"`` (default, raises
                WorkflowAlreadyRunning), ``"use_existing"`` (returns its handle) or
                ``"terminate_existing"``.
            execution_timeout: the whole chain of runs (continue-as-new, retries) must close
                within this; else the open run closes as ``timed_out``.
            run_timeout: each run must close within this (counted from when its code
                starts); else it closes as ``timed_out`` (and ``retry`` may start another).
            retry: a workflow-level RetryPolicy: a failed (or run-timed-out) run is followed
                by a new run of the same ID after the policy's backoff
                (``ctx.info.attempt`` counts).
            start_delay: the run's code starts this much later (a durable timer).
            search_attributes: typed values (str, int, float, bool, datetime) to find the
                run by (``list(search=...)``).

        Returns:
            A handle that follows the ID's chain of runs from this one.

        Raises:
            UnknownWorkflowType: no such type here nor at the partition (the message names
                what is registered there). InvalidWorkflowId, PayloadError,
                WorkflowAlreadyRunning.
            InvalidDuration, ConfigurationError: a bad run option (named).
        """
        request = _start_request(
            workflow,
            args,
            workflow_id,
            id_conflict,
            execution_timeout=execution_timeout,
            run_timeout=run_timeout,
            retry=retry,
            start_delay=start_delay,
            search_attributes=search_attributes,
        )
        workflow_id = request.workflow_id
        return self._started(workflow_id, await self._call(workflow_id, request))

    def _started(self, workflow_id: str, reply: m.StartReply) -> WorkflowHandle:
        handle = WorkflowHandle(self, workflow_id, reply.run_id, follow=True)
        handle.first_run_id = reply.first_run_id or reply.run_id
        return handle

    def start(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        id_conflict: m.IdConflict = "fail",
        execution_timeout: Duration | None = None,
        run_timeout: Duration | None = None,
        retry: RetryPolicy | None = None,
        start_delay: Duration | None = None,
        search_attributes: dict[str, Any] | None = None,
    ) -> WorkflowHandle:
        """Blocking twin of :meth:`start_async`."""
        return self._block(
            self.start_async(
                workflow,
                *args,
                workflow_id=workflow_id,
                id_conflict=id_conflict,
                execution_timeout=execution_timeout,
                run_timeout=run_timeout,
                retry=retry,
                start_delay=start_delay,
                search_attributes=search_attributes,
            )
        )

    # -- with-start (DESIGN section 5): one request, one turn at the owning partition --------

    async def signal_with_start_async(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str,
        signal: str,
        payload: Any = None,
        request_id: str | None = None,
    ) -> WorkflowHandle:
        """Signal the open run of ``workflow_id``, starting it with ``args`` first if it has
        none, in one step: however many callers race, one run is started and every signal
        reaches it. Returns its handle once the signal (and the start) are durable.

        Args:
            request_id: makes the signal idempotent across resends (as for ``signal``).

        Raises:
            UnknownWorkflowType, InvalidWorkflowId, PayloadError.
            WorkflowClosed: the run it started closed before taking the signal.
        """
        start = _start_request(workflow, args, workflow_id)
        check_handler_name(signal, "signal name")
        request = m.SignalWithStart(
            workflow_id=workflow_id,
            start=start,
            name=signal,
            payload=encode(payload, f"payload of signal {signal!r}"),
            request_id=request_id or uuid.uuid4().hex,
        )
        reply: m.StartReply = await self._call(workflow_id, request)
        return WorkflowHandle(self, workflow_id, reply.run_id or None)

    def signal_with_start(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str,
        signal: str,
        payload: Any = None,
        request_id: str | None = None,
    ) -> WorkflowHandle:
        """Blocking twin of :meth:`signal_with_start_async`."""
        return self._block(
            self.signal_with_start_async(
                workflow,
                *args,
                workflow_id=workflow_id,
                signal=signal,
                payload=payload,
                request_id=request_id,
            )
        )

    async def update_with_start_async(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str,
        update: str,
        payload: Any = NO_PAYLOAD,
        timeout: Duration | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Update the open run of ``workflow_id``, starting it with ``args`` first if it has
        none, in one step (one run however many callers race); returns the update handler's
        result once it is durable, as :meth:`WorkflowHandle.update` does (same errors).

        Args:
            timeout: give up waiting after this long (UpdateTimeout).
            request_id: makes the update exactly once across resends.
        """
        start = _start_request(workflow, args, workflow_id)
        fields = update_fields(update, payload, request_id)
        seconds = None if timeout is None else parse_duration(timeout, "timeout")
        request = m.UpdateWithStart(workflow_id=workflow_id, start=start, **fields)
        return await update_outcome(self, request, update, seconds)

    def update_with_start(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str,
        update: str,
        payload: Any = NO_PAYLOAD,
        timeout: Duration | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Blocking twin of :meth:`update_with_start_async`."""
        return self._block(
            self.update_with_start_async(
                workflow,
                *args,
                workflow_id=workflow_id,
                update=update,
                payload=payload,
                timeout=timeout,
                request_id=request_id,
            )
        )

    async def execute_async(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Start a workflow and wait for its result: the start and the wait for its result
        travel together (one call, one turn), as ``start_async`` then ``result_async`` would
        take two."""
        request = _start_request(workflow, args, workflow_id)
        workflow_id = request.workflow_id
        partition = partition_of(workflow_id, self._host.partitions)
        sent, registration = self._batcher.call_and_register(
            partition, request, workflow_id, request.run_id
        )
        outcome = asyncio.ensure_future(self._result(workflow_id, request.run_id, registration))
        outcome.add_done_callback(retrieved)
        try:
            reply: m.StartReply = await sent
            handle = self._started(workflow_id, reply)
            return await handle._result_of(timeout, outcome)  # the run it started: "fail"
        finally:
            outcome.cancel()  # done already, unless the start failed or the wait gave up

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
        self,
        status: str | None = None,
        workflow_type: str | None = None,
        limit: int = 1000,
        *,
        search: dict[str, Any] | None = None,
    ) -> list[m.WorkflowDescription]:
        """Runs across all partitions, newest first, filtered by status, type and search
        attributes (``search``: every key must have that value); each as ``describe()``
        gives it (``stuck``, ``history_length``, ``pending_activities``,
        ``search_attributes``).

        Raises:
            ConfigurationError: a bad ``search`` key or value (named).
        """
        if search is not None:
            search = search_attributes.check(search, "search")
        request = m.ListWorkflows(
            status=status, workflow_type=workflow_type, limit=limit, search=search
        )
        parts = await asyncio.gather(
            *(self._host.call(p, request) for p in range(self._host.partitions))
        )
        merged = [d for part in parts for d in part]
        merged.sort(key=lambda d: d.start_time, reverse=True)
        return merged[:limit]

    def list(
        self,
        status: str | None = None,
        workflow_type: str | None = None,
        limit: int = 1000,
        *,
        search: dict[str, Any] | None = None,
    ) -> list[m.WorkflowDescription]:
        """Blocking twin of :meth:`list_async`."""
        return self._block(self.list_async(status, workflow_type, limit, search=search))
