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
from typing import Any, Literal, NoReturn, Protocol, get_args

from duraflow.actors.messages import RunOptions
from duraflow.engine import run_options, search_attributes
from duraflow.engine.definitions import (
    ActivityDefinition,
    ActivityOptions,
    WorkflowDefinition,
    activity_definition,
    check_name,
    workflow_definition,
)
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.messaging import (
    BLOCK_CONDITIONS,
    BlockCondition,
    ExternalWorkflowHandle,
    Messaging,
    RunCore,
)
from duraflow.engine.retry import Duration, RetryPolicy, check_retry, parse_duration, parse_timeout
from duraflow.errors import (
    ChildWorkflowError,
    ConfigurationError,
    InvalidDuration,
    NoParentWorkflow,
)

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


class ContinueAsNew(BaseException):
    """Raised by ``ctx.continue_as_new``: unwinds the workflow's code so its run closes as
    ``continued_as_new``; a BaseException so that ``except Exception`` does not catch it."""

    def __init__(self, payload: bytes) -> None:
        super().__init__("continue as new")
        self.payload = payload


class ChildWorkflowHandle(ExternalWorkflowHandle):
    """A child workflow started by this run. ``await handle.result()`` waits for it;
    ``signal``, ``query`` and ``cancel`` reach it as :class:`ExternalWorkflowHandle`'s do
    (one sent right after the start waits until the child's start arrived)."""

    def __init__(
        self,
        workflow_id: str,
        future: asyncio.Future[Any],
        messaging: Messaging,
        run: RunCore,
        seq: int,
    ) -> None:
        super().__init__(messaging, run, workflow_id, child_seq=seq)
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

    @property
    def messaging(self) -> Messaging:
        """Requests to other workflows, block_until, signal handlers, conditions."""

    @property
    def updates(self) -> Any:
        """The run's updates (``duraflow.engine.run_updates.RunUpdates``)."""

    def event_base(self) -> dict[str, Any]: ...

    def command(self, event: Any) -> bool: ...

    def next_seq(self) -> int: ...

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
        options: RunOptions | None = None,
    ) -> ChildWorkflowHandle:
        """Record the child's start; its handle's result resolves when the child closes."""

    # -- a run's lifecycle (continue-as-new, search attributes) --

    @property
    def search_attributes(self) -> dict[str, Any]: ...

    def set_search_attributes(self, changed: dict[str, Any]) -> None:
        """Record the change (a command) and apply it."""

    def continue_as_new_args(self, args: Iterable[Any]) -> bytes:
        """``args`` encoded for the next run."""

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

    # -- updates (DESIGN section 5) ------------------------------------------------------------

    def set_update_handler(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        validator: Callable[..., Any] | None = None,
    ) -> None:
        """Answer updates named ``name`` with ``handler(payload)`` (``handler()`` when the
        caller sent no payload); the caller gets its result once it is recorded.

        The handler may be async and await activities, timers and signals like the workflow's
        own code; the run goes on meanwhile. A handler that raises fails the update
        (``UpdateFailed`` for the caller), not the run.

        Args:
            validator: called first with the same arguments, read-only like a query handler;
                it refuses the update by raising (the caller gets ``UpdateRejected`` with its
                message, and nothing is recorded).

        Raises:
            TypeError: ``name`` is not a non-empty str, ``handler`` is not callable, or
                ``validator`` is async.
        """
        if self._run.in_query:
            raise RuntimeError("query handlers are read-only: they cannot set update handlers")
        self._run.updates.set_handler(name, handler, validator)

    async def start_child(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        parent_close_policy: ParentClosePolicy = "terminate",
        execution_timeout: Duration | None = None,
        run_timeout: Duration | None = None,
        retry: RetryPolicy | None = None,
        start_delay: Duration | None = None,
        search_attributes: dict[str, Any] | None = None,
    ) -> ChildWorkflowHandle:
        """Start a child workflow (possibly on another partition) and return its handle.

        Args:
            workflow_id: the child's ID (default: ``"<parent id>/<n>"``, deterministic).
            parent_close_policy: what happens to the child if this run closes first:
                ``"terminate"`` (default), ``"request_cancel"`` or ``"abandon"``.
            execution_timeout, run_timeout, retry, start_delay, search_attributes: the
                child's run options, as for ``client.start``; the handle's result is the
                last run's of the child's chain.

        Raises:
            UnknownWorkflowType: ``workflow`` is not a registered workflow.
            InvalidWorkflowId: ``workflow_id`` is not a valid ID.
            ConfigurationError: an unknown ``parent_close_policy``; a bad run option.
            InvalidDuration: a bad timeout or start delay.
        """
        definition = workflow_definition(workflow)
        options = run_options.make(
            execution_timeout=execution_timeout,
            run_timeout=run_timeout,
            retry=retry,
            start_delay=start_delay,
            search_attributes=search_attributes,
        )
        if parent_close_policy not in PARENT_CLOSE_POLICIES:
            raise ConfigurationError(
                f"parent_close_policy must be one of {PARENT_CLOSE_POLICIES}, "
                f"got {parent_close_policy!r}"
            )
        if workflow_id is not None:
            check_workflow_id(workflow_id)
        return self._run.start_child(definition, args, workflow_id, parent_close_policy, options)

    async def execute_child(
        self, workflow: Callable[..., Any] | str, *args: Any, workflow_id: str | None = None
    ) -> Any:
        """Start a child workflow and wait for its result (see :meth:`start_child`)."""
        handle = await self.start_child(workflow, *args, workflow_id=workflow_id)
        return await handle.result()

    # -- a run's lifecycle: continue-as-new and search attributes (DESIGN section 5) ----------

    async def continue_as_new(self, *args: Any) -> NoReturn:
        """End this run and start a new run of the same workflow ID with ``args``, in one
        step: the run closes as ``continued_as_new``, signals it received and did not take
        go to the new run in their order, and the new run's history starts empty (how an
        eternal workflow keeps its history bounded). Its run options (timeouts, retry
        policy, search attributes) carry over; ``ctx.info.attempt`` starts at 1 again.

        Call it from the workflow function itself (it raises, to unwind the code; do not
        catch it). Activities and timers still pending are dropped; open children follow
        their parent-close policy.

        Raises:
            PayloadError: an argument cannot be encoded (or the annotations refuse it).
        """
        raise ContinueAsNew(self._run.continue_as_new_args(args))

    def set_search_attributes(self, **attributes: Any) -> None:
        """Set (or with None, remove) search attributes of this run: typed values (str,
        int, float, bool, datetime) that ``client.list(search={...})`` filters on and that
        ``describe()``, ``live_workflows`` and the archive's ``workflows`` table show.
        Recorded in history (``workflow.search_attributes_set``).

        Raises:
            ConfigurationError: a key that is not an identifier, or a value of another type.
        """
        if self._run.in_query:
            raise RuntimeError("query handlers are read-only: they cannot set search attributes")
        changed = search_attributes.check(attributes, "set_search_attributes", removals=True)
        if changed:
            self._run.set_search_attributes(changed)

    @property
    def search_attributes(self) -> dict[str, Any]:
        """This run's search attributes now (a copy)."""
        return dict(self._run.search_attributes)

    # -- workflows talking to workflows (DESIGN section 5) ------------------------------------

    def external_workflow(self, workflow_id: str) -> ExternalWorkflowHandle:
        """A handle on any workflow ID (any partition, its latest run) to signal, query or
        cancel it from this workflow.

        Raises:
            InvalidWorkflowId: ``workflow_id`` is not a valid ID.
        """
        check_workflow_id(workflow_id)
        return ExternalWorkflowHandle(self._run.messaging, self._run, workflow_id)

    def _parent(self, verb: str) -> ExternalWorkflowHandle:
        info = self._run.info
        if info.parent_workflow_id is None:
            raise NoParentWorkflow(
                f"cannot {verb}: workflow {info.workflow_id!r} was not started as a child"
            )
        return ExternalWorkflowHandle(
            self._run.messaging, self._run, info.parent_workflow_id, info.parent_run_id
        )

    async def signal_parent(self, name: str, payload: Any = None) -> None:
        """Signal the run that started this one as its child (durable, exactly once, in
        order with this run's other signals).

        Raises:
            NoParentWorkflow: this run is not a child.
            WorkflowClosed: the parent's run has closed.
        """
        await self._parent(f"signal_parent({name!r})").signal(name, payload)

    async def query_parent(self, name: str, *args: Any) -> Any:
        """Query the run that started this one; the answer is recorded for replay.

        Raises:
            NoParentWorkflow: this run is not a child.
            WorkflowClosed: the parent's run has closed.
            UnknownQuery: the parent has no handler of that name.
            QueryFailed: the handler raised.
        """
        return await self._parent(f"query_parent({name!r})").query(name, *args)

    async def block_until(
        self,
        workflow_ids: Iterable[str],
        *,
        condition: BlockCondition = "all_complete",
        timeout: Duration | None = None,
    ) -> dict[str, str]:
        """Wait until the workflows ``workflow_ids`` (any partition) are closed, with any
        status: all of them, or (``"any_complete"``) one. IDs that do not exist yet count
        once a run of theirs closes.

        Returns:
            ``{workflow_id: status}`` of the closed ones.

        Raises:
            TimeoutError: ``timeout`` elapsed first (a durable timer).
            ConfigurationError: no IDs, this run's own ID, or an unknown ``condition``.
            InvalidWorkflowId: an ID that is not a valid ID.
            InvalidDuration: ``timeout`` is not a duration.
        """
        if isinstance(workflow_ids, str):
            raise ConfigurationError("block_until takes a list of workflow IDs, not one str")
        ids = list(dict.fromkeys(check_workflow_id(i) for i in workflow_ids))
        if not ids:
            raise ConfigurationError("block_until needs at least one workflow ID")
        if self._run.info.workflow_id in ids:
            raise ConfigurationError(
                f"block_until cannot wait for its own workflow {self._run.info.workflow_id!r}"
            )
        if condition not in BLOCK_CONDITIONS:
            raise ConfigurationError(
                f"block_until condition must be one of {BLOCK_CONDITIONS}, got {condition!r}"
            )
        seconds = None if timeout is None else parse_duration(timeout, "block_until timeout")
        return await self._run.messaging.block_until(ids, condition, seconds)

    def set_signal_handler(self, name: str, handler: Callable[[Any], Any]) -> None:
        """Call ``handler(payload)`` for each signal ``name`` (a plain or async function),
        in arrival order; signals that arrived before are handed to it first. A handler
        that raises fails the run. ``wait_for_signal`` no longer sees signals of that name.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"signal name must be a non-empty str, got {name!r}")
        if not callable(handler):
            raise TypeError(f"signal handler for {name!r} must be callable, got {handler!r}")
        if self._run.in_query:
            raise RuntimeError("query handlers are read-only: they cannot set signal handlers")
        run = self._run
        run.messaging.set_signal_handler(name, handler, run.signals.get(name))

    async def wait_condition(
        self, condition: Callable[[], Any], *, timeout: Duration | None = None
    ) -> None:
        """Wait until ``condition()`` is true; it is checked after each thing that happens to
        the run (a signal, an activity result, a timer, ...), so it must only read state.

        Raises:
            TimeoutError: ``timeout`` elapsed first (a durable timer).
            InvalidDuration: ``timeout`` is not a duration.
        """
        if not callable(condition):
            raise TypeError(f"wait_condition needs a callable, got {condition!r}")
        seconds = None if timeout is None else parse_duration(timeout, "wait_condition timeout")
        await self._run.messaging.wait_condition(condition, seconds)

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


__all__ = [
    "ChildWorkflowError",
    "ChildWorkflowHandle",
    "ContinueAsNew",
    "ExternalWorkflowHandle",
    "WorkflowContext",
    "WorkflowInfo",
]
