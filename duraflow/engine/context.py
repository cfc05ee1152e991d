"""WorkflowContext: the only door from workflow code to the engine.

Everything a workflow does that must survive a crash goes through here: activities, durable
sleeps, signals, child workflows, and the deterministic sources of time, randomness and IDs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterable
from random import Random
from typing import Any, Literal, Protocol, get_args

from duraflow.engine.definitions import (
    ActivityDefinition,
    ActivityOptions,
    Duration,
    RetryPolicy,
    WorkflowDefinition,
    activity_definition,
    check_name,
    check_retry,
    parse_duration,
    parse_timeout,
    workflow_definition,
)
from duraflow.engine.ids import check_workflow_id
from duraflow.errors import ChildWorkflowError, ConfigurationError, InvalidDuration

_MISSING: Any = object()

ParentClosePolicy = Literal["terminate", "request_cancel", "abandon"]
"""What happens to an open child when its parent closes."""
PARENT_CLOSE_POLICIES: tuple[str, ...] = get_args(ParentClosePolicy)


@dataclasses.dataclass(frozen=True)
class WorkflowInfo:
    """Who this run is: workflow ID, run ID, type, attempt and parent (if a child)."""

    workflow_id: str
    run_id: str
    workflow_type: str
    attempt: int
    parent_workflow_id: str | None
    parent_run_id: str | None


class ChildWorkflowHandle:
    """A child workflow started by this run. ``await handle.result()`` waits for it."""

    def __init__(self, workflow_id: str, future: asyncio.Future[Any]) -> None:
        self.workflow_id = workflow_id
        self._future = future

    async def result(self) -> Any:
        """The child's result.

        Raises:
            ChildWorkflowError: the child failed, was cancelled or terminated, or could not start.
        """
        # shield: a timeout around one await must not lose the child's outcome for later awaits.
        return await asyncio.shield(self._future)


class RunState(Protocol):
    """What a context uses of its run. ``duraflow.engine.run.WorkflowRun`` implements it;
    declared here so that this module, which the run imports, does not import the run."""

    @property
    def info(self) -> WorkflowInfo: ...

    @property
    def replaying(self) -> bool: ...

    @property
    def cancel_requested(self) -> bool: ...

    @property
    def in_query(self) -> bool:
        """True while a query handler runs (it must not change the run)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The run's deterministic loop: its ``time()`` is workflow time."""

    @property
    def random(self) -> Random: ...

    @property
    def signals(self) -> dict[str, collections.deque[Any]]:
        """Signals received and not taken yet, by name, in order."""

    @property
    def signal_waiters(self) -> dict[str, collections.deque[asyncio.Future[Any]]]:
        """Futures of ``wait_signal`` calls waiting, by signal name, in order."""

    @property
    def query_handlers(self) -> dict[str, Callable[..., Any]]: ...

    async def schedule_activity(
        self, definition: ActivityDefinition, args: Iterable[Any], options: ActivityOptions
    ) -> Any:
        """Record the activity's scheduling and wait for its result."""

    def start_child(
        self,
        definition: WorkflowDefinition,
        args: Iterable[Any],
        workflow_id: str | None,
        parent_close_policy: str,
    ) -> ChildWorkflowHandle:
        """Record the child's start; its handle's result resolves when the child closes."""

    def patched(self, patch_id: str, deprecated: bool) -> bool:
        """Whether the run takes the patch's new code path (recording a marker if live)."""


