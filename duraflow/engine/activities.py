"""Activity attempts: what an executor runs, the ActivityExecutor protocol, the inline executor.

Retry, backoff and timeouts are decided by the owning partition; an executor only runs one
attempt and reports its outcome. Activity code can call :func:`heartbeat` and
:func:`activity_info` while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from duraflow.config import DEFAULT_ACTIVITY_THREADS
from duraflow.engine.definitions import ActivityDefinition
from duraflow.engine.payloads import activity_types, decode_args, encode_result
from duraflow.errors import ActivityCancelledError, PayloadError
from duraflow.storage.codec import encode, error_text


@dataclasses.dataclass(frozen=True)
class ActivityInfo:
    """Who is running: the activity, its workflow, the attempt, last heartbeat details."""

    activity: str
    workflow_id: str
    run_id: str
    seq: int
    attempt: int
    heartbeat_details: Any


class ActivityOutcome(msgspec.Struct, frozen=True):
    """The result of one attempt: msgpack ``result`` or an error's type name and message."""

    ok: bool
    result: bytes | None = None
    error_type: str = ""
    error_message: str = ""


CANCELLED = ActivityOutcome(
    ok=False, error_type="ActivityCancelledError", error_message="attempt cancelled"
)
"""The outcome of an attempt cancelled before or while it ran."""


