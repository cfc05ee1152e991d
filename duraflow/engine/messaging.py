"""A run's side of workflows talking to workflows: signals, queries and cancels it sends to
other workflows, ``block_until``, signal handlers and ``wait_condition`` (DESIGN section 5).

Each request to another workflow is a command event with a sequence number, sent through the
partition's outbox and resolved by ``workflow.external_completed`` or
``workflow.external_failed`` of the same number, like an activity. A run has one request in
flight at a time (later ones wait their turn in issue order), so its signals arrive in the
order it sent them, across partitions and restarts; the receiver appends a resent signal once
(its request ID is the sender's run ID and sequence number).

``block_until`` asks each target's partition to tell this run when the ID closes
(``workflow.block_until_started``); each closing is recorded as it arrives
(``workflow.blocked_workflow_closed``) and the run decides when its condition holds.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import Callable
from typing import Any, Literal, Protocol, get_args

from duraflow import errors
from duraflow.cdc import events as ev
from duraflow.errors import DuraflowError
from duraflow.storage.codec import decode, encode

BlockCondition = Literal["all_complete", "any_complete"]
"""When ``block_until`` returns: every ID closed, or any one."""
BLOCK_CONDITIONS: tuple[str, ...] = get_args(BlockCondition)


class RunCore(Protocol):
    """What messaging uses of its run (``duraflow.engine.run.WorkflowRun``)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def next_seq(self) -> int: ...

    def event_base(self) -> dict[str, Any]:
        """The fields every event of the run carries, at workflow time."""

    def command(self, event: ev.Event) -> bool:
        """Record a command (False when replay matched it to history)."""


class _Block:
    __slots__ = ("closed", "condition", "future", "ids")

    def __init__(self, ids: list[str], condition: str, future: asyncio.Future[None]) -> None:
        self.ids = ids
        self.condition = condition
        self.future = future
        self.closed: dict[str, str] = {}

    def met(self) -> bool:
        if self.condition == "any_complete":
            return bool(self.closed)
        return len(self.closed) == len(self.ids)


class Messaging:
    """The messaging state of one run (see the module docstring)."""

    def __init__(self, run: RunCore) -> None:
        self._run = run
        self._lane_busy = False
        self._lane: collections.deque[asyncio.Future[None]] = collections.deque()
        self._requests: dict[int, tuple[asyncio.Future[Any], bool]] = {}
        self._blocks: dict[int, _Block] = {}
        self._conditions: list[tuple[Callable[[], Any], asyncio.Future[None]]] = []
        self.signal_handlers: dict[str, Callable[[Any], Any]] = {}
        self.handler_error: BaseException | None = None
        """The first error a signal handler raised: the run fails with it."""

    # -- requests to other workflows ------------------------------------------------------

    async def request(self, build: Callable[[int], ev.Event], answers: bool) -> Any:
        """Issue the command ``build(seq)`` once the run's earlier requests resolved, and
        return its outcome (a query's decoded answer when ``answers``).

        Raises:
            DuraflowError: the target refused it (WorkflowClosed, WorkflowNotFound, ...).
        """
        await self._take_lane()
        run = self._run
        seq = run.next_seq()
        future = run.loop.create_future()
        self._requests[seq] = (future, answers)
        run.command(build(seq))
        # shield: a cancelled caller must not lose the resolution (and the lane) for good.
        return await asyncio.shield(future)

    async def _take_lane(self) -> None:
        if not self._lane_busy:
            self._lane_busy = True
            return
        turn = self._run.loop.create_future()
        self._lane.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release_lane()  # handed the lane just as it was cancelled
            raise

    def _release_lane(self) -> None:
        while self._lane:
            turn = self._lane.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._lane_busy = False

    def awaiting(self, seq: int) -> bool:
        """Whether request ``seq`` is sent and not resolved yet."""
        return seq in self._requests

    # -- block_until ------------------------------------------------------------------------

    async def block_until(
        self, ids: list[str], condition: str, seconds: float | None
    ) -> dict[str, str]:
        run = self._run
        seq = run.next_seq()
        block = _Block(ids, condition, run.loop.create_future())
        self._blocks[seq] = block
        run.command(
            ev.BlockUntilStarted(
                **run.event_base(), seq=seq, workflow_ids=list(ids), condition=condition
            )
        )
        try:
            if seconds is None:
                await asyncio.shield(block.future)
            else:
                await asyncio.wait_for(asyncio.shield(block.future), seconds)
        except (asyncio.CancelledError, TimeoutError):
            self._end_block(seq, block)
            raise
        except BaseException:
            self._blocks.pop(seq, None)  # the run is being dropped: issue nothing
            raise
        self._end_block(seq, block)
        return dict(block.closed)

    def _end_block(self, seq: int, block: _Block) -> None:
        del self._blocks[seq]
        pending = [i for i in block.ids if i not in block.closed]
        if pending:
            run = self._run
            run.command(ev.BlockUntilEnded(**run.event_base(), seq=seq, pending=pending))

    def watching(self, seq: int, target: str) -> bool:
        """Whether ``block_until`` ``seq`` still waits for ``target`` to close."""
        block = self._blocks.get(seq)
        return block is not None and target in block.ids and target not in block.closed

    # -- resolutions --------------------------------------------------------------------------

    def resolve(self, event: ev.Event) -> bool:
        """Apply a resolution of a request or a block; False if ``event`` is none of them.

        Raises:
            KeyError: nothing of this run waits on it (the run reports a non-determinism).
        """
        if isinstance(event, ev.BlockedWorkflowClosed):
            block = self._blocks[event.seq]
            block.closed[event.target_workflow_id] = event.status
            if block.met() and not block.future.done():
                block.future.set_result(None)
            return True
        if not isinstance(event, (ev.ExternalCompleted, ev.ExternalFailed)):
            return False
        future, answers = self._requests.pop(event.seq)
        self._release_lane()
        if future.done():
            return True
        if isinstance(event, ev.ExternalFailed):
            future.set_exception(remote_error(event.error_type, event.error_message))
        else:
            future.set_result(decode(event.result) if answers else None)
        return True

    # -- signal handlers and conditions ---------------------------------------------------

    def set_signal_handler(
        self, name: str, handler: Callable[[Any], Any], buffered: collections.deque[Any] | None
    ) -> None:
        """Send signals ``name`` to ``handler`` from now on, those ``buffered`` first."""
        self.signal_handlers[name] = handler
        while buffered:
            self.deliver(name, buffered.popleft())

    def deliver(self, name: str, value: Any) -> bool:
        """Hand a signal to its handler (in a task of the run, in arrival order); False if
        no handler takes signals of that name."""
        handler = self.signal_handlers.get(name)
        if handler is None:
            return False
        self._run.loop.create_task(self._call_handler(name, handler, value))
        return True

    async def _call_handler(self, name: str, handler: Callable[[Any], Any], value: Any) -> None:
        try:
            result = handler(value)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            if self.handler_error is None:
                exc.add_note(f"raised by the handler of signal {name!r}")
                self.handler_error = exc

    async def wait_condition(self, check: Callable[[], Any], seconds: float | None) -> None:
        if check():
            return
        future: asyncio.Future[None] = self._run.loop.create_future()
        self._conditions.append((check, future))
        if seconds is None:
            await future
        else:
            await asyncio.wait_for(future, seconds)

    def settle(self) -> bool:
        """Wake the ``wait_condition`` calls whose condition now holds (checked in the order
        they began); True if any woke (the run then runs its loop again)."""
        woke = False
        waiting = []
        for check, future in self._conditions:
            if future.done():
                continue
            try:
                holds = check()
            except Exception as exc:
                future.set_exception(exc)
                woke = True
                continue
            if holds:
                future.set_result(None)
                woke = True
            else:
                waiting.append((check, future))
        self._conditions = waiting
        return woke