class WorkflowContext:
    """Passed as the first argument of every workflow function."""

    def __init__(self, run: RunState) -> None:
        self._run = run

    @property
    def info(self) -> WorkflowInfo:
        """Workflow ID, run ID, type, attempt and parent of this run."""
        return self._run.info

    @property
    def is_replaying(self) -> bool:
        """True while the run is being rebuilt from history (use it to mute side logging)."""
        return self._run.replaying

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel of this run has been requested."""
        return self._run.cancel_requested

    def now(self) -> dt.datetime:
        """Workflow time (UTC): the time of the event being processed; the same on replay."""
        return dt.datetime.fromtimestamp(self._run.loop.time(), tz=dt.timezone.utc)

    def time(self) -> float:
        """Workflow time in seconds since the epoch (see :meth:`now`)."""
        return self._run.loop.time()

    def random(self) -> float:
        """A deterministic random float in [0, 1), seeded by the run ID."""
        return self._random("random").random()

    def randint(self, a: int, b: int) -> int:
        """A deterministic random integer N with a <= N <= b."""
        return self._random("randint").randint(a, b)

    def uuid4(self) -> uuid.UUID:
        """A deterministic random UUID (version 4 layout), the same on every replay."""
        return uuid.UUID(int=self._random("uuid4").getrandbits(128), version=4)

    def _random(self, what: str) -> Any:
        # A query drawing from the run's generator would shift what the run draws next, and a
        # replay (which runs no queries) would then see other values than the live run did.
        if self._run.in_query:
            raise RuntimeError(f"query handlers are read-only: they cannot call ctx.{what}()")
        return self._run.random

    async def activity(
        self,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        start_to_close_timeout: Duration | None = None,
        schedule_to_close_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
    ) -> Any:
        """Run an ``@activity`` with ``args`` and return its result, retrying per its policy.

        Keyword arguments override the activity's own options for this call.

        Raises:
            NotAnActivityError: ``fn`` is not an ``@activity``.
            PayloadError: an argument cannot be encoded.
            ConfigurationError: ``retry`` is not a RetryPolicy.
            InvalidDuration: a timeout that is not a duration, is 0, negative or over 100 years.
            ActivityError: the activity failed for good.
        """
        definition = activity_definition(fn)
        base = definition.options
        options = ActivityOptions(
            retry=check_retry(retry) or base.retry,
            start_to_close_timeout=_pick(
                start_to_close_timeout, base.start_to_close_timeout, "start_to_close_timeout"
            ),
            schedule_to_close_timeout=_pick(
                schedule_to_close_timeout,
                base.schedule_to_close_timeout,
                "schedule_to_close_timeout",
            ),
            heartbeat_timeout=_pick(heartbeat_timeout, base.heartbeat_timeout, "heartbeat_timeout"),
        )
        return await self._run.schedule_activity(definition, args, options)

    async def sleep(self, duration: Duration) -> None:
        """Sleep durably: a timer that survives crashes and restarts.

        Raises:
            InvalidDuration: not a duration, negative, or over 100 years.
        """
        await asyncio.sleep(parse_duration(duration, "sleep duration"))

    async def sleep_until(self, when: dt.datetime) -> None:
        """Sleep durably until ``when`` (an aware datetime; naive means UTC); a time already
        past returns at once.

        Raises:
            InvalidDuration: ``when`` is not a datetime, or is more than 100 years ahead.
        """
        if not isinstance(when, dt.datetime):
            raise InvalidDuration(f"sleep_until needs a datetime.datetime, got {when!r}")
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        ahead = when.timestamp() - self._run.loop.time()
        if ahead > 0:
            parse_duration(ahead, f"sleep_until({when.isoformat()})")  # at most 100 years
        await asyncio.sleep(max(0.0, ahead))

    async def wait_for_signal(
        self, name: str, *, timeout: Duration | None = None, default: Any = _MISSING
    ) -> Any:
        """The next signal named ``name`` (signals are buffered in order until taken).

        Args:
            timeout: give up after this long (a durable timer; at most 100 years).
            default: returned when the timeout elapses; without it a TimeoutError is raised.

        Raises:
            InvalidDuration: ``timeout`` is not a duration, negative, or over 100 years.
        """
        seconds = None if timeout is None else parse_duration(timeout, "signal timeout")
        run = self._run
        buffered = run.signals.get(name)
        if buffered:
            return buffered.popleft()
        waiter = run.loop.create_future()
        run.signal_waiters.setdefault(name, collections.deque()).append(waiter)
        if seconds is None:
            return await waiter
        try:
            return await asyncio.wait_for(waiter, seconds)
        except asyncio.TimeoutError:
            if default is _MISSING:
                raise
            return default

    def set_query_handler(self, name: str, handler: Callable[..., Any]) -> None:
        """Answer queries named ``name`` with ``handler(*args)`` (sync, read-only)."""
        if asyncio.iscoroutinefunction(handler):
            raise TypeError(f"query handler {name!r} must be a plain function, not async")
        if self._run.in_query:
            raise RuntimeError("query handlers are read-only: they cannot set query handlers")
        self._run.query_handlers[name] = handler

    async def start_child(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        parent_close_policy: ParentClosePolicy = "terminate",
    ) -> ChildWorkflowHandle:
        """Start a child workflow (possibly on another partition) and return its handle.

        Args:
            workflow_id: the child's ID (default: ``"<parent id>/<n>"``, deterministic).
            parent_close_policy: what happens to the child if this run closes first:
                ``"terminate"`` (default), ``"request_cancel"`` or ``"abandon"``.

        Raises:
            UnknownWorkflowType: ``workflow`` is not a registered workflow.
            InvalidWorkflowId: ``workflow_id`` is not a valid ID.
            ConfigurationError: an unknown ``parent_close_policy``.
        """
        definition = workflow_definition(workflow)
        if parent_close_policy not in PARENT_CLOSE_POLICIES:
            raise ConfigurationError(
                f"parent_close_policy must be one of {PARENT_CLOSE_POLICIES}, "
                f"got {parent_close_policy!r}"
            )
        if workflow_id is not None:
            check_workflow_id(workflow_id)
        return self._run.start_child(definition, args, workflow_id, parent_close_policy)

    async def execute_child(
        self, workflow: Callable[..., Any] | str, *args: Any, workflow_id: str | None = None
    ) -> Any:
        """Start a child workflow and wait for its result (see :meth:`start_child`)."""
        handle = await self.start_child(workflow, *args, workflow_id=workflow_id)
        return await handle.result()

    # -- code evolution (patching) ------------------------------------------------------------

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new code path of patch ``patch_id`` (Temporal's
        ``patched``): True in a run that reaches this call with the new code (a
        ``workflow.patched`` marker is recorded), False when replaying a history recorded
        before the patch existed (no marker where the call is). The answer stays the same for
        the rest of the run, so code that already ran keeps replaying::

            if ctx.patched("fix-rounding"):
                total = round(total, 2)      # new behaviour
            else:
                total = int(total)           # what runs recorded before the fix did

        Raises:
            ConfigurationError: ``patch_id`` is not a non-empty str without control characters.
        """
        return self._run.patched(_patch_id(patch_id), False)

    def deprecate_patch(self, patch_id: str) -> None:
        """Say that every run still open took patch ``patch_id`` (or none reaches it): the
        old code path may go. Histories with or without the patch's marker replay; new runs
        record a marker, so code still calling ``patched(patch_id)`` replays them too.

        Raises:
            ConfigurationError: ``patch_id`` is not a non-empty str without control characters.
        """
        self._run.patched(_patch_id(patch_id), True)


def _patch_id(patch_id: object) -> str:
    checked = check_name(patch_id, "patch ID")
    if checked is None:
        raise ConfigurationError("patch ID must be a non-empty str, got None")
    return checked


def _pick(override: Duration | None, default: float | None, what: str) -> float | None:
    return default if override is None else parse_timeout(override, what)


__all__ = ["ChildWorkflowError", "ChildWorkflowHandle", "WorkflowContext", "WorkflowInfo"]
