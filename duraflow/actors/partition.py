"""Partition: the single writer of its workflows' state, one SQLite file, one transaction a turn.

Requests (start, signal, query, ...) and internal happenings (activity outcomes, due timers,
delivered outbox messages) queue in the partition's inbox. A *turn* takes everything queued,
applies it to the resident runs and to SQLite inside one transaction, commits, and only then
replies, dispatches activities and sends messages to other partitions. A crash therefore
loses nothing that was acknowledged, and never runs an activity whose scheduling is not
durable. Runs that are not in memory are rebuilt by replaying their history on demand.

The partition runs on one asyncio loop (its host's) and is never touched from other threads
except through :meth:`Partition.post_threadsafe`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import heapq
import itertools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from duraflow.actors import messages as m
from duraflow.actors.attempts import Attempt, AttemptTable
from duraflow.actors.mailboxes import Mailboxes
from duraflow.actors.partition_activities import ActivityDone, ActivitySteps, Heartbeat
from duraflow.actors.partition_failures import RunBroke, TurnRepair
from duraflow.cdc import events as ev
from duraflow.config import EngineConfig
from duraflow.engine import guard
from duraflow.engine.activities import ActivityExecutor
from duraflow.engine.definitions import resolve_workflow
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.run import PYTHON_VERSION, QueryChangedState, WorkflowRun, rebuild
from duraflow.errors import (
    ConfigurationError,
    DuraflowError,
    PartitionUnavailable,
    PayloadError,
    QueryFailed,
    QueryTimeout,
    UnknownQuery,
    WorkflowAlreadyRunning,
    WorkflowBlocked,
    WorkflowClosed,
    WorkflowNotFound,
)
from duraflow.storage.codec import decode, encode, error_text
from duraflow.storage.deployment import partition_stamp
from duraflow.storage.sqlite_store import (
    PartitionStore,
    TimerRow,
    WorkflowRow,
    is_storage_failure,
)

log = logging.getLogger("duraflow.partition")

Send = Callable[[str, Any], Awaitable[Any]]
"""How a partition reaches the owner of another workflow ID: ``await send(workflow_id, msg)``."""

OUTBOX_RETRY_S = 0.5
PRUNE_BATCH = 1000
"""Closed runs deleted per turn; more are left to the following turns."""
_DEFERRED = object()


class OpenRun:
    """An open run of this partition: its row, and its resident code if in memory."""

    __slots__ = (
        "activity_seqs",
        "last_event_id",
        "mailed",
        "row",
        "run",
        "stuck",
        "timer_seqs",
        "waiters",
    )

    def __init__(self, row: WorkflowRow, last_event_id: int | None) -> None:
        self.row = row
        self.run: WorkflowRun | None = None
        self.last_event_id = last_event_id
        self.stuck: str | None = None
        self.waiters: list[asyncio.Future[Any]] = []
        self.mailed: list[tuple[str, str | None]] = []  # (mailbox, run ID asked for)
        self.timer_seqs: set[int] = set()
        self.activity_seqs: set[int] = set()

    @property
    def key(self) -> tuple[str, str]:
        return (self.row.workflow_id, self.row.run_id)


class _Effects:
    """What a turn does after its commit."""

    __slots__ = ("closed", "dispatch", "replies", "sends")

    def __init__(self) -> None:
        self.replies: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]] = []
        self.dispatch: list[Attempt] = []
        self.sends: list[tuple[int, str, m.OutboxMessage]] = []
        self.closed: list[tuple[OpenRun, m.Outcome]] = []


class _Due(msgspec.Struct):
    pass


class _Delivered(msgspec.Struct):
    outbox_id: int
    message: Any
    error: BaseException | None


class Partition(ActivitySteps, TurnRepair):
    """The single writer of one partition's workflows.

    Args:
        index: this partition's number (0 .. count-1).
        path: its SQLite file.
        config: the deployment's settings (synchronous mode, resident-run cap, hibernation,
            retention).
        executor: where activity attempts run.
        send: reaches the partition owning another workflow ID (children, parents).
        clock: seconds since the epoch; a parameter so tests can step time.
        stepped: ``clock`` moves only when told (``duraflow.testing``): due times are then
            never armed on the loop's wall clock, and the host calls :meth:`clock_moved`
            after each move.
    """

    def __init__(
        self,
        index: int,
        path: Path,
        config: EngineConfig,
        *,
        executor: ActivityExecutor,
        send: Send,
        clock: Callable[[], float] = time.time,
        stepped: bool = False,
    ) -> None:
        self.index = index
        self.config = config
        self._path = path
        self._synchronous = config.synchronous
        self._executor = executor
        self._send = send
        self._clock = clock
        self._stepped = stepped
        self._max_resident = config.max_resident_runs
        self._hibernate_after = config.hibernate_after_s
        self._lru: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None
        self._store: PartitionStore | None = None
        self._open: dict[str, OpenRun] = {}
        self._attempts = AttemptTable()
        self._heap: list[tuple[float, int, str, Any]] = []
        self._counter = itertools.count()
        self._lsn = 0
        self._inbox: list[tuple[Any, asyncio.Future[Any] | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._due_handle: asyncio.TimerHandle | None = None
        self._due_at = float("inf")
        self._fx = _Effects()
        self._closing = False
        self._recovering = False
        self._retention_s = config.retention_s
        self._archived_lsn = 0
        self._pruned = False  # some closed run left this file for the archive
        self._notified_lsn = 0
        self._event_waiters: list[asyncio.Future[None]] = []
        self._mailboxes = Mailboxes()
        self._turn_count = 0
        self._turn_items = 0
        self._watch = guard.Watch(f"partition {index}", config.deadlock_threshold_s)
        self.incarnation = ""
        """Set anew at each open: tells clients the partition restarted (and forgot its
        mailboxes) even when a mailbox of the same name was made again since."""
        self.recovery: dict[str, float] = {}
        """How long opening took (``store_s``, ``load_s``) and the first turn's recovery
        (``recover_s``, ending at ``recovered_at``, epoch seconds): for status and benchmarks."""

    # -- lifetime -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the SQLite file, load open runs, timers and activities, and start turning."""
        self._loop = asyncio.get_running_loop()
        self.incarnation = uuid.uuid4().hex
        self._wake = asyncio.Event()
        began = time.perf_counter()
        stamp = partition_stamp(Path(self.config.data_dir), self.index)
        self._store = PartitionStore(self._path, self._synchronous, stamp=stamp)
        opened = time.perf_counter()
        try:
            self._load()
        except BaseException:
            # A failed open keeps no lock, so a retry in this process can open the file.
            self._store.close()
            self._store = None
            raise
        self.recovery = {"store_s": opened - began, "load_s": time.perf_counter() - opened}
        self._worker = self._loop.create_task(self._turns(), name=f"partition-{self.index}")
        guard.watch(self._watch)
        self._post(_Due(), None)
        if self._hibernate_after is not None:
            self._sweep()

    async def close(self) -> None:
        """Stop turning and close the file; in-flight requests fail as PartitionUnavailable."""
        self._closing = True
        guard.unwatch(self._watch)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._due_handle is not None:
            self._due_handle.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for _, future in self._inbox:
            if future is not None and not future.done():
                future.set_exception(PartitionUnavailable(f"partition {self.index} closed"))
        self._mailboxes.close()
        for open_run in self._open.values():
            for waiter in open_run.waiters:
                if not waiter.done():
                    waiter.set_exception(PartitionUnavailable(f"partition {self.index} closed"))
            if open_run.run is not None:
                open_run.run.discard()
        if self._store is not None:
            self._store.close()

    def _load(self) -> None:
        store = self._db()
        self._lsn = store.max_lsn()
        self._archived_lsn = int(store.get_meta("archived_lsn") or 0)
        self._pruned = store.get_meta("pruned") == "1"
        # Pruned runs take their rows with them; LSNs must still never go back.
        self._lsn = max(self._lsn, self._archived_lsn)
        self._open = {row.workflow_id: OpenRun(row, None) for row in store.open_runs()}
        for timer in store.timers():
            open_run = self._open.get(timer.workflow_id)
            if open_run is not None and open_run.row.run_id == timer.run_id:
                open_run.timer_seqs.add(timer.seq)
                self._push(
                    timer.fire_at_us / 1e6, "timer", (timer.workflow_id, timer.run_id, timer.seq)
                )
        self._recovering = True

    # -- the inbox and turns ------------------------------------------------------------------

    async def handle(self, request: Any) -> Any:
        """Queue a request for the next turn and wait for its reply.

        Raises:
            PayloadError: the request is not a well-formed message (checked here, at the
                boundary, so a malformed request can never reach a turn).
        """
        if self._closing:
            raise PartitionUnavailable(f"partition {self.index} is closed")
        request = m.validated(request)
        if isinstance(request, m.ReadEvents):
            return await self._read_events(request)  # a read of committed rows: no turn
        if isinstance(request, m.CollectResults):
            outcomes = await self._mailboxes.collect(request.mailbox, request.wait_s)
            return m.Mailed(self.incarnation, outcomes or [], known=outcomes is not None)
        future = self._require_loop().create_future()
        self._post(request, future)
        return await future

    async def handle_batch(self, payload: bytes) -> list[Any]:
        """Handle a batch encoded by ``messages.encode_requests`` in one turn: the replies in
        order, an error in place of each request that failed.

        The batch is checked whole before any of it is queued: a malformed one is refused
        and none of its requests runs. ``AwaitResult`` in a batch must name a mailbox (a
        batch never waits on a run).

        Raises:
            PayloadError: malformed (the field named), or an ``AwaitResult`` without mailbox.
            PartitionUnavailable: the partition is closed.
        """
        requests = m.decode_requests(payload)
        if any(isinstance(r, m.AwaitResult) and r.mailbox is None for r in requests):
            raise PayloadError("AwaitResult in a batch needs a mailbox")
        if self._closing:
            raise PartitionUnavailable(f"partition {self.index} is closed")
        loop = self._require_loop()
        futures = []
        for request in requests:
            future = loop.create_future()
            self._inbox.append((request, future))
            futures.append(future)
        assert self._wake is not None
        self._wake.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    def post_threadsafe(self, item: Any) -> None:
        """Queue an internal item from any thread (activity outcomes, heartbeats)."""
        loop = self._require_loop()
        if not loop.is_closed():
            loop.call_soon_threadsafe(self._post, item, None)

    def _post(self, item: Any, future: asyncio.Future[Any] | None) -> None:
        self._inbox.append((item, future))
        assert self._wake is not None
        self._wake.set()

    async def _turns(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            items, self._inbox = self._inbox, []
            if not items:
                continue
            try:
                self._turn(items)
            except Exception as exc:  # reason: the loop must outlive any bug, or calls hang
                log.exception("partition %d: a turn failed outside its transaction", self.index)
                for _, future in items:
                    if future is not None and not future.done():
                        future.set_exception(
                            PartitionUnavailable(
                                f"partition {self.index} failed while answering (the request "
                                f"may have been applied): {type(exc).__name__}: {exc}"
                            )
                        )

    def _turn(self, items: list[tuple[Any, asyncio.Future[Any] | None]]) -> None:
        self._turn_count += 1
        self._turn_items += len(items)
        lsn_before = self._lsn
        try:
            fx = self._apply(items)
        except Exception as exc:
            self._turn_failed(items, lsn_before, exc)  # only what caused it fails
            return
        except BaseException:
            log.exception("partition %d: turn interrupted and rolled back", self.index)
            self._rewind(self._fx, lsn_before)
            for _, future in items:
                if future is not None and not future.done():
                    future.set_exception(PartitionUnavailable(f"partition {self.index} stopped"))
            raise
        self._after_commit(fx)

    def _apply(self, items: list[tuple[Any, asyncio.Future[Any] | None]]) -> _Effects:
        """Apply ``items`` (after the recovery, if due) in one transaction; what to do once it
        committed. Raises what any item raised, but a duraflow error, with nothing committed."""
        fx = self._fx = _Effects()
        recovering = self._recovering
        try:
            with self._db().turn():
                if recovering:
                    self._recover()
                for item, future in items:
                    try:
                        fx.replies.append((future, self._dispatch(item, future), None))
                    except DuraflowError as exc:
                        fx.replies.append((future, None, exc))
        except BaseException:
            self._recovering = recovering  # a recovery rolled back is still to be done
            raise
        return fx

    def _after_commit(self, fx: _Effects) -> None:
        for future, reply, error in fx.replies:
            if future is None or reply is _DEFERRED or future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(reply)
        for closed, outcome in fx.closed:
            for waiter in closed.waiters:
                if not waiter.done():
                    waiter.set_result(outcome)
            for mailbox, requested_run_id in closed.mailed:
                self._mailboxes.deliver(mailbox, m.MailedOutcome(requested_run_id, outcome))
        for attempt in fx.dispatch:
            self._start_attempt(attempt)
        loop = self._require_loop()
        for outbox_id, target, message in fx.sends:
            loop.create_task(self._deliver(outbox_id, target, message))
        self._arm()
        self._evict_over_cap()
        if self._lsn > self._notified_lsn:
            self._notified_lsn = self._lsn
            for waiter in self._event_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._event_waiters.clear()

    async def _read_events(self, req: m.ReadEvents) -> m.EventBatch:
        """Events after ``req.after_lsn``; between turns everything up to ``_lsn`` is committed."""
        if req.wait_s > 0 and self._lsn <= req.after_lsn:
            waiter = self._require_loop().create_future()
            self._event_waiters.append(waiter)
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter, req.wait_s)
            finally:
                if waiter in self._event_waiters:
                    self._event_waiters.remove(waiter)
        rows = self._db().read_events(req.after_lsn, req.limit) if req.limit > 0 else []
        types = set(req.event_types) if req.event_types is not None else None
        if types is None and req.workflow_id is None and req.workflow_type is None:
            events = [body for _lsn, _workflow_id, _kind, body in rows]  # the archive's reads
        else:
            events = []
            for _lsn, workflow_id, kind, body in rows:
                if types is not None and kind not in types:
                    continue
                if req.workflow_id is not None and workflow_id != req.workflow_id:
                    continue
                if req.workflow_type is not None and (
                    ev.decode_event(body).workflow_type != req.workflow_type
                ):
                    continue
                events.append(body)
        # A full page resumes after its last row; otherwise everything committed was scanned.
        full = bool(rows) and len(rows) == req.limit
        resume = rows[-1][0] if full else max(req.after_lsn, self._lsn)
        return m.EventBatch(self.index, events, resume, self._lsn)

    # -- dispatch -------------------------------------------------------------------------------

    def _dispatch(self, item: Any, future: asyncio.Future[Any] | None) -> Any:
        if isinstance(item, m.Start):
            return self._start(item)
        if isinstance(item, m.Signal):
            return self._signal(item)
        if isinstance(item, m.Query):
            return self._query(item)
        if isinstance(item, m.Cancel):
            return self._cancel(item)
        if isinstance(item, m.Terminate):
            return self._terminate_request(item)
        if isinstance(item, m.AwaitResult):
            return self._await_result(item, future)
        if isinstance(item, m.Describe):
            return self._describe(item)
        if isinstance(item, m.History):
            open_run = self._open.get(item.workflow_id)
            if open_run is not None and item.run_id in (None, open_run.row.run_id):
                key = open_run.key
            else:
                row = self._closed_row(item.workflow_id, item.run_id)
                key = (row.workflow_id, row.run_id)
            return [ev.encode_event(e) for e in self._db().history(*key)]
        if isinstance(item, m.Archived):
            return self._archived(item)
        if isinstance(item, m.ListWorkflows):
            return self._list(item)
        if isinstance(item, m.ChildClosed):
            return self._child_closed(item)
        if isinstance(item, ActivityDone):
            return self._activity_done(item)
        if isinstance(item, Heartbeat):
            return self._heartbeat(item)
        if isinstance(item, _Due):
            return self._fire_due()
        if isinstance(item, _Delivered):
            return self._delivered(item)
        raise TypeError(f"partition {self.index}: unknown request {type(item).__name__}")

    # -- requests -------------------------------------------------------------------------------

    def _start(self, req: m.Start) -> m.StartReply:
        check_workflow_id(req.workflow_id)
        if req.id_conflict not in m.ID_CONFLICT_POLICIES:
            raise ConfigurationError(
                f"id_conflict must be one of {m.ID_CONFLICT_POLICIES}, got {req.id_conflict!r}"
            )
        existing = self._open.get(req.workflow_id)
        if req.run_id is not None:
            # The client picks the run ID, so a retried start (the reply was lost) is a no-op.
            if existing is not None and existing.row.run_id == req.run_id:
                return m.StartReply(req.run_id, started=True)
            if existing is None and self._db().get_run(req.workflow_id, req.run_id) is not None:
                return m.StartReply(req.run_id, started=True)
        if req.parent_run_id is not None:
            same = existing.row if existing else self._db().latest_run(req.workflow_id)
            if same is not None and (same.parent_run_id, same.parent_seq) == (
                req.parent_run_id,
                req.parent_seq,
            ):
                return m.StartReply(same.run_id, started=False)  # a retried child start
        if existing is not None:
            if req.id_conflict == "use_existing":
                return m.StartReply(existing.row.run_id, started=False)
            if req.id_conflict == "fail":
                raise WorkflowAlreadyRunning(
                    f"workflow {req.workflow_id!r} is already running (run {existing.row.run_id}); "
                    "pass id_conflict='use_existing' or 'terminate_existing' to start anyway"
                )
        definition = resolve_workflow(req.workflow_type, req.code_ref)
        if existing is not None:
            self._terminate(existing, "terminated by a new start (id_conflict=terminate_existing)")
        now_us = self._now_us()
        row = WorkflowRow(
            req.workflow_id,
            req.run_id or uuid.uuid4().hex,
            definition.name,
            definition.code_ref,
            "running",
            req.parent_id,
            req.parent_run_id,
            req.parent_seq,
            now_us,
            None,
            None,
            None,
            None,
        )
        self._db().insert_workflow(row)
        open_run = OpenRun(row, 0)
        self._open[row.workflow_id] = open_run
        started = ev.WorkflowStarted(
            **self._base(row, now_us),
            args=req.args,
            code_ref=definition.code_ref,
            python=PYTHON_VERSION,
            parent_id=req.parent_id,
            parent_run_id=req.parent_run_id,
            parent_seq=req.parent_seq,
        )
        open_run.run = WorkflowRun(definition, started, watch=self._watch)
        self._touch(row.workflow_id)
        self._append(open_run, [started])
        self._activate(open_run, started)
        return m.StartReply(row.run_id, started=True)

    def _signal(self, req: m.Signal) -> None:
        open_run = self._open_run(req.workflow_id, req.run_id, "signal")
        store = self._db()
        if store.signal_seen(req.request_id):
            return  # a retried signal: appended once already
        event = ev.SignalReceived(
            **self._base(open_run.row, self._now_us()), name=req.name, payload=req.payload
        )
        self._resolve(open_run, event)
        store.insert_signal(req.request_id, req.workflow_id, open_run.row.run_id, event.lsn)

    def _query(self, req: m.Query) -> bytes:
        if req.deadline_us is not None and time.time() * 1e6 > req.deadline_us:
            # Its caller has given up (QueryTimeout): running the handler now would only hold
            # the partition longer (a blocked partition gets a queue of these).
            raise QueryTimeout(
                f"query {req.name!r} of workflow {req.workflow_id!r} reached partition "
                f"{self.index} after its timeout: not run"
            )
        open_run = self._open_run(req.workflow_id, req.run_id, "query")
        run = self._resident(open_run)
        if run is None:
            raise QueryFailed(
                f"workflow {req.workflow_id!r} cannot answer queries: {open_run.stuck}"
            )
        if req.name not in run.query_handlers:
            raise UnknownQuery(
                f"workflow {req.workflow_id!r} has no query handler {req.name!r} "
                f"(it has: {sorted(run.query_handlers)})"
            )
        try:
            value = run.query(req.name, decode(req.args) or [])
        except WorkflowBlocked as exc:
            self._mark_stuck(open_run, exc)
            raise QueryFailed(f"query {req.name!r} failed: {exc}") from None
        except QueryChangedState as exc:
            self._hibernate(req.workflow_id)  # the next activation replays the true state
            self._lru.pop(req.workflow_id, None)
            raise QueryFailed(str(exc)) from None
        except GeneratorExit:
            raise
        except BaseException as exc:  # reason: a handler's error (any) goes back to the caller
            raise QueryFailed(
                f"query {req.name!r} of workflow {req.workflow_id!r} raised "
                f"{type(exc).__name__}: {error_text(exc)}"
            ) from None
        return encode(value, f"result of query {req.name!r}")

    def _cancel(self, req: m.Cancel) -> None:
        open_run = self._open_run(req.workflow_id, req.run_id, "cancel")
        run = self._resident(open_run)  # rebuilt if needed: a repeated cancel is ignored either way
        if run is not None and run.cancel_requested:
            return
        event = ev.CancelRequested(**self._base(open_run.row, self._now_us()), reason=req.reason)
        self._resolve(open_run, event)

    def _terminate_request(self, req: m.Terminate) -> None:
        open_run = self._open.get(req.workflow_id)
        if req.parent_run_id is not None:
            if open_run is not None and open_run.row.parent_run_id == req.parent_run_id:
                self._terminate(open_run, req.reason)
            return  # the child already closed or was replaced: nothing to do
        open_run = self._open_run(req.workflow_id, req.run_id, "terminate")
        self._terminate(open_run, req.reason)

    def _await_result(self, req: m.AwaitResult, future: asyncio.Future[Any] | None) -> Any:
        open_run = self._open.get(req.workflow_id)
        if open_run is not None and req.run_id in (None, open_run.row.run_id):
            if req.mailbox is not None:
                self._mailboxes.register(req.mailbox)
                entry = (req.mailbox, req.run_id)
                if entry not in open_run.mailed:  # a client registers again after a restart
                    open_run.mailed.append(entry)
                return m.Waiting(self.incarnation)  # the outcome goes to the mailbox
            if future is not None:
                open_run.waiters.append(future)
            return _DEFERRED
        row = self._closed_row(req.workflow_id, req.run_id)
        return _outcome(row)

    def _describe(self, req: m.Describe) -> m.WorkflowDescription:
        open_run = self._open.get(req.workflow_id)
        if open_run is not None and req.run_id in (None, open_run.row.run_id):
            return self._open_description(open_run, self._last_event_id(open_run))
        row = self._closed_row(req.workflow_id, req.run_id)
        history = self._db().last_event_id(row.workflow_id, row.run_id)
        return _description(row, history, [], None, self.index)

    def _list(self, req: m.ListWorkflows) -> list[m.WorkflowDescription]:
        """What describe() says of each run: open runs from memory, lengths from one query."""
        listed = self._db().list_workflows(req.status, req.workflow_type, req.limit)
        out = []
        for row, history in listed:
            open_run = self._open.get(row.workflow_id)
            if open_run is not None and open_run.row.run_id == row.run_id:
                known = open_run.last_event_id
                out.append(self._open_description(open_run, history if known is None else known))
            else:
                out.append(_description(row, history, [], None, self.index))
        return out

    def _open_description(self, open_run: OpenRun, history: int) -> m.WorkflowDescription:
        wid, rid = open_run.key
        pending = sorted(
            attempt.definition.name
            for seq in open_run.activity_seqs
            if (attempt := self._attempts.get((wid, rid, seq))) is not None
        )
        return _description(open_run.row, history, pending, open_run.stuck, self.index)

    def _archived(self, req: m.Archived) -> None:
        if req.lsn > self._archived_lsn:
            self._archived_lsn = min(req.lsn, self._lsn)
            self._db().set_meta("archived_lsn", str(self._archived_lsn))
        self._prune()

    def _prune(self) -> None:
        """Delete closed runs that are archived and past the retention period (tiering)."""
        if self._archived_lsn == 0:
            return
        store = self._db()
        cutoff_us = self._now_us() - round(self._retention_s * 1e6)
        runs = store.prunable_runs(cutoff_us, self._archived_lsn, PRUNE_BATCH)
        for workflow_id, run_id in runs:
            store.delete_run(workflow_id, run_id)
        if runs and not self._pruned:
            self._pruned = True
            store.set_meta("pruned", "1")
        if len(runs) == PRUNE_BATCH:
            self._push(self._clock(), "prune", None)  # the rest in the next turns

    def _child_closed(self, msg: m.ChildClosed) -> None:
        open_run = self._open.get(msg.workflow_id)
        if open_run is None or open_run.row.run_id != msg.parent_run_id:
            return  # the parent closed already
        run = self._resident(open_run)
        if run is not None and msg.seq not in run.open_children():
            return  # delivered before
        if run is None and self._child_resolved(open_run, msg.seq):
            return
        base = self._base(open_run.row, self._now_us())
        event: ev.Event
        if msg.status == "completed":
            event = ev.ChildCompleted(
                **base,
                seq=msg.seq,
                child_workflow_id=msg.child_workflow_id,
                result=msg.result or b"",
            )
        else:
            event = ev.ChildFailed(
                **base,
                seq=msg.seq,
                child_workflow_id=msg.child_workflow_id,
                status=msg.status,
                error_type=msg.error_type,
                error_message=msg.error_message,
            )
        self._resolve(open_run, event)

    def _child_resolved(self, open_run: OpenRun, seq: int) -> bool:
        history = self._db().history(*open_run.key)
        return any(
            isinstance(e, (ev.ChildCompleted, ev.ChildFailed)) and e.seq == seq for e in history
        )

    # -- runs: residency, activation, commands ----------------------------------------------------

    def _open_run(self, workflow_id: str, run_id: str | None, verb: str) -> OpenRun:
        check_workflow_id(workflow_id)
        open_run = self._open.get(workflow_id)
        if open_run is not None and run_id in (None, open_run.row.run_id):
            return open_run
        row = self._db().get_run(workflow_id, run_id) if run_id else None
        if row is None and run_id is None:
            row = self._db().latest_run(workflow_id)
        if row is None:
            raise WorkflowNotFound(
                f"cannot {verb}: no workflow {workflow_id!r}"
                + (f" with run {run_id}" if run_id else "")
            )
        raise WorkflowClosed(
            f"cannot {verb} workflow {workflow_id!r}: run {row.run_id} already {row.status}"
        )

    def _closed_row(self, workflow_id: str, run_id: str | None) -> WorkflowRow:
        check_workflow_id(workflow_id)
        store = self._db()
        row = store.get_run(workflow_id, run_id) if run_id else store.latest_run(workflow_id)
        if row is None:
            error = WorkflowNotFound(
                f"no workflow {workflow_id!r}" + (f" with run {run_id}" if run_id else "")
            )
            error.maybe_archived = self._pruned
            raise error
        return row

    def _resident(self, open_run: OpenRun) -> WorkflowRun | None:
        """The run in memory, rebuilt from history if needed; None if it cannot be rebuilt."""
        if open_run.run is not None:
            return open_run.run
        if open_run.stuck is not None:
            return None
        row = open_run.row
        try:
            definition = resolve_workflow(row.workflow_type, row.code_ref)
            history = self._db().history(row.workflow_id, row.run_id)
            run, new = rebuild(definition, history, watch=self._watch)
        except Exception as exc:
            if is_storage_failure(exc):
                raise
            self._mark_stuck(open_run, exc)  # missing code, a diverged replay or a bug
            return None
        open_run.last_event_id = history[-1].event_id if history else 0
        open_run.run = run
        self._touch(row.workflow_id)
        if new:
            try:
                self._commands(open_run, new)
            except (RunBroke, DuraflowError):
                raise
            except Exception as exc:
                raise RunBroke(open_run, exc, rebuilding=True) from exc
        return open_run.run

    def _touch(self, workflow_id: str) -> None:
        """Mark a run most recently used (for the resident cap and idle hibernation)."""
        lru = self._lru
        lru[workflow_id] = time.monotonic()
        lru.move_to_end(workflow_id)

    def _evict_over_cap(self) -> None:
        """Drop least recently used runs from memory while over ``max_resident_runs``.

        Only between turns: an evicted run is rebuilt from history when next needed.
        """
        cap = self._max_resident
        if cap is None:
            return
        while len(self._lru) > cap:
            self._hibernate(self._lru.popitem(last=False)[0])

    def _sweep(self) -> None:
        """Hibernate runs idle for longer than ``hibernate_after_s``; runs between turns."""
        idle_s = self._hibernate_after
        assert idle_s is not None
        horizon = time.monotonic() - idle_s
        lru = self._lru
        while lru:
            workflow_id, touched = next(iter(lru.items()))
            if touched > horizon:
                break
            del lru[workflow_id]
            self._hibernate(workflow_id)
        self._sweeper = self._require_loop().call_later(max(0.05, idle_s / 2), self._sweep)

    def _hibernate(self, workflow_id: str) -> None:
        open_run = self._open.get(workflow_id)
        if open_run is not None and open_run.run is not None:
            open_run.run.discard()
            open_run.run = None

    def _mark_stuck(self, open_run: OpenRun, exc: BaseException) -> None:
        open_run.stuck = f"{type(exc).__name__}: {exc}"
        self._db().set_stuck(open_run.row.workflow_id, open_run.row.run_id, open_run.stuck)
        if open_run.run is not None:
            open_run.run.discard()
            open_run.run = None
        log.error(
            "partition %d: workflow %r is stuck: %s", self.index, open_run.row.workflow_id, exc
        )

    def _resolve(self, open_run: OpenRun, event: ev.Event) -> None:
        """Record a resolution event for a run and apply it to the code (rebuilding it first).

        Raises:
            RunBroke: recording it or what the code did raised (not a duraflow error).
        """
        try:
            run = self._resident(open_run)
            self._append(open_run, [event])
            if run is not None and open_run.run is run:
                self._activate(open_run, event)
        except (RunBroke, DuraflowError):
            raise
        except Exception as exc:
            raise RunBroke(open_run, exc, rebuilding=False) from exc

    def _activate(self, open_run: OpenRun, event: ev.Event) -> None:
        run = open_run.run
        assert run is not None
        self._touch(open_run.row.workflow_id)
        try:
            commands = run.activate(event)
        except DuraflowError as exc:
            self._mark_stuck(open_run, exc)
            return
        if commands:
            self._commands(open_run, commands)

    def _commands(self, open_run: OpenRun, commands: list[ev.Event]) -> None:
        self._append(open_run, commands)
        run = open_run.run
        store = self._db()
        wid, rid = open_run.key
        for cmd in commands:
            if isinstance(cmd, ev.ActivityScheduled):
                assert run is not None
                request = run.activity_requests.pop(cmd.seq)
                attempt = self._attempts.schedule(
                    (wid, rid, cmd.seq), request.definition, request.options, cmd.args, cmd.at_us
                )
                store.insert_activity(attempt.row(1, "running", None))
                open_run.activity_seqs.add(cmd.seq)
                self._begin_attempt(attempt, 1)
            elif isinstance(cmd, ev.ActivityCancelled):
                store.delete_activity(wid, rid, cmd.seq)
                open_run.activity_seqs.discard(cmd.seq)
                self._attempts.drop((wid, rid, cmd.seq))
            elif isinstance(cmd, ev.TimerStarted):
                store.insert_timer(TimerRow(wid, rid, cmd.seq, cmd.fire_at_us))
                open_run.timer_seqs.add(cmd.seq)
                self._push(cmd.fire_at_us / 1e6, "timer", (wid, rid, cmd.seq))
            elif isinstance(cmd, ev.TimerCancelled):
                store.delete_timer(wid, rid, cmd.seq)
                open_run.timer_seqs.discard(cmd.seq)
            elif isinstance(cmd, ev.ChildStarted):
                start = m.Start(
                    workflow_id=cmd.child_workflow_id,
                    workflow_type=cmd.child_workflow_type,
                    code_ref=cmd.code_ref,
                    args=cmd.args,
                    parent_id=wid,
                    parent_run_id=rid,
                    parent_seq=cmd.seq,
                )
                self._outbox(cmd.child_workflow_id, start)
            elif isinstance(cmd, ev.WorkflowCompleted):
                self._close(open_run, "completed", cmd.at_us, result=cmd.result)
            elif isinstance(cmd, ev.WorkflowFailed):
                self._close(open_run, "failed", cmd.at_us, cmd.error_type, cmd.error_message)
            elif isinstance(cmd, ev.WorkflowCancelled):
                self._close(
                    open_run, "cancelled", cmd.at_us, "CancelledError", cmd.reason or "cancelled"
                )

    def _terminate(self, open_run: OpenRun, reason: str) -> None:
        now_us = self._now_us()
        duration_ms = max(0, (now_us - open_run.row.started_at_us) // 1000)
        event = ev.WorkflowTerminated(
            **self._base(open_run.row, now_us), reason=reason, duration_ms=duration_ms
        )
        self._append(open_run, [event])
        self._close(open_run, "terminated", now_us, "Terminated", reason or "terminated")

    def _close(
        self,
        open_run: OpenRun,
        status: str,
        at_us: int,
        error_type: str | None = None,
        error_message: str | None = None,
        result: bytes | None = None,
    ) -> None:
        row = open_run.row
        store = self._db()
        store.close_workflow(
            row.workflow_id, row.run_id, status, at_us, result, error_type, error_message
        )
        store.delete_run_state(row.workflow_id, row.run_id)
        for seq in open_run.activity_seqs:
            self._attempts.drop((row.workflow_id, row.run_id, seq))
        if row.parent_id is not None and row.parent_run_id is not None:
            self._outbox(
                row.parent_id,
                m.ChildClosed(
                    workflow_id=row.parent_id,
                    parent_run_id=row.parent_run_id,
                    seq=row.parent_seq or 0,
                    child_workflow_id=row.workflow_id,
                    status=status,
                    result=result,
                    error_type=error_type or "",
                    error_message=error_message or "",
                ),
            )
        for child_id, policy in self._open_children(open_run):
            reason = f"parent {row.workflow_id!r} {status}"
            if policy == "terminate":
                self._outbox(
                    child_id,
                    m.Terminate(workflow_id=child_id, reason=reason, parent_run_id=row.run_id),
                )
            elif policy == "request_cancel":
                self._outbox(child_id, m.Cancel(workflow_id=child_id, reason=reason))
        outcome = m.Outcome(row.workflow_id, row.run_id, status, result, error_type, error_message)
        self._fx.closed.append((open_run, outcome))
        del self._open[row.workflow_id]
        self._lru.pop(row.workflow_id, None)
        if open_run.run is not None:
            open_run.run.discard()

    def _open_children(self, open_run: OpenRun) -> list[tuple[str, str]]:
        """(child ID, parent-close policy) of children started and not yet closed."""
        started: dict[int, ev.ChildStarted] = {}
        if open_run.run is not None:
            pending = set(open_run.run.open_children())
            if not pending:
                return []
        else:
            pending = None
        for event in self._db().history(*open_run.key):
            if isinstance(event, ev.ChildStarted):
                started[event.seq] = event
            elif isinstance(event, (ev.ChildCompleted, ev.ChildFailed)):
                started.pop(event.seq, None)
        return [
            (e.child_workflow_id, e.parent_close_policy)
            for seq, e in started.items()
            if pending is None or seq in pending
        ]

    # -- history ------------------------------------------------------------------------------

    def _append(self, open_run: OpenRun, events: list[ev.Event]) -> None:
        """Stamp events with event IDs and LSNs and write them to the history table."""
        event_id = self._last_event_id(open_run)
        for event in events:
            event_id += 1
            self._lsn += 1
            event.event_id = event_id
            event.lsn = self._lsn
            event.partition = self.index
        open_run.last_event_id = event_id
        self._db().append_events(events)

    def _last_event_id(self, open_run: OpenRun) -> int:
        if open_run.last_event_id is None:
            open_run.last_event_id = self._db().last_event_id(*open_run.key)
        return open_run.last_event_id

    def _base(self, row: WorkflowRow, at_us: int) -> dict[str, Any]:
        return {
            "workflow_id": row.workflow_id,
            "run_id": row.run_id,
            "workflow_type": row.workflow_type,
            "at_us": at_us,
        }

    def _recover(self) -> None:
        """First turn after opening: re-arm backoffs, re-dispatch attempts that were in flight,
        resend undelivered outbox messages."""
        began = time.perf_counter()
        self._recovering = False
        for open_run in list(self._open.values()):
            if open_run.row.stuck is not None and self._resident(open_run) is not None:
                # The code is back (or fixed): clear the mark; the rebuild above already
                # issued what the recorded events ask for.
                self._db().set_stuck(open_run.row.workflow_id, open_run.row.run_id, None)
        for row_id, target, data in self._db().outbox():
            self._fx.sends.append((row_id, target, m.decode_outbox(data)))
        self._recover_activities()
        self.recovery["recover_s"] = time.perf_counter() - began
        self.recovery["recovered_at"] = time.time()

    # -- timers ----------------------------------------------------------------------------------

    def _push(self, due: float, kind: str, key: Any) -> None:
        heapq.heappush(self._heap, (due, next(self._counter), kind, key))

    def _arm(self) -> None:
        if not self._heap:
            return
        due = self._heap[0][0]
        if due >= self._due_at and self._due_handle is not None:
            return
        if self._due_handle is not None:
            self._due_handle.cancel()
        delay = max(0.0, due - self._clock())
        if delay > 0 and self._stepped:  # clock_moved() fires it when the clock gets there
            self._due_handle, self._due_at = None, math.inf
            return
        self._due_at = due
        self._due_handle = self._require_loop().call_later(delay, self._on_due)

    def _on_due(self) -> None:
        self._due_handle = None
        self._due_at = float("inf")
        self._post(_Due(), None)

    # -- a stepped clock (duraflow.testing) ---------------------------------------------------

    async def clock_moved(self) -> None:
        """The stepped clock moved: fire what is due now; returns once that turn committed."""
        future = self._require_loop().create_future()
        self._post(_Due(), future)
        await future

    def next_due(self) -> float:
        """When the earliest live timer, retry backoff or deadline falls due (``inf``: none).

        Entries left for a cancelled timer or a finished attempt are dropped on the way (they
        would fire nothing), so a stepped clock does not jump to them.
        """
        heap = self._heap
        while heap and self._stale(heap[0][2], heap[0][3]):
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def _stale(self, kind: str, key: Any) -> bool:
        if kind == "timer":
            open_run = self._open.get(key[0])
            return (
                open_run is None
                or open_run.row.run_id != key[1]
                or key[2] not in open_run.timer_seqs
            )
        if kind in ("retry", "attempt_timeout", "heartbeat_check", "schedule_timeout"):
            return self._deadline_stale(kind, *key)
        return False

    def busy(self, attempts: bool = True) -> bool:
        """Whether work waits for a turn or (with ``attempts``) an activity attempt runs."""
        return bool(self._inbox) or (attempts and self._attempts.any_running())

    @property
    def turns(self) -> int:
        """Turns taken since the partition opened."""
        return self._turn_count

    def _fire_due(self) -> None:
        now = self._clock()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, key = heapq.heappop(heap)
            if kind == "timer":
                self._timer_due(key)
            elif kind == "retry":
                self._retry_due(*key)
            elif kind == "outbox":
                self._resend(key)
            elif kind == "prune":
                self._prune()
            else:
                self._attempt_deadline(kind, *key)

    def _timer_due(self, key: tuple[str, str, int]) -> None:
        wid, rid, seq = key
        open_run = self._open.get(wid)
        if open_run is None or open_run.row.run_id != rid or seq not in open_run.timer_seqs:
            return  # cancelled, or its run closed
        open_run.timer_seqs.discard(seq)
        self._db().delete_timer(wid, rid, seq)
        self._resolve(open_run, ev.TimerFired(**self._base(open_run.row, self._now_us()), seq=seq))

    # -- outbox: messages to other workflows ---------------------------------------------------

    def _outbox(self, target_id: str, message: m.OutboxMessage) -> None:
        outbox_id = self._db().insert_outbox(target_id, m.encode_outbox(message))
        self._fx.sends.append((outbox_id, target_id, message))

    async def _deliver(self, outbox_id: int, target_id: str, message: m.OutboxMessage) -> None:
        error: BaseException | None = None
        try:
            await self._send(target_id, message)
        except DuraflowError as exc:
            error = exc
        except Exception as exc:  # reason: any transport error means "retry later"
            error = PartitionUnavailable(f"delivery to {target_id!r} failed: {exc!r}")
        if not self._closing:
            self._post(_Delivered(outbox_id, message, error), None)

    def _delivered(self, item: _Delivered) -> None:
        error = item.error
        if isinstance(error, PartitionUnavailable):
            self._push(self._clock() + OUTBOX_RETRY_S, "outbox", item.outbox_id)
            return
        self._db().delete_outbox([item.outbox_id])
        message = item.message
        if error is not None and isinstance(message, m.Start) and message.parent_id is not None:
            # The child could not start: the parent's handle fails with the reason.
            self._child_closed(
                m.ChildClosed(
                    workflow_id=message.parent_id,
                    parent_run_id=message.parent_run_id or "",
                    seq=message.parent_seq or 0,
                    child_workflow_id=message.workflow_id,
                    status="not_started",
                    error_type=type(error).__name__,
                    error_message=str(error),
                )
            )

    def _resend(self, outbox_id: int) -> None:
        for row_id, target, data in self._db().outbox():
            if row_id == outbox_id:
                self._fx.sends.append((row_id, target, m.decode_outbox(data)))

    # -- helpers ---------------------------------------------------------------------------------

    def _now_us(self) -> int:
        return round(self._clock() * 1e6)

    def _db(self) -> PartitionStore:
        assert self._store is not None, "Partition.open() was not awaited"
        return self._store

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Partition.open() was not awaited"
        return self._loop

    def stats(self) -> dict[str, int]:
        """Open and resident run counts (for status and benchmarks)."""
        resident = sum(1 for o in self._open.values() if o.run is not None)
        return {
            "open": len(self._open),
            "resident": resident,
            "lsn": self._lsn,
            "turns": self._turn_count,
            "turn_items": self._turn_items,
        }


def _outcome(row: WorkflowRow) -> m.Outcome:
    return m.Outcome(
        row.workflow_id, row.run_id, row.status, row.result, row.error_type, row.error_message
    )


def _description(
    row: WorkflowRow, history_length: int, pending: list[str], stuck: str | None, partition: int
) -> m.WorkflowDescription:
    def when(us: int | None) -> dt.datetime | None:
        return None if us is None else dt.datetime.fromtimestamp(us / 1e6, tz=dt.timezone.utc)

    start_time = when(row.started_at_us)
    assert start_time is not None
    return m.WorkflowDescription(
        workflow_id=row.workflow_id,
        run_id=row.run_id,
        workflow_type=row.workflow_type,
        status=row.status,
        start_time=start_time,
        close_time=when(row.closed_at_us),
        parent_workflow_id=row.parent_id,
        history_length=history_length,
        pending_activities=pending,
        error_type=row.error_type,
        error_message=row.error_message,
        stuck=stuck,
        partition=partition,
    )
