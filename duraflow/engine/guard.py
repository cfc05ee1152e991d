"""Run-time guards on workflow code: code that holds its partition, and threads it starts.

Workflow code runs on its partition's thread between two ``await`` s. Code that blocks there
(``time.sleep``, blocking I/O, a long computation) holds every other workflow of that
partition, and a thread it starts runs outside the run's history (and would start again on
every replay). Python cannot prevent either cheaply, so both are detected:

- Each partition has a :class:`Watch`: what workflow code it runs now, set before and
  cleared after each activation and query handler (a clock read and a few attribute writes).
  Code that held the partition longer than the watch's threshold fails when it returns
  (the run raises :class:`~duraflow.errors.WorkflowBlocked`). While it still blocks, a
  watchdog thread (one per process, checking every 0.5 s at most) logs an error naming the
  partition, the workflow ID and what it runs, once per blocking call.
- ``threading.Thread.start`` raises :class:`~duraflow.errors.WorkflowCodeError` when the
  calling thread runs workflow code (installed with the first watch).

Note:
    Blocked code cannot be interrupted: Python cannot stop a thread inside a C call such as
    ``time.sleep`` or a socket read. The watchdog reports; the run fails once the call returns.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time
import types
from typing import Any

from duraflow.cdc import events as ev
from duraflow.errors import WorkflowCodeError

log = logging.getLogger("duraflow.guard")

WATCHDOG_INTERVAL_S = 0.5
"""How often the watchdog looks at most (more often for thresholds under 2 s)."""


class Watch:
    """What workflow code one partition runs now, for the watchdog on another thread.

    Args:
        owner: who runs the code, as reports name it (``"partition 3"``).
        threshold_s: how long code may hold the partition (None: no limit); a deployment's
            is its ``deadlock_threshold_s`` (``duraflow.config.DEADLOCK_THRESHOLD_S``).
    """

    __slots__ = ("doing", "owner", "reported", "since", "thread", "threshold_s", "workflow_id")

    def __init__(self, owner: str, threshold_s: float | None) -> None:
        self.owner = owner
        self.threshold_s = math.inf if threshold_s is None else threshold_s
        self.since = 0.0
        """``time.monotonic()`` when the code running now began; 0.0 when none runs."""
        self.workflow_id = ""
        self.doing: Any = None  # the event being applied, or read-only code's name
        self.thread = 0
        self.reported = 0.0  # the ``since`` the watchdog has reported

    def enter(self, workflow_id: str, doing: Any) -> None:
        """Code of ``workflow_id`` starts ``doing`` (an event, or read-only code's name)."""
        self.workflow_id = workflow_id
        self.doing = doing
        self.thread = threading.get_ident()
        self.since = time.monotonic()

    def leave(self) -> float:
        """The code returned: how long it held the partition if that was over the threshold,
        else 0.0."""
        held = time.monotonic() - self.since
        self.since = 0.0
        return held if held > self.threshold_s else 0.0

    def blocked_message(self, held_s: float) -> str:
        """Why the code that just returned failed (for WorkflowBlocked)."""
        return (
            f"workflow {self.workflow_id!r} held {self.owner} for {held_s:.1f} s in "
            f"{describe(self.doing)}, more than {self.threshold_s:g} s without an await "
            "(time.sleep or blocking I/O in workflow code? use await ctx.sleep() or an activity)"
        )


def describe(doing: Any) -> str:
    """``doing`` of a :class:`Watch` in words."""
    if isinstance(doing, str):
        return doing  # read-only code, named by its caller: "query handler 'status'"
    if isinstance(doing, ev.Event):
        return f"the activation for {ev.event_type(doing)} (event {doing.event_id})"
    return "workflow code"


class _Watchdog:
    """The process's watchdog thread over every registered watch; it runs while any is."""

    def __init__(self) -> None:
        self.watches: tuple[Watch, ...] = ()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        _guard_threads()
        with self._lock:
            self.watches = (*self.watches, watch)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="duraflow-watchdog", daemon=True
                )
                self._thread.start()

    def remove(self, watch: Watch) -> None:
        with self._lock:
            self.watches = tuple(w for w in self.watches if w is not watch)

    def _run(self) -> None:
        while True:
            with self._lock:
                watches = self.watches
                if not watches:
                    self._thread = None
                    return
            time.sleep(min(WATCHDOG_INTERVAL_S, *(w.threshold_s / 4 for w in watches)))
            now = time.monotonic()
            for watch in watches:
                _check(watch, now)


def _check(watch: Watch, now: float) -> None:
    since = watch.since
    if not since or since == watch.reported or now - since <= watch.threshold_s:
        return
    workflow_id, doing = watch.workflow_id, watch.doing
    if watch.since != since:
        return  # it returned meanwhile: what we read may be the next call's
    watch.reported = since
    log.error(
        "%s: workflow %r has held it for %.1f s in %s without an await, and every other "
        "workflow of %s waits (time.sleep or blocking I/O in workflow code?). Blocked code "
        "cannot be interrupted; when it returns, the run is marked stuck.",
        watch.owner,
        workflow_id,
        now - since,
        describe(doing),
        watch.owner,
    )


_watchdog = _Watchdog()


def watch(watch: Watch) -> None:
    """Have the watchdog look at ``watch`` (and guard thread starts from now on)."""
    _watchdog.add(watch)


def unwatch(watch: Watch) -> None:
    """Stop looking at ``watch`` (the watchdog thread ends with the last one)."""
    _watchdog.remove(watch)


def running_here() -> Watch | None:
    """The watch of the workflow code the calling thread runs now, if any."""
    me = threading.get_ident()
    for watch in _watchdog.watches:
        if watch.since and watch.thread == me:
            return watch
    return None


_start_thread = threading.Thread.start
"""What ``Thread.start`` was when the guard was installed (an embedder's own wrapper is kept)."""


@functools.wraps(_start_thread)
def _start_guarded(self: threading.Thread) -> None:
    running = running_here()
    if running is not None:
        raise WorkflowCodeError(
            f"workflow {running.workflow_id!r} tried to start thread {self.name!r}: workflow "
            "code may not start threads (a thread runs outside the run's history, and would "
            "start again on every replay); move the work into an @activity"
        )
    _start_thread(self)


def _guard_threads() -> None:
    global _start_thread
    if threading.Thread.start is not _start_guarded:
        _start_thread = threading.Thread.start
        threading.Thread.start = _start_guarded  # type: ignore[method-assign]  # reason: the one cheap hook on thread starts (no audit event before 3.13)


_SIZED = (list, dict, set, bytearray, collections.deque)


def captured(handler: Any) -> list[tuple[int, int]]:
    """A cheap fingerprint of what ``handler`` shares with its workflow: each variable it
    captured (closure cells, and a bound method's instance attributes) as the object's
    identity and, for built-in containers, its length. A rebound variable or a resized list,
    dict, set or deque changes it; a change deeper inside an object does not."""
    func = getattr(handler, "__func__", handler)
    values = []
    for cell in getattr(func, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell: a variable not assigned yet
            values.append(cell)
    owner = getattr(handler, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType) and hasattr(owner, "__dict__"):
        values.extend(vars(owner).values())
    return [(id(v), len(v) if isinstance(v, _SIZED) else -1) for v in values]
