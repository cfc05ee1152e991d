"""Client-side batching: requests to one partition made in the same event-loop iteration
travel as one host call, and results come back through one long-poll per partition.

A thousand ``start_async`` calls gathered together cost one call per partition, not a
thousand; the partition handles the batch in one turn (one SQLite commit). Waiting for a
thousand results costs one registration batch and a mailbox long-poll per partition
(``messages.AwaitResult`` with a mailbox, ``messages.CollectResults``), not a thousand held
calls. Alone, a request goes out at once: batching adds no wait, only what the loop was
already doing.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from typing import Any

from duraflow.actors import messages as m
from duraflow.client.host import Host

MAX_BATCH = 1000
"""Requests per host call; more made at once go as several calls."""

COLLECT_WAIT_S = 30.0
"""How long one mailbox long-poll is held at the partition when nothing arrives."""


_Key = tuple[str, str | None]  # (workflow ID, run ID asked for)


class _LoopState:
    """What one event loop has queued and awaits (futures belong to their loop)."""

    def __init__(self) -> None:
        self.queues: dict[int, list[tuple[Any, asyncio.Future[Any]]]] = {}
        self.mailbox = uuid.uuid4().hex
        self.waiting: dict[int, dict[_Key, list[asyncio.Future[m.Outcome]]]] = {}
        self.registered: dict[int, dict[_Key, str | None]] = {}
        """Per partition, the incarnation each waited-for run was registered with (None while
        its registration is on the way)."""
        self.incarnations: dict[int, str] = {}
        """The newest incarnation each partition answered with."""
        self.collectors: dict[int, asyncio.Task[None]] = {}


class Batcher:
    """Sends a client's requests to partitions in batches (see the module docstring)."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]
        self._loops = weakref.WeakKeyDictionary()

    def _state(self) -> tuple[asyncio.AbstractEventLoop, _LoopState]:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState()
        return loop, state

    # -- requests ---------------------------------------------------------------------------

    async def call(self, partition: int, request: Any) -> Any:
        """``request``'s reply, sent together with the others made in this loop iteration."""
        loop, state = self._state()
        return await self._queue(loop, state, partition, [request])[0]

    def _queue(
        self,
        loop: asyncio.AbstractEventLoop,
        state: _LoopState,
        partition: int,
        requests: list[Any],
    ) -> list[asyncio.Future[Any]]:
        """Queue ``requests`` for ``partition``, all in one batch, in order: the futures of
        their replies."""
        queue = state.queues.get(partition)
        if queue is not None and len(queue) + len(requests) > MAX_BATCH:
            self._flush(loop, state, partition)
            queue = None
        if queue is None:
            queue = state.queues[partition] = []
            loop.call_soon(self._flush, loop, state, partition)
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in requests]
        queue.extend(zip(requests, futures, strict=True))
        if len(queue) >= MAX_BATCH:
            self._flush(loop, state, partition)
        return futures

    def _flush(self, loop: asyncio.AbstractEventLoop, state: _LoopState, partition: int) -> None:
        items = state.queues.pop(partition, None)
        if items:
            loop.create_task(self._send(partition, items))

    async def _send(self, partition: int, items: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._host.call_batch(partition, [request for request, _ in items])
        except Exception as exc:  # reason: the batch failed as a whole; every caller sees why
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(items, replies, strict=True):
            if future.done():
                continue  # its caller stopped waiting
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    # -- results ----------------------------------------------------------------------------

    def call_and_register(
        self, partition: int, request: Any, workflow_id: str, run_id: str
    ) -> tuple[asyncio.Future[Any], asyncio.Future[Any]]:
        """Queue ``request`` and, right after it in the same batch (one turn, so a ``Start``
        of run ``run_id`` is applied first), the registration of that run's result wait:
        the futures of both replies. Pass the second to :meth:`result`."""
        loop, state = self._state()
        key = (workflow_id, run_id)
        sent, registration = self._queue(
            loop, state, partition, [request, self._await_result(state, key)]
        )
        registration.add_done_callback(retrieved)  # no warning if nobody waits any more
        return sent, registration

    async def result(
        self,
        partition: int,
        workflow_id: str,
        run_id: str | None,
        registration: asyncio.Future[Any] | None = None,
    ) -> m.Outcome:
        """The outcome of the run once it closes (registered with this loop's mailbox; by
        ``registration``, the reply of an ``AwaitResult`` queued already, if given)."""
        loop, state = self._state()
        waiting = state.waiting.setdefault(partition, {})
        key = (workflow_id, run_id)
        future: asyncio.Future[m.Outcome] = loop.create_future()
        futures = waiting.get(key)
        if futures is None:
            futures = waiting[key] = [future]
            loop.create_task(self._register(state, partition, key, registration))
        else:
            futures.append(future)
        try:
            return await future
        finally:
            if key in waiting and future in waiting[key]:
                waiting[key].remove(future)
                if not waiting[key]:
                    del waiting[key]
                    state.registered.get(partition, {}).pop(key, None)

    @staticmethod
    def _await_result(state: _LoopState, key: _Key) -> m.AwaitResult:
        return m.AwaitResult(workflow_id=key[0], run_id=key[1], mailbox=state.mailbox)

    async def _register(
        self,
        state: _LoopState,
        partition: int,
        key: _Key,
        registration: asyncio.Future[Any] | None = None,
    ) -> None:
        """Register ``key`` with this loop's mailbox at ``partition`` (or take the reply of
        its ``registration`` queued already); settle it at once if the run is closed."""
        registered = state.registered.setdefault(partition, {})
        registered[key] = None
        try:
            if registration is None:
                reply = await self.call(partition, self._await_result(state, key))
            else:
                reply = await registration
        except Exception as exc:  # reason: WorkflowNotFound and friends go to the waiters
            self._settle(state, partition, key, error=exc)
            return
        if isinstance(reply, m.Outcome):
            self._settle(state, partition, key, outcome=reply)
            return
        if key not in state.waiting.get(partition, {}):
            return  # nobody waits any more
        registered[key] = reply.incarnation
        self._seen(state, partition, reply.incarnation)
        if partition not in state.collectors:
            task = asyncio.get_running_loop().create_task(self._collect(state, partition))
            state.collectors[partition] = task

    def _seen(self, state: _LoopState, partition: int, incarnation: str) -> list[Any]:
        """``partition`` answered as ``incarnation``: if that is new, it restarted and forgot
        its mailboxes, so every run registered with an earlier incarnation is registered
        again. Returns the re-registrations started."""
        if state.incarnations.get(partition) == incarnation:
            return []
        state.incarnations[partition] = incarnation
        registered = state.registered.get(partition, {})
        stale = [k for k, seen in registered.items() if seen is not None and seen != incarnation]
        return self._register_again(state, partition, stale)

    def _register_again(self, state: _LoopState, partition: int, keys: list[_Key]) -> list[Any]:
        loop = asyncio.get_running_loop()
        return [loop.create_task(self._register(state, partition, key)) for key in keys]

    async def _collect(self, state: _LoopState, partition: int) -> None:
        """Long-poll this loop's mailbox at ``partition`` while anything waits there."""
        waiting = state.waiting[partition]
        request = m.CollectResults(mailbox=state.mailbox, wait_s=COLLECT_WAIT_S)
        try:
            while waiting:
                try:
                    mailed: m.Mailed = await self._host.call(partition, request)
                except Exception as exc:  # reason: the partition is gone for good; say so
                    for key in list(waiting):
                        self._settle(state, partition, key, error=exc)
                    return
                for item in mailed.outcomes:
                    key = (item.outcome.workflow_id, item.requested_run_id)
                    self._settle(state, partition, key, outcome=item.outcome)
                again = self._seen(state, partition, mailed.incarnation)
                if not mailed.known:  # restarted, or the mailbox expired: register again
                    registered = state.registered.get(partition, {})
                    keys = [k for k, seen in registered.items() if seen is not None]
                    again += self._register_again(state, partition, keys)
                if again:
                    await asyncio.gather(*again)
        finally:
            del state.collectors[partition]

    @staticmethod
    def _settle(
        state: _LoopState,
        partition: int,
        key: _Key,
        *,
        outcome: m.Outcome | None = None,
        error: BaseException | None = None,
    ) -> None:
        state.registered.get(partition, {}).pop(key, None)
        for future in state.waiting.get(partition, {}).pop(key, []):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(outcome)  # type: ignore[arg-type]  # reason: one of the two is set


def retrieved(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s exception as seen (its waiter may have gone)."""
    if not future.cancelled():
        future.exception()
