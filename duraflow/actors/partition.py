"""Partition: the single writer's I/O shell around the pure partition machine.

Requests (start, signal, query, ...) and internal happenings (activity outcomes, due times,
delivered outbox messages) queue in the partition's inbox. A *turn* takes everything queued,
feeds each item to the machine (:mod:`duraflow.engine.machine`), writes the effects it
returns inside one transaction, commits, and only then replies, dispatches activities, sends
messages to other partitions and arms due times. A crash therefore loses nothing that was
acknowledged, and never runs an activity whose scheduling is not durable. The rules live in
the machine; this module only runs turns.

The partition runs on one asyncio loop (its host's) and is never touched from other threads
except through :meth:`Partition.post_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from duraflow.actors import messages as m
from duraflow.actors import turn_repair
from duraflow.actors.attempt_runner import AttemptRunner
from duraflow.actors.change_log import ChangeLog
from duraflow.actors.due_times import DueTimes
from duraflow.actors.mailboxes import Mailboxes, ResultWaits
from duraflow.actors.outbox import OutboxSender, Send
from duraflow.actors.partition_writes import write
from duraflow.config import EngineConfig
from duraflow.engine import effects as fx
from duraflow.engine import guard
from duraflow.engine.activities import ActivityExecutor
from duraflow.engine.machine import Machine
from duraflow.errors import PartitionFenced, PartitionUnavailable, PayloadError, QueryTimeout
from duraflow.storage.deployment import partition_stamp
from duraflow.storage.sqlite_store import PartitionStore

log = logging.getLogger("duraflow.partition")

Item = tuple[Any, "asyncio.Future[Any] | None"]


class _Due:
    """Inbox item: fire what has fallen due."""


class Partition:
    """The single writer of one partition's workflows.

    Args:
        index: this partition's number (0 .. count-1).
        path: its SQLite file.
        config: the deployment's settings (synchronous mode, resident-run cap, hibernation,
            retention).
        executor: where activity attempts run.
        send: reaches the partition owning another workflow ID (children, parents).
        clock: seconds since the epoch; a parameter so tests can step time.
        stepped: ``clock`` moves only when told (``duraflow.testing``); the host calls
            :meth:`clock_moved` after each move.
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
        self._clock = clock
        self._watch = guard.Watch(f"partition {index}", config.deadlock_threshold_s)
        self.machine = Machine(
            index,
            retention_s=config.retention_s,
            watch=self._watch,
            waits_to_run=executor.waits_to_run,
        )
        self._store: PartitionStore | None = None
        self._due = DueTimes(clock, lambda: self._post(_Due(), None), stepped)
        self._runner = AttemptRunner(self.machine, executor, lambda item: self._post(item, None))
        self._inbox: list[Item] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False
        self._mailboxes = Mailboxes()
        self._waits = ResultWaits(self._mailboxes)
        self._log = ChangeLog(index, lambda: self.machine.lsn)
        self._turn_count = 0
        self._turn_items = 0
        self._after: dict[type, Callable[[Any], None]] = {
            fx.Dispatch: self._runner.dispatch,
            fx.StopAttempt: self._runner.stop,
            fx.Send: OutboxSender(send, lambda item: self._post(item, None), lambda: self._closing),
            fx.Arm: self._due.push,
            fx.Closed: lambda closed: self._waits.closed(closed.outcome),
        }
        self.incarnation = ""
        """Set anew at each open: tells clients the partition restarted (and forgot its
        mailboxes) even when a mailbox of the same name was made again since."""
        self.recovery: dict[str, float] = {}
        """How long opening took (``store_s``, ``load_s``) and the first turn's recovery
        (``recover_s``, ending at ``recovered_at``, epoch seconds): for status and benchmarks."""

    # -- lifetime -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the SQLite file, load open runs, timers and activities, and start turning."""
        self._loop = self._runner.loop = asyncio.get_running_loop()
        self.incarnation = uuid.uuid4().hex
        self._wake = asyncio.Event()
        began = time.perf_counter()
        stamp = partition_stamp(Path(self.config.data_dir), self.index)
        self._store = PartitionStore(self._path, self.config.synchronous, stamp=stamp)
        opened = time.perf_counter()
        try:
            self._due.push_all(self.machine.load(self._store))
        except BaseException:
            # A failed open keeps no lock, so a retry in this process can open the file.
            self._store.close()
            self._store = None
            raise
        self.recovery = {"store_s": opened - began, "load_s": time.perf_counter() - opened}
        self._worker = self._loop.create_task(self._turns(), name=f"partition-{self.index}")
        guard.watch(self._watch)
        self._post(_Due(), None)
        if self.config.hibernate_after_s is not None:
            self._sweep()

    def rewind(self) -> None:
        """After a rolled-back turn: the machine's memory again from the file."""
        self._due.keep_only(fx.OutboxRetry)
        self._due.push_all(self.machine.rewind(self._now_us(), self._db()))

    def record_stuck(self, workflow_id: str, run_id: str, why: str) -> None:
        """Record a stuck mark at once, in a transaction of its own."""
        store = self._db()
        with store.turn():
            store.set_stuck(workflow_id, run_id, why)

    async def close(self) -> None:
        """Stop turning and close the file; in-flight requests fail as PartitionUnavailable."""
        self._closing = True
        guard.unwatch(self._watch)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._due.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        gone = PartitionUnavailable(f"partition {self.index} closed")
        turn_repair.fail_all(self._inbox, gone)
        self._waits.close(gone)
        for open_run in self.machine.open.values():
            if open_run.run is not None:
                open_run.run.discard()
        if self._store is not None:
            self._store.close()

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
            return await self._log.read(request, self._db())  # committed rows: no turn
        if isinstance(request, m.CollectResults):
            outcomes = await self._mailboxes.collect(request.mailbox, request.wait_s)
            return m.Mailed(self.incarnation, outcomes or [], known=outcomes is not None)
        future = self._require_loop().create_future()
        self._post(request, future)
        return await future

    async def handle_batch(self, payload: bytes) -> list[Any]:
        """Handle a batch encoded by ``messages.encode_requests`` in one turn: the replies in
        order, an error in place of each request that failed. The batch is checked whole
        first (a malformed one runs nothing); its ``AwaitResult``s must name a mailbox.

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
        futures = [loop.create_future() for _ in requests]
        self._inbox.extend(zip(requests, futures, strict=True))
        assert self._wake is not None
        self._wake.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    def post_threadsafe(self, item: Any) -> None:
        """Queue an internal item from any thread (activity outcomes, heartbeats)."""
        self._runner.post_threadsafe(item)

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
                turn_repair.fail_all(
                    items,
                    PartitionUnavailable(
                        f"partition {self.index} failed while answering (the request may "
                        f"have been applied): {type(exc).__name__}: {exc}"
                    ),
                )

    def _turn(self, items: list[Item]) -> None:
        self._turn_count += 1
        self._turn_items += len(items)
        try:
            done = self.apply(items)
        except PartitionFenced as exc:  # a newer owner has the file: write nothing more
            self._closing = True  # the host closes the partition (its store told it)
            turn_repair.fail_all(items, exc)
            return
        except Exception as exc:  # reason: only what caused it fails (turn_repair)
            turn_repair.turn_failed(self, items, exc)
            return
        except BaseException:
            log.exception("partition %d: turn interrupted and rolled back", self.index)
            self.rewind()
            turn_repair.fail_all(items, PartitionUnavailable(f"partition {self.index} stopped"))
            raise
        self.after_commit(*done)

    def apply(self, items: list[Item]) -> tuple[list[Any], list[Any]]:
        """Apply ``items`` (after the recovery, if due) in one transaction: the replies (with
        their futures) and the effects to apply once it committed. Raises what the machine
        raised, with nothing committed."""
        machine, store = self.machine, self._db()
        machine.closed_this_turn.clear()
        replies: list[tuple[asyncio.Future[Any] | None, Any]] = []
        after: list[Any] = []
        recovering = machine.recovering
        try:
            with store.turn():
                if recovering:
                    began = time.perf_counter()
                    recovered = machine.recover(self._now_us(), store)
                    write(store, machine, recovered, (None, replies), after)
                    self.recovery["recover_s"] = time.perf_counter() - began
                    self.recovery["recovered_at"] = time.time()
                for item, future in items:
                    if type(item) is _Due:
                        for due in self._due.pop_due():
                            fired = machine.apply(due, self._now_us(), store)
                            write(store, machine, fired, (None, []), after)
                        replies.append((future, fx.Reply()))
                    elif type(item) is m.Query and (late := _too_late(item, self.index)):
                        replies.append((future, fx.Reply(error=late)))
                    else:
                        effects = machine.apply(item, self._now_us(), store)
                        write(store, machine, effects, (future, replies), after)
        except BaseException:
            machine.recovering = recovering  # a recovery rolled back is still to be done
            raise
        return replies, after

    def after_commit(self, replies: list[tuple[Any, Any]], after: list[Any]) -> None:
        """Answer, dispatch, send and arm what the committed turn asked for."""
        for future, reply in replies:
            if future is None or future.done():
                continue
            if type(reply) is fx.AwaitClose:
                self._waits.add(reply, future, self.incarnation)
            elif reply.error is not None:
                future.set_exception(reply.error)
            else:
                future.set_result(reply.value)
        table = self._after
        for effect in after:
            table[type(effect)](effect)
        self.arm()
        cap = self.config.max_resident_runs
        if cap is not None:
            self.machine.evict_over(cap)
        self._log.committed()

    # -- activities and messages after the commit ----------------------------------------------

    def heartbeat(self, key: fx.Key, number: int, details: bytes | None) -> bool:
        """Queue a heartbeat of attempt ``number``; False if that attempt is no longer wanted."""
        return self._runner.heartbeat(key, number, details)

    # -- due times ----------------------------------------------------------------------------

    def arm(self) -> None:
        """Wake the partition when the earliest due time falls due."""
        self._due.arm(self._require_loop())

    async def clock_moved(self) -> None:
        """The stepped clock moved: fire what is due now; returns once that turn committed."""
        future = self._require_loop().create_future()
        self._post(_Due(), future)
        await future

    def next_due(self) -> float:
        """When the earliest due time that would still do something falls due (``inf``: none)."""
        return self._due.next(self.machine.live)

    def _sweep(self) -> None:
        """Hibernate runs idle for longer than ``hibernate_after_s``; runs between turns."""
        idle_s = self.config.hibernate_after_s
        assert idle_s is not None
        self.machine.hibernate_idle(self._clock() - idle_s)
        self._sweeper = self._require_loop().call_later(max(0.05, idle_s / 2), self._sweep)

    # -- state for hosts, tests and benchmarks -----------------------------------------------

    def busy(self, attempts: bool = True) -> bool:
        """Whether work waits for a turn or (with ``attempts``) an activity attempt runs."""
        return bool(self._inbox) or (attempts and self.machine.attempts.any_running())

    @property
    def turns(self) -> int:
        """Turns taken since the partition opened."""
        return self._turn_count

    def stats(self) -> dict[str, int]:
        """Open and resident run counts (for status and benchmarks)."""
        return {**self.machine.stats(), "turns": self._turn_count, "turn_items": self._turn_items}

    def _now_us(self) -> int:
        return round(self._clock() * 1e6)

    def _db(self) -> PartitionStore:
        assert self._store is not None, "Partition.open() was not awaited"
        return self._store

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Partition.open() was not awaited"
        return self._loop


def _too_late(query: m.Query, index: int) -> QueryTimeout | None:
    """The error for a query whose caller gave up before it reached the turn: running its
    handler now would only hold the partition longer (a blocked partition gets a queue)."""
    if query.deadline_us is None or time.time() * 1e6 <= query.deadline_us:
        return None
    return QueryTimeout(
        f"query {query.name!r} of workflow {query.workflow_id!r} reached partition "
        f"{index} after its timeout: not run"
    )