class CancelFlag:
    """Set once an attempt is no longer wanted; read from any thread (no one waits on it, so
    it needs no lock: a ``threading.Event`` cost more than the rest of a dispatch)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class ActivityTask:
    """One attempt to run: the definition, encoded args, and the way back to the partition."""

    def __init__(
        self,
        definition: ActivityDefinition,
        args: bytes,
        info: ActivityInfo,
        heartbeat: Callable[[bytes | None], None],
    ) -> None:
        self.definition = definition
        self.args = args
        self.info = info
        self.send_heartbeat = heartbeat
        self.cancelled = CancelFlag()
        self.cancel_hook: Callable[[], None] | None = None
        self.timed = False
        """Whether this attempt has a start-to-close or heartbeat timeout."""

    def cancel(self) -> None:
        """Tell the attempt it is no longer wanted (heartbeat raises; async code is cancelled)."""
        self.cancelled.set()
        if self.cancel_hook is not None:
            self.cancel_hook()


class ActivityExecutor(Protocol):
    """Runs activity attempts somewhere and calls ``done`` (from any thread) with the outcome."""

    def start(self, task: ActivityTask, done: Callable[[ActivityOutcome], None]) -> None: ...

    def waits_to_run(self, definition: ActivityDefinition) -> bool:
        """Whether an attempt may wait before it runs (for a worker or resources): such an
        attempt sends a first heartbeat when it starts, and its timeouts count from there."""
        ...

    def close(self) -> None: ...


_current: contextvars.ContextVar[ActivityTask] = contextvars.ContextVar("duraflow_activity")


def activity_info() -> ActivityInfo:
    """Information about the activity attempt running in this thread or task.

    Raises:
        RuntimeError: called outside an activity.
    """
    return _current_task().info


def heartbeat(details: Any = None) -> None:
    """Report progress from a running activity; ``details`` reach the next attempt.

    Raises:
        ActivityCancelledError: the attempt timed out or its workflow no longer wants it.
        PayloadError: ``details`` cannot be encoded.
    """
    task = _current_task()
    if task.cancelled.is_set():
        raise ActivityCancelledError(
            f"activity {task.info.activity!r} attempt {task.info.attempt} was cancelled"
        )
    payload = None if details is None else encode(details, "heartbeat details")
    task.send_heartbeat(payload)


def _current_task() -> ActivityTask:
    task = _current.get(None)
    if task is None:
        raise RuntimeError("activity_info()/heartbeat() can only be called inside an activity")
    return task


def outcome_of(result: Any, definition: ActivityDefinition) -> ActivityOutcome:
    """Encode a returned value for the activity's return annotation; a result that cannot be
    encoded or does not match fails the attempt (non-retryable)."""
    role = f"activity {definition.name!r}"
    try:
        data = encode_result(activity_types(definition), result, role)
    except PayloadError as exc:
        return failure_of(exc)
    return ActivityOutcome(ok=True, result=data)


def _args_of(task: ActivityTask) -> list[Any]:
    definition = task.definition
    return decode_args(activity_types(definition), task.args, f"activity {definition.name!r}")


def failure_of(exc: BaseException) -> ActivityOutcome:
    """The outcome of an attempt that raised ``exc`` (any exception: its description cannot
    raise)."""
    return ActivityOutcome(ok=False, error_type=type(exc).__name__, error_message=error_text(exc))


def run_sync_attempt(task: ActivityTask, *, interruptible: bool = False) -> ActivityOutcome:
    """Run a sync activity attempt in the calling thread.

    Whatever the activity raises, ``SystemExit`` and ``KeyboardInterrupt`` included, becomes
    a failed outcome: a worker thread never dies of it and the partition always hears back.
    With ``interruptible`` (a Ray task, which ``ray.cancel`` interrupts like Ctrl-C), a
    ``KeyboardInterrupt`` is left to Ray, which reports the attempt cancelled.
    """
    token = _current.set(task)
    try:
        result = task.definition.fn(*_args_of(task))
    except KeyboardInterrupt:
        if interruptible:
            raise
        return failure_of(KeyboardInterrupt())
    except BaseException as exc:  # reason: any activity error is reported, not raised
        return failure_of(exc)
    finally:
        _current.reset(token)
    return outcome_of(result, task.definition)


async def run_async_attempt(task: ActivityTask, *, interruptible: bool = False) -> ActivityOutcome:
    """Run an async activity attempt in the current event loop (anything it raises becomes a
    failed outcome, as in :func:`run_sync_attempt`)."""
    token = _current.set(task)
    try:
        result = await task.definition.fn(*_args_of(task))
    except asyncio.CancelledError:
        return CANCELLED
    except GeneratorExit:
        raise  # the coroutine is being closed: not the activity's outcome
    except KeyboardInterrupt:
        if interruptible:
            raise
        return failure_of(KeyboardInterrupt())
    except BaseException as exc:  # reason: SystemExit and friends must not end the loop
        return failure_of(exc)
    finally:
        _current.reset(token)
    return outcome_of(result, task.definition)


class InlineExecutor:
    """Runs attempts in the host process: sync functions on threads, async ones on the loop
    of the partition that starts them (``loop`` when called outside any).

    Note:
        A sync activity that never returns keeps its thread; the threads are daemons, so such
        an activity cannot keep the process from exiting, and its timeout still fails the
        attempt. Threads are started on demand, up to ``threads``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int = DEFAULT_ACTIVITY_THREADS):
        self._loop = loop
        self._max_threads = threads
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[
            tuple[ActivityTask, Callable[[ActivityOutcome], None]] | None
        ]
        self._queue = queue.SimpleQueue()

    def waits_to_run(self, definition: ActivityDefinition) -> bool:
        """An inline attempt starts at once: its timeouts count from its dispatch."""
        return False

    def start(self, task: ActivityTask, done: Callable[[ActivityOutcome], None]) -> None:
        if task.definition.is_async:
            # On the calling partition's loop: in-process, each partition has its own.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = self._loop
            running = loop.create_task(run_async_attempt(task))
            task.cancel_hook = lambda: loop.call_soon_threadsafe(running.cancel)
            running.add_done_callback(lambda t: done(t.result()))
            return
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # an idle thread will take it
            elif len(self._threads) < self._max_threads:
                thread = threading.Thread(
                    target=self._work, name=f"duraflow-activity-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._queue.put((task, done))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            task, done = item
            outcome = run_sync_attempt(task)
            with contextlib.suppress(RuntimeError):  # the host's loop closed: nobody waits
                done(outcome)
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
