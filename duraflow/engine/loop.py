"""Deterministic asyncio event loop for one workflow run: ordered ready queue, no clock, no I/O.

Workflow code runs on this loop, so ``asyncio.gather``, tasks, ``asyncio.sleep``,
``asyncio.wait_for`` and ``asyncio.timeout`` work inside workflows. The loop never blocks:
``run_until_idle`` runs ready callbacks in FIFO order until none is left. Time only moves when
the owner sets it (from the recorded time of the event being applied), and every timer with a
positive delay becomes a durable timer command through the ``TimerSink`` (the run).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import weakref
from asyncio import events
from collections.abc import Callable
from typing import Any, Protocol

from duraflow.config import MAX_DURATION_S
from duraflow.errors import InvalidDuration

log = logging.getLogger("duraflow.workflow")


class TimerSink(Protocol):
    """Receives the loop's durable timers (implemented by the run)."""

    def start_timer(self, handle: asyncio.TimerHandle) -> None: ...

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None: ...


class _OrderedFuture(asyncio.Future):  # type: ignore[type-arg]  # reason: generic at runtime only
    """A future whose hash is its creation order on the loop (mixed with the loop's salt), so
    sets of them iterate the same way on every replay (asyncio.wait returns sets; TaskGroup
    keeps one)."""

    def __init__(self, *, loop: WorkflowLoop) -> None:
        self._duraflow_order = loop.next_order()
        super().__init__(loop=loop)

    def __hash__(self) -> int:
        return self._duraflow_order


class _OrderedTask(asyncio.Task):  # type: ignore[type-arg]  # reason: generic at runtime only
    """A task whose hash is its creation order (see _OrderedFuture)."""

    def __init__(self, coro: Any, *, loop: WorkflowLoop, name: str | None, context: Any) -> None:
        self._duraflow_order = loop.next_order()
        if context is None:
            super().__init__(coro, loop=loop, name=name)
        else:
            super().__init__(coro, loop=loop, name=name, context=context)

    def __hash__(self) -> int:
        return self._duraflow_order


class WorkflowLoop(asyncio.AbstractEventLoop):
    """The event loop of one workflow run. Not thread-safe; driven by its run only."""

    def __init__(self, sink: TimerSink, salt: int = 0) -> None:
        self._sink = sink
        self._salt = salt
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._now = 0.0
        self._closed = False
        self._exception_handler: Any = None
        self._order = 0
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.errors: list[str] = []

    def next_order(self) -> int:
        """The deterministic hash of the next future or task: its creation order, mixed with
        the loop's salt (the same on every replay of the run). Without the salt, the first
        task of every run would hash alike, and asyncio's process-wide set of all tasks
        would degrade to a list with 100,000 runs resident. Tuples of ints hash the same in
        every process (no hash randomization)."""
        self._order += 1
        return hash((self._salt, self._order))

    # -- driven by the run ---------------------------------------------------------------

    def set_time(self, seconds: float) -> None:
        """Move workflow time (seconds since the epoch) to the applied event's time."""
        self._now = max(self._now, seconds)

    def fire(self, handle: asyncio.TimerHandle) -> None:
        """Queue a durable timer's callback because its ``timer_fired`` event was applied."""
        if not handle.cancelled():
            self._ready.append(handle)

    def ready_count(self) -> int:
        """Callbacks waiting to run (none between activations, unless a query handler woke
        workflow code)."""
        return len(self._ready)

    def run_until_idle(self) -> None:
        """Run ready callbacks, FIFO, until none is left (the loop's only way to run)."""
        previous = events._get_running_loop()
        events._set_running_loop(self)
        try:
            ready = self._ready
            while ready:
                handle = ready.popleft()
                if not handle._cancelled:  # reason: asyncio's own Handle flag
                    try:  # noqa: SIM105  # reason: a try costs nothing here, suppress() a call per handle
                        handle._run()  # reason: how asyncio loops run handles
                    except (SystemExit, KeyboardInterrupt):
                        # Raised by workflow code (sys.exit(), say): its task has recorded it
                        # as its exception already (asyncio re-raises these two after doing
                        # so); the run fails with it, the partition's loop goes on.
                        pass
        finally:
            events._set_running_loop(previous)

    # -- the asyncio.AbstractEventLoop surface workflow code reaches ------------------------

    def time(self) -> float:
        return self._now

    def call_soon(
        self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        self._check_open()
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(
        self,
        delay: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self._now + delay, callback, *args, context=context)

    def call_at(
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        self._check_open()
        if not when - self._now <= MAX_DURATION_S:  # NaN fails this too
            # Refused here, in the workflow code that asked: a durable timer is a microsecond
            # timestamp in a SQLite INTEGER, which a huge delay would overflow.
            raise InvalidDuration(
                f"a workflow timer must fire within 100 years ({MAX_DURATION_S:.0f} s), got a "
                f"delay of {when - self._now!r} s (asyncio.sleep, wait_for or timeout with a "
                "huge or NaN delay?); to wait without a limit, await a signal or a future"
            )
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        if when <= self._now:
            # Already due: no durable timer needed, the callback runs in this activation.
            self._ready.append(handle)
        else:
            handle._scheduled = True  # reason: asyncio's TimerHandle bookkeeping
            self._sink.start_timer(handle)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        if handle._scheduled:  # reason: only durable timers have a command
            handle._scheduled = False  # reason: see above
            self._sink.cancel_timer(handle)

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> asyncio.Handle:
        raise RuntimeError(
            "workflow code cannot be reached from other threads; use a signal or an activity"
        )

    def create_future(self) -> asyncio.Future[Any]:
        return _OrderedFuture(loop=self)

    def create_task(self, coro: Any, *, name: str | None = None, context: Any = None) -> Any:
        self._check_open()
        task = _OrderedTask(coro, loop=self, name=name, context=context)
        self._tasks.add(task)
        return task

    def tasks(self) -> list[asyncio.Task[Any]]:
        """This loop's unfinished tasks (``asyncio.all_tasks`` would scan every loop's)."""
        return [task for task in self._tasks if not task.done()]

    def get_task_factory(self) -> None:
        return None

    def set_task_factory(self, factory: Any) -> None:
        raise RuntimeError("workflow loops do not take a task factory")

    def get_debug(self) -> bool:
        return False

    def set_debug(self, enabled: bool) -> None:
        pass

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._ready.clear()
        self._closed = True

    def get_exception_handler(self) -> Any:
        return self._exception_handler

    def set_exception_handler(self, handler: Any) -> None:
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        message = context.get("message", "")
        if "was destroyed but it is pending" in message:
            return  # a discarded run's tasks being collected: expected, not an error
        exc = context.get("exception")
        text = f"{message}: {exc!r}" if exc is not None else message
        self.errors.append(text)
        log.warning("workflow loop: %s", text)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._exception_handler is not None:
            self._exception_handler(self, context)
        else:
            self.default_exception_handler(context)

    def run_forever(self) -> None:
        raise RuntimeError("a workflow loop is driven by its run, never run_forever()")

    def run_until_complete(self, future: Any) -> Any:
        raise RuntimeError("a workflow loop is driven by its run, never run_until_complete()")

    def stop(self) -> None:
        raise RuntimeError("a workflow loop cannot be stopped from workflow code")

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> Any:
        raise RuntimeError(_NO_IO)

    def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(_NO_IO)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this workflow run is closed or hibernating")


_NO_IO = (
    "workflow code must be deterministic and cannot do I/O or use threads: move this into an "
    "@activity and call it with ctx.activity()"
)
