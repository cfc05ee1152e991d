"""When a turn raises: roll it back, then apply its items one at a time, so only the culprit fails.

Functions of the partition shell (:class:`Shell`, which ``actors/partition.py`` satisfies).
Nothing here runs unless a turn raised, so a turn that commits pays nothing for it. A failed
turn is rolled back as a whole; its items are then applied again, each in a transaction of its own:

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
import logging
from typing import Any, Protocol

from duraflow.actors import messages as m
from duraflow.engine.machine import Machine
from duraflow.engine.machine_state import RunBroke
from duraflow.errors import PartitionUnavailable, RequestFailed
from duraflow.storage.codec import error_text
from duraflow.storage.sqlite_store import is_storage_failure

log = logging.getLogger("duraflow.partition")

Item = tuple[Any, "asyncio.Future[Any] | None"]

STUCK_PER_ITEM = 16
"""How many runs one item may mark stuck before it is given up (each retry marks one more)."""


class Shell(Protocol):
    """What the repair needs of the partition shell."""

    index: int
    machine: Machine

    def apply(self, items: list[Item]) -> tuple[list[Any], list[Any]]: ...
    def after_commit(self, replies: list[Any], after: list[Any]) -> None: ...
    def rewind(self) -> None: ...
    def arm(self) -> None: ...
    def record_stuck(self, workflow_id: str, run_id: str, why: str) -> None: ...


def turn_failed(shell: Shell, items: list[Item], exc: Exception) -> None:
    """The turn of ``items`` raised ``exc`` and was rolled back: apply them one at a time."""
    shell.rewind()
    cause = exc.cause if isinstance(exc, RunBroke) else exc
    if is_storage_failure(cause):
        log.error("partition %d: turn rolled back: %r", shell.index, cause, exc_info=cause)
        fail_all(items, PartitionUnavailable(f"partition {shell.index}'s file failed: {cause}"))
        return
    log.warning(
        "partition %d: a turn of %d item(s) raised %s: %s; applying them one at a time",
        shell.index,
        len(items),
        type(cause).__name__,
        error_text(cause),
        exc_info=cause,
    )
    if shell.machine.recovering and not _apply_alone(shell, None, None):
        # Not one run's fault: the partition itself cannot recover (its next turn tries again).
        fail_all(items, PartitionUnavailable(f"partition {shell.index} cannot recover its runs"))
        return
    for item, future in items:
        _apply_alone(shell, item, future)
    shell.arm()


def _apply_alone(shell: Shell, item: Any, future: asyncio.Future[Any] | None) -> bool:
    """Apply one item (None: recovery only) in a transaction of its own; whether it
    committed."""
    for _ in range(STUCK_PER_ITEM):
        try:
            done = shell.apply([] if item is None else [(item, future)])
        except Exception as exc:
            shell.rewind()
            if _blame(shell, item, future, exc):
                continue  # a run was marked stuck: the item again, without that run
            return False
        shell.after_commit(*done)
        return True
    _refuse(shell, item, future, RuntimeError("too many runs failed while applying it"))
    return False


def _blame(shell: Shell, item: Any, future: asyncio.Future[Any] | None, exc: Exception) -> bool:
    """Fail what caused ``exc``; True when it was a run (now stuck) and the item may be
    applied again."""
    cause = exc.cause if isinstance(exc, RunBroke) else exc
    if is_storage_failure(cause):
        if future is not None and not future.done():
            future.set_exception(
                PartitionUnavailable(f"partition {shell.index}'s file failed: {cause}")
            )
        return False
    if isinstance(exc, RunBroke) and not _refusable(item, future, exc):
        return _stick(shell, exc)
    _refuse(shell, item, future, cause)
    return False


def _refuse(shell: Shell, item: Any, future: asyncio.Future[Any] | None, cause: Exception) -> None:
    workflow_id = getattr(item, "workflow_id", "") or ""
    kind = "recovery" if item is None else _kind(item)
    error = RequestFailed(workflow_id, kind, type(cause).__name__, error_text(cause))
    log.error("partition %d: %s", shell.index, error)
    if future is not None and not future.done():
        future.set_exception(error)


def _stick(shell: Shell, broke: RunBroke) -> bool:
    """Mark the run of ``broke`` stuck, durably at once; False if it is gone or was
    stuck already (then retrying the item would fail the same way)."""
    workflow_id, run_id = broke.key
    cause = broke.cause
    what = "rebuilding it" if broke.rebuilding else "recording its work"
    why = f"{what} failed: {type(cause).__name__}: {error_text(cause)}"
    if not shell.machine.stick(workflow_id, run_id, why):
        return False
    shell.record_stuck(workflow_id, run_id, why)
    log.error("partition %d: workflow %r is stuck: %s", shell.index, workflow_id, why)
    return True


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


def fail_all(items: list[Item], error: BaseException) -> None:
    """Fail the futures of ``items`` that are still waiting."""
    for _, future in items:
        if future is not None and not future.done():
            future.set_exception(error)
