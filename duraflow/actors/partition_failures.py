"""When a turn raises: roll it back, then apply its items one at a time, so only the culprit fails.

Mixed into :class:`duraflow.actors.partition.Partition` (like ``ActivitySteps``). Nothing here
runs unless a turn raised, so a turn that commits is exactly as fast as before. A failed turn
is rolled back as a whole; its items are then applied again, each in a transaction of its own:

- the file or its disk failing (an I/O error, a full disk) fails every request of the turn
  with ``PartitionUnavailable``: retriable, it may pass;
- a request whose own application raises (a value the file cannot hold, such as an integer
  over 64 bits, or a bug) fails with ``RequestFailed``: not retriable, nothing of it is
  recorded, and the turn's other requests commit;
- an open run whose own work cannot be recorded (applying a timer, an activity's or a child's
  outcome, or rebuilding it) is marked stuck with the reason (``describe().stuck``): it takes
  no more activations, so the item that woke it is applied again without it and never loops.
  A restart tries the run again (its code may have been fixed meanwhile).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import TYPE_CHECKING, Any

from duraflow.actors import messages as m
from duraflow.actors.attempts import AttemptTable
from duraflow.errors import PartitionUnavailable, RequestFailed
from duraflow.storage.codec import error_text
from duraflow.storage.sqlite_store import is_storage_failure

if TYPE_CHECKING:
    from duraflow.actors.partition import OpenRun, _Effects
    from duraflow.storage.sqlite_store import PartitionStore

log = logging.getLogger("duraflow.partition")

Item = tuple[Any, "asyncio.Future[Any] | None"]

STUCK_PER_ITEM = 16
"""How many runs one item may mark stuck before it is given up (each retry marks one more)."""


class RunBroke(Exception):
    """Recording one run's work raised an error that is not the run's code's (that fails the
    run): it unwinds the turn so the run alone can be marked stuck, or the request that woke
    it refused. Not a DuraflowError, so no request handler replies with it."""

    def __init__(self, open_run: OpenRun, cause: Exception, *, rebuilding: bool) -> None:
        super().__init__(f"workflow {open_run.row.workflow_id!r}: {type(cause).__name__}")
        self.key = open_run.key
        self.cause = cause
        self.rebuilding = rebuilding


class TurnRepair:
    """The failure path of the partition's turn (a mixin: state lives on the Partition)."""

    index: int
    _open: dict[str, OpenRun]
    _attempts: AttemptTable
    _heap: list[tuple[float, int, str, Any]]
    _lru: Any
    _fx: _Effects
    _lsn: int
    _recovering: bool

    if TYPE_CHECKING:

        def _db(self) -> PartitionStore: ...
        def _load(self) -> None: ...
        def _apply(self, items: list[Item]) -> _Effects: ...
        def _after_commit(self, fx: _Effects) -> None: ...
        def _arm(self) -> None: ...
        def _readopt_activities(self, before: AttemptTable) -> None: ...

    def _turn_failed(self, items: list[Item], lsn_before: int, exc: Exception) -> None:
        """The turn of ``items`` raised ``exc`` and was rolled back: apply them one at a time."""
        self._rewind(self._fx, lsn_before)
        cause = exc.cause if isinstance(exc, RunBroke) else exc
        if is_storage_failure(cause):
            log.error("partition %d: turn rolled back: %r", self.index, cause, exc_info=cause)
            _fail_all(items, PartitionUnavailable(f"partition {self.index}'s file failed: {cause}"))
            return
        log.warning(
            "partition %d: a turn of %d item(s) raised %s: %s; applying them one at a time",
            self.index,
            len(items),
            type(cause).__name__,
            error_text(cause),
            exc_info=cause,
        )
        if self._recovering and not self._apply_alone(None, None):
            # Not one run's fault: the partition itself cannot recover (its next turn tries again).
            _fail_all(
                items, PartitionUnavailable(f"partition {self.index} cannot recover its runs")
            )
            return
        for item, future in items:
            self._apply_alone(item, future)
        self._arm()

    def _apply_alone(self, item: Any, future: asyncio.Future[Any] | None) -> bool:
        """Apply one item (None: recovery only) in a transaction of its own; whether it
        committed."""
        for _ in range(STUCK_PER_ITEM):
            lsn_before = self._lsn
            try:
                fx = self._apply([] if item is None else [(item, future)])
            except Exception as exc:
                self._rewind(self._fx, lsn_before)
                if self._blame(item, future, exc):
                    continue  # a run was marked stuck: the item again, without that run
                return False
            self._after_commit(fx)
            return True
        self._refuse(item, future, RuntimeError("too many runs failed while applying it"))
        return False

    def _blame(self, item: Any, future: asyncio.Future[Any] | None, exc: Exception) -> bool:
        """Fail what caused ``exc``; True when it was a run (now stuck) and the item may be
        applied again."""
        cause = exc.cause if isinstance(exc, RunBroke) else exc
        if is_storage_failure(cause):
            if future is not None and not future.done():
                future.set_exception(
                    PartitionUnavailable(f"partition {self.index}'s file failed: {cause}")
                )
            return False
        if isinstance(exc, RunBroke) and not _refusable(item, future, exc):
            return self._stick(exc)
        self._refuse(item, future, cause)
        return False

    def _refuse(self, item: Any, future: asyncio.Future[Any] | None, cause: Exception) -> None:
        workflow_id = getattr(item, "workflow_id", "") or ""
        kind = "recovery" if item is None else _kind(item)
        error = RequestFailed(workflow_id, kind, type(cause).__name__, error_text(cause))
        log.error("partition %d: %s", self.index, error)
        if future is not None and not future.done():
            future.set_exception(error)

    def _stick(self, broke: RunBroke) -> bool:
        """Mark the run of ``broke`` stuck, durably at once; False if it is gone or was
        stuck already (then retrying the item would fail the same way)."""
        workflow_id, run_id = broke.key
        open_run = self._open.get(workflow_id)
        if open_run is None or open_run.row.run_id != run_id or open_run.stuck is not None:
            return False
        cause = broke.cause
        what = "rebuilding it" if broke.rebuilding else "recording its work"
        open_run.stuck = f"{what} failed: {type(cause).__name__}: {error_text(cause)}"
        store = self._db()
        with store.turn():
            store.set_stuck(workflow_id, run_id, open_run.stuck)
        log.error("partition %d: workflow %r is stuck: %s", self.index, workflow_id, open_run.stuck)
        return True

    def _rewind(self, failed: _Effects, lsn_before: int) -> None:
        """After a rolled-back transaction: make memory match the file again.

        Resident runs are dropped (rebuilt by replay when next needed); open runs, timers and
        activities are read again. What only memory knows is kept: result waiters, mailbox
        registrations, stuck marks, and the attempts still running (their outcomes are
        awaited, not run again). Outbox messages in flight stay in flight.
        """
        self._lsn = lsn_before
        before = dict(self._open)
        for closed, _ in failed.closed:  # closed by the rolled-back turn: open again in the file
            before.setdefault(closed.row.workflow_id, closed)
        for open_run in before.values():
            if open_run.run is not None:
                open_run.run.discard()
                open_run.run = None
        self._lru.clear()
        recovering = self._recovering
        attempts, self._attempts = self._attempts, AttemptTable()
        # Timers and activity deadlines come back from the file; outbox resends are kept.
        self._heap = [entry for entry in self._heap if entry[2] == "outbox"]
        heapq.heapify(self._heap)
        self._load()
        self._recovering = recovering
        for workflow_id, open_run in self._open.items():
            old = before.get(workflow_id)
            if old is not None and old.row.run_id == open_run.row.run_id:
                open_run.waiters, open_run.mailed = old.waiters, old.mailed
                open_run.stuck = old.stuck
        if recovering:
            attempts.cancel_all()  # nothing was dispatched yet: the recovery restores them all
        else:
            self._readopt_activities(attempts)


def _refusable(item: Any, future: asyncio.Future[Any] | None, broke: RunBroke) -> bool:
    """Whether ``broke`` is the request's own doing, so refusing the request undoes it: a
    client's request whose target's new event could not be recorded (a rebuild's failure is
    the run's, whatever woke it; an outcome sent by another partition must not be lost)."""
    return (
        future is not None
        and not broke.rebuilding
        and not isinstance(item, m.ChildClosed)
        and getattr(item, "workflow_id", None) == broke.key[0]
    )


def _kind(item: Any) -> str:
    """``"start"``, ``"signal"``, ... for a request message; the class name otherwise."""
    name = type(item).__name__
    return name.lower() if isinstance(item, m.Message) else name


def _fail_all(items: list[Item], error: BaseException) -> None:
    for _, future in items:
        if future is not None and not future.done():
            future.set_exception(error)