def remote_error(error_type: str, message: str) -> DuraflowError:
    """The error another workflow's partition refused a request with, rebuilt by its type
    name (a duraflow error of that name, else a DuraflowError naming it)."""
    cls = getattr(errors, error_type, None)
    if isinstance(cls, type) and issubclass(cls, DuraflowError):
        try:
            return cls(message)
        except TypeError:  # an error whose constructor takes other arguments
            pass
    return DuraflowError(f"{error_type}: {message}")


class ExternalWorkflowHandle:
    """Another workflow, seen from workflow code (``ctx.external_workflow(id)``): signal,
    query or cancel it. Any workflow ID, on any partition; without ``run_id``, the ID's
    latest run. Each call is recorded in history and replays without being sent again.

    Attributes:
        workflow_id: the target's workflow ID.
        run_id: the target run (None: the latest run of the ID when the request arrives).
    """

    def __init__(
        self,
        messaging: Messaging,
        run: RunCore,
        workflow_id: str,
        run_id: str | None = None,
        child_seq: int | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self._messaging = messaging
        self._core = run
        self._child_seq = child_seq

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.workflow_id!r})"

    async def signal(self, name: str, payload: Any = None) -> None:
        """Send signal ``name`` with ``payload``; returns once the target's partition
        recorded it. Durable and exactly once; a run's signals arrive in the order it sent
        them.

        Raises:
            PayloadError: ``payload`` cannot be encoded.
            WorkflowNotFound: no workflow with that ID.
            WorkflowClosed: the target run has closed.
        """
        _check_name(name, "signal")
        data = encode(payload, f"signal {name!r} to workflow {self.workflow_id!r}")
        base = self._core.event_base
        await self._messaging.request(
            lambda seq: ev.ExternalSignalRequested(
                **base(),
                seq=seq,
                target_workflow_id=self.workflow_id,
                target_run_id=self.run_id,
                name=name,
                payload=data,
                child_seq=self._child_seq,
            ),
            answers=False,
        )

    async def query(self, name: str, *args: Any) -> Any:
        """Ask the target's query handler ``name``; the answer is recorded, so a replay
        returns it without asking again.

        Raises:
            PayloadError: an argument cannot be encoded.
            WorkflowNotFound: no workflow with that ID.
            WorkflowClosed: the target run has closed.
            UnknownQuery: the target has no handler of that name.
            QueryFailed: the handler raised.
        """
        _check_name(name, "query")
        data = encode(list(args), f"arguments of query {name!r} of workflow {self.workflow_id!r}")
        base = self._core.event_base
        return await self._messaging.request(
            lambda seq: ev.ExternalQueryRequested(
                **base(),
                seq=seq,
                target_workflow_id=self.workflow_id,
                target_run_id=self.run_id,
                name=name,
                args=data,
                child_seq=self._child_seq,
            ),
            answers=True,
        )

    async def cancel(self, reason: str = "") -> None:
        """Ask the target's latest run to cancel (its code sees a CancelledError and may
        clean up); returns once its partition recorded the request.

        Raises:
            WorkflowNotFound: no workflow with that ID.
            WorkflowClosed: its latest run has closed.
        """
        if not isinstance(reason, str):
            raise TypeError(f"cancel reason must be a str, got {type(reason).__name__}")
        base = self._core.event_base
        await self._messaging.request(
            lambda seq: ev.ExternalCancelRequested(
                **base(),
                seq=seq,
                target_workflow_id=self.workflow_id,
                reason=reason,
                child_seq=self._child_seq,
            ),
            answers=False,
        )


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what} name must be a non-empty str, got {name!r}")
