"""WorkflowRun: one resident run (coroutine + deterministic loop).

A run is driven by *activations*: the owner applies one resolution event (started, activity
completed, timer fired, signal received, ...), the loop runs until idle, and the commands the
code issued come back as new history events. While a run stays in memory its coroutine simply
continues. While it is being rebuilt from history (``engine/replay.py``), each command the code
issues is matched to the recorded command with the same sequence number, and any difference
raises :class:`NonDeterminismError` naming both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import sys
import uuid
import zlib
from asyncio import events
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from duraflow.actors.messages import RunOptions
from duraflow.cdc import events as ev
from duraflow.engine import guard, search_attributes
from duraflow.engine.commands import command_key, describe_command, patch_key, same_command
from duraflow.engine.context import (
    ChildWorkflowHandle,
    ContinueAsNew,
    WorkflowContext,
    WorkflowInfo,
)
from duraflow.engine.definitions import ActivityDefinition, ActivityOptions, WorkflowDefinition
from duraflow.engine.guard import Watch
from duraflow.engine.loop import WorkflowLoop
from duraflow.engine.messaging import Messaging
from duraflow.engine.payloads import (
    activity_types,
    decode_args,
    decode_result,
    encode_args,
    workflow_types,
)
from duraflow.engine.run_updates import RunUpdates
from duraflow.errors import (
    ActivityError,
    ChildWorkflowError,
    NonDeterminismError,
    PayloadError,
    WorkflowBlocked,
    WorkflowCodeError,
)
from duraflow.storage.codec import decode, encode, error_text

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
"""Recorded in every ``workflow.started``: asyncio orders some operations differently across
minor versions, so a history is only replayed on the minor version that made it."""


class _Divergence(BaseException):
    """Unwinds workflow code whose replay diverged; ``except Exception`` must not catch it."""


class _Discarded(BaseException):
    """Unwinds workflow code of a run that was dropped from memory."""


class QueryChangedState(WorkflowCodeError):
    """A query handler changed the run's state; the partition rebuilds the run from history
    and answers the query with QueryFailed."""


class ActivityRequest:
    """What the partition needs to run a newly scheduled activity."""

    __slots__ = ("definition", "options")

    def __init__(self, definition: ActivityDefinition, options: ActivityOptions) -> None:
        self.definition = definition
        self.options = options


_MESSAGING_RESOLUTIONS = (ev.ExternalCompleted, ev.ExternalFailed, ev.BlockedWorkflowClosed)


class WorkflowRun:
    """One run of a workflow, resident in memory, driven by activations.

    With a ``watch`` (its partition's), activations and query handlers are timed: code that
    holds the partition past the watch's threshold raises WorkflowBlocked when it returns,
    and a thread started from it is refused (``duraflow.engine.guard``).
    """

    def __init__(
        self,
        definition: WorkflowDefinition,
        started: ev.WorkflowStarted,
        recorded: dict[tuple[str, int], ev.Event] | None = None,
        *,
        watch: Watch | None = None,
    ) -> None:
        self.definition = definition
        self.started = started
        self.info = WorkflowInfo(
            workflow_id=started.workflow_id,
            run_id=started.run_id,
            workflow_type=started.workflow_type,
            attempt=started.attempt,
            parent_workflow_id=started.parent_id,
            parent_run_id=started.parent_run_id,
        )
        seed = started.seed or started.run_id  # a reset run replays its source's choices
        self.loop = WorkflowLoop(self, salt=zlib.crc32(seed.encode()))
        self.ctx = WorkflowContext(self)
        self._random: random.Random | None = None
        self.signals: dict[str, collections.deque[Any]] = {}
        self.signal_waiters: dict[str, collections.deque[asyncio.Future[Any]]] = {}
        self.query_handlers: dict[str, Callable[..., Any]] = {}
        self.updates = RunUpdates(self)
        self.cancel_requested = False
        self.cancel_reason = ""
        self.closed: ev.Event | None = None
        self.activity_requests: dict[int, ActivityRequest] = {}
        self._recorded = recorded
        self._max_recorded_seq = (
            max((k[1] for k in recorded if k[0] == "seq"), default=0) if recorded else 0
        )
        self._seq = 0
        self._issued: list[ev.Event] = []
        self._activities: dict[int, tuple[asyncio.Future[Any], ActivityDefinition]] = {}
        self._children: dict[int, asyncio.Future[Any]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_seqs: dict[int, int] = {}
        self._main: asyncio.Task[Any] | None = None
        self._divergence: str | None = None
        self._patches: dict[str, bool] = {}
        self._deprecated_patches: set[str] = set()
        """Patch IDs of deprecated markers in history (replay may or may not meet them)."""
        self.in_query = False
        self._discarded = False
        self._watch = watch
        self.search_attributes: dict[str, Any] = dict(started.search_attributes or {})
        self.messaging = Messaging(self)

    @property
    def random(self) -> random.Random:
        """The run's deterministic generator, seeded by its run ID (made on first use)."""
        if self._random is None:
            self._random = random.Random(self.started.seed or self.started.run_id)
        return self._random

    @property
    def replaying(self) -> bool:
        """True while ``engine.replay.rebuild`` is re-applying recorded history."""
        return self._recorded is not None

    # -- activation -----------------------------------------------------------------------

    def activate(self, event: ev.Event) -> list[ev.Event]:
        """Apply one resolution event, run the code until idle, return the new commands.

        Raises:
            NonDeterminismError: while replaying, the code issued something history does not hold.
            WorkflowBlocked: the code held its partition past the watch's threshold (the
                commands it issued are dropped with the run).
        """
        watch = self._watch
        if watch is None:
            return self._activate(event)
        watch.enter(self.info.workflow_id, event)
        try:
            issued = self._activate(event)
        finally:
            held_s = watch.leave()
        if held_s:
            raise WorkflowBlocked(watch.blocked_message(held_s))
        return issued

    def _activate(self, event: ev.Event) -> list[ev.Event]:
        self.loop.set_time(event.at_us / 1e6)
        self._apply(event)
        self.loop.run_until_idle()
        while self.messaging.settle():  # wait_condition calls whose condition now holds
            self.loop.run_until_idle()
        failed = self.messaging.handler_error
        if failed is not None and self.closed is None:
            with contextlib.suppress(_Divergence):
                self._command(self._failed(event.at_us, failed))
        if self._main is not None and self._main.done() and self.closed is None:
            # A close that differs from history sets self._divergence (raised just below).
            with contextlib.suppress(_Divergence):
                self._close_from_main(event.at_us)
        if self._divergence is not None:
            raise NonDeterminismError(self._divergence)
        issued, self._issued = self._issued, []
        return issued

    def _apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.WorkflowStarted):
            self._main = self.loop.create_task(self._call_workflow(event.args))
        elif isinstance(event, ev.ActivityCompleted):
            future, definition = self._pending(self._activities.pop(event.seq, None), event)
            if not future.done():
                self._resolve_activity(future, definition, event.result)
        elif isinstance(event, ev.ActivityFailed):
            future, definition = self._pending(self._activities.pop(event.seq, None), event)
            if not future.done():
                future.set_exception(
                    ActivityError(
                        definition.name, event.error_type, event.error_message, event.attempt
                    )
                )
        elif isinstance(event, ev.TimerFired):
            handle = self._pending(self._timers.pop(event.seq, None), event)
            self._timer_seqs.pop(id(handle), None)
            handle._scheduled = False  # reason: asyncio's TimerHandle bookkeeping
            self.loop.fire(handle)
        elif isinstance(event, ev.SignalReceived):
            self._deliver_signal(event.name, decode(event.payload))
        elif isinstance(event, ev.CancelRequested):
            self.cancel_requested = True
            self.cancel_reason = event.reason
            if self._main is not None and not self._main.done():
                self._main.cancel(event.reason or None)
        elif isinstance(event, ev.ChildCompleted):
            future = self._pending(self._children.pop(event.seq, None), event)
            if not future.done():
                future.set_result(decode(event.result))
        elif isinstance(event, ev.UpdateAccepted):
            self.updates.accept(event)
        elif isinstance(event, ev.ChildFailed):
            future = self._pending(self._children.pop(event.seq, None), event)
            if not future.done():
                future.set_exception(
                    ChildWorkflowError(
                        event.child_workflow_id, event.status, event.error_type, event.error_message
                    )
                )
        elif isinstance(event, _MESSAGING_RESOLUTIONS):
            try:
                self.messaging.resolve(event)
            except KeyError:
                self._pending(None, event)

    def _pending(self, found: Any, event: ev.Event) -> Any:
        if found is None:
            raise NonDeterminismError(
                f"event {event.event_id}: history has {ev.event_type(event)} for seq "
                f"{getattr(event, 'seq', '?')}, but the workflow code has nothing waiting on it"
            )
        return found

    async def _call_workflow(self, data: bytes | None) -> Any:
        # Decoded inside the run: arguments its annotations refuse fail the run, on replay too.
        role = f"workflow {self.info.workflow_type!r}"
        if self.started.start_delay_us > 0:  # start_delay, or a workflow retry's backoff
            await asyncio.sleep(self.started.start_delay_us / 1e6)
        args = decode_args(workflow_types(self.definition), data, role)
        return await self.definition.fn(self.ctx, *args)

    @staticmethod
    def _resolve_activity(
        future: asyncio.Future[Any], definition: ActivityDefinition, result: bytes
    ) -> None:
        role = f"activity {definition.name!r}"
        try:
            value = decode_result(activity_types(definition), result, role)
        except PayloadError as exc:  # the recorded result no longer fits the annotation
            future.set_exception(exc)
        else:
            future.set_result(value)

    def _close_from_main(self, at_us: int) -> None:
        main = self._main
        assert main is not None
        base = self._event_base(at_us)
        base["duration_ms"] = max(0, (at_us - self.started.at_us) // 1000)
        if main.cancelled():
            self._command(ev.WorkflowCancelled(**base, reason=self.cancel_reason))
            return
        exc = main.exception()
        if isinstance(exc, (_Divergence, _Discarded)):
            return
        if isinstance(exc, ContinueAsNew):
            self._command(
                ev.WorkflowContinuedAsNew(**base, args=exc.payload, new_run_id=uuid.uuid4().hex)
            )
            return
        if exc is None:
            try:
                result = encode(main.result(), f"result of workflow {self.info.workflow_type!r}")
            except PayloadError as err:
                self._command(
                    ev.WorkflowFailed(**base, error_type="PayloadError", error_message=str(err))
                )
                return
            self._command(ev.WorkflowCompleted(**base, result=result))
        elif isinstance(exc, asyncio.CancelledError):
            self._command(ev.WorkflowCancelled(**base, reason=self.cancel_reason))
        else:
            self._command(self._failed(at_us, exc))

    def _failed(self, at_us: int, exc: BaseException) -> ev.WorkflowFailed:
        base = self._event_base(at_us)
        base["duration_ms"] = max(0, (at_us - self.started.at_us) // 1000)
        return ev.WorkflowFailed(
            **base, error_type=type(exc).__name__, error_message=error_text(exc)
        )

    # -- commands issued by workflow code ----------------------------------------------------

    def _event_base(self, at_us: int | None = None) -> dict[str, Any]:
        return {
            "workflow_id": self.info.workflow_id,
            "run_id": self.info.run_id,
            "workflow_type": self.info.workflow_type,
            "at_us": round(self.loop.time() * 1e6) if at_us is None else at_us,
        }

    def event_base(self) -> dict[str, Any]:
        """The fields every event of this run carries, at workflow time (for helpers)."""
        return self._event_base()

    def command(self, event: ev.Event) -> bool:
        """Record a command issued by workflow code outside this module (a message to another
        workflow, an update's outcome): see :meth:`_command`."""
        return self._command(event)

    def _command(self, event: ev.Event) -> bool:
        """Record a command; returns False when replay matched it to history (not new)."""
        if self._discarded:
            raise _Discarded()
        if self.in_query:
            raise RuntimeError("query handlers are read-only: they cannot issue commands")
        if self.closed is not None:
            return False
        if isinstance(event, ev.CLOSING):
            self.closed = event
        recorded = self._recorded
        if recorded is not None:
            key = command_key(event)
            expected = recorded.pop(key, None)
            if expected is not None:
                if same_command(expected, event):
                    return False
                self._diverge(
                    f"event {expected.event_id}: history recorded {describe_command(expected)}, "
                    f"replayed code issued {describe_command(event)}"
                )
            if key[0] == "seq" and key[1] <= self._max_recorded_seq:
                self._diverge(
                    f"replayed code issued {describe_command(event)}, which history does not hold"
                )
            if key[0] == "close" and recorded:
                first = min(recorded.values(), key=lambda e: e.event_id)
                self._diverge(
                    f"event {first.event_id}: history recorded {describe_command(first)}, "
                    f"replayed code issued {describe_command(event)}"
                )
        self._issued.append(event)
        return True

    def _diverge(self, message: str) -> None:
        self._divergence = self._divergence or message
        raise _Divergence(message)

    def patched(self, patch_id: str, deprecated: bool) -> bool:
        """Whether the run takes patch ``patch_id``'s new code path (the same answer all run
        long): live, yes, and a marker is recorded; on replay, whether history holds it."""
        memo = self._patches.get(patch_id)
        if memo is not None:
            return memo
        if self._recorded is not None:  # replaying: the old path unless history says new
            marker = self._recorded.pop(patch_key(patch_id), None)
            found = marker is not None or patch_id in self._deprecated_patches
            self._deprecated_patches.discard(patch_id)
        else:
            self._command(
                ev.PatchMarker(**self._event_base(), patch_id=patch_id, deprecated=deprecated)
            )
            found = True
        self._patches[patch_id] = found
        return found

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def schedule_activity(
        self, definition: ActivityDefinition, args: Iterable[Any], options: ActivityOptions
    ) -> Any:
        payload = encode_args(
            activity_types(definition), list(args), f"activity {definition.name!r}"
        )
        seq = self.next_seq()
        future = self.loop.create_future()
        self._activities[seq] = (future, definition)
        event = ev.ActivityScheduled(
            **self._event_base(), seq=seq, activity=definition.name, args=payload
        )
        if self._command(event):
            self.activity_requests[seq] = ActivityRequest(definition, options)
        future.add_done_callback(lambda f: self._activity_done(f, seq, definition.name))
        return await future

    def _activity_done(self, future: asyncio.Future[Any], seq: int, name: str) -> None:
        if future.cancelled() and self._activities.pop(seq, None) is not None:
            self._command(ev.ActivityCancelled(**self._event_base(), seq=seq, activity=name))

    def start_timer(self, handle: asyncio.TimerHandle) -> None:
        seq = self.next_seq()
        self._timers[seq] = handle
        self._timer_seqs[id(handle)] = seq
        self._command(
            ev.TimerStarted(**self._event_base(), seq=seq, fire_at_us=round(handle.when() * 1e6))
        )

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        seq = self._timer_seqs.pop(id(handle), None)
        if seq is not None and self._timers.pop(seq, None) is not None:
            self._command(ev.TimerCancelled(**self._event_base(), seq=seq))

    def start_child(
        self,
        definition: WorkflowDefinition,
        args: Iterable[Any],
        workflow_id: str | None,
        parent_close_policy: str,
        options: RunOptions | None = None,
    ) -> ChildWorkflowHandle:
        payload = encode_args(
            workflow_types(definition), list(args), f"child workflow {definition.name!r}"
        )
        seq = self.next_seq()
        child_id = workflow_id or f"{self.info.workflow_id}/{seq}"
        future = self.loop.create_future()
        self._children[seq] = future
        self._command(
            ev.ChildStarted(
                **self._event_base(),
                seq=seq,
                child_workflow_id=child_id,
                child_workflow_type=definition.name,
                code_ref=definition.code_ref,
                args=payload,
                parent_close_policy=parent_close_policy,
                run_options=None if options is None else msgspec.structs.asdict(options),
            )
        )
        return ChildWorkflowHandle(child_id, future, self.messaging, self, seq)

    def set_search_attributes(self, changed: dict[str, Any]) -> None:
        merged = search_attributes.merge(self.search_attributes, changed)
        seq = self.next_seq()
        self._command(
            ev.SearchAttributesSet(
                **self._event_base(), seq=seq, changed=changed, search_attributes=merged
            )
        )
        self.search_attributes = merged

    def continue_as_new_args(self, args: Iterable[Any]) -> bytes:
        """``args`` encoded for the next run of this workflow (its annotations checked)."""
        return encode_args(
            workflow_types(self.definition), list(args), f"workflow {self.info.workflow_type!r}"
        )

    def _deliver_signal(self, name: str, value: Any) -> None:
        if self.messaging.deliver(name, value):
            return
        waiters = self.signal_waiters.get(name)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(value)
                return
        self.signals.setdefault(name, collections.deque()).append(value)

    # -- queries and lifetime -----------------------------------------------------------------

    def query(self, name: str, args: Sequence[Any]) -> Any:
        """Call the query handler ``name``; read-only, never writes history.

        Raises:
            KeyError: no handler of that name (the caller turns it into UnknownQuery).
            WorkflowBlocked, QueryChangedState, BaseException: as :meth:`call_read_only`.
        """
        handler = self.query_handlers[name]
        return self.call_read_only(handler, args, f"query handler {name!r}")

    def call_read_only(self, handler: Callable[..., Any], args: Sequence[Any], what: str) -> Any:
        """Call ``handler(*args)`` (a query handler, an update validator) as read-only code.

        The handler runs with the run's loop as the running loop, so whatever it schedules
        lands there, where it is seen (and never reaches the partition's own loop).

        Raises:
            WorkflowBlocked: the handler held the partition past the watch's threshold.
            QueryChangedState: the handler changed what the run will do next: it woke
                workflow code, or rebound or resized a variable it shares with the workflow.
            BaseException: whatever the handler raised.
        """
        before = guard.captured(handler)
        watch = self._watch
        previous = events._get_running_loop()
        events._set_running_loop(self.loop)
        self.in_query = True
        if watch is not None:
            watch.enter(self.info.workflow_id, what)
        error: BaseException | None = None
        value = None
        try:
            value = handler(*args)
        except BaseException as exc:  # reason: raised below, after the checks that outrank it
            error = exc
        finally:
            held_s = watch.leave() if watch is not None else 0.0
            self.in_query = False
            events._set_running_loop(previous)
        if held_s:
            assert watch is not None
            raise WorkflowBlocked(watch.blocked_message(held_s))
        changed = self._changed_by_query(handler, before)
        if changed:
            raise QueryChangedState(
                f"{what} of workflow {self.info.workflow_id!r} changed the run's state "
                f"({changed}): query handlers and update validators must only read, since a "
                "replay, which runs neither, would not see the change; the run is rebuilt "
                "from its history"
            )
        if error is not None:
            raise error
        return value

    def _changed_by_query(self, handler: Callable[..., Any], before: list[Any]) -> str:
        if self.loop.ready_count():
            return "it woke workflow code: it resolved a future, set an event or cancelled a task"
        if guard.captured(handler) != before:
            return "it rebound or resized a variable it shares with the workflow"
        return ""

    def open_children(self) -> list[int]:
        """Sequence numbers of children started and not yet resolved."""
        return list(self._children)

    def discard(self) -> None:
        """Drop the run: close its coroutines without issuing commands, close its loop."""
        if self._discarded:
            return
        self._discarded = True
        for task in self.loop.tasks():
            coro = task.get_coro()
            # User finally-blocks may raise anything while their coroutine is closed.
            with contextlib.suppress(BaseException):
                coro.close()  # type: ignore[union-attr]  # reason: our tasks wrap coroutines
        self.loop.close()
