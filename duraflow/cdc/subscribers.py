"""subscribe(): every matching event at least once, in order per partition, resumable.

A :class:`Subscription` runs one poller per partition. Each poller long-polls its partition
(``ReadEvents``: committed history rows after an LSN, the partition's change log) and puts the
decoded events into a bounded buffer. When the subscriber reads slowly the buffer fills and the
pollers simply stop asking: back-pressure lands on the subscriber only, never on workflows.
``offsets`` (partition -> LSN of the last event handed out) can be stored and passed back as
``from_`` to resume without a gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from duraflow.actors import messages as m
from duraflow.cdc.events import EVENT_TYPES, AnyEvent, decode_event
from duraflow.errors import ConfigurationError

if TYPE_CHECKING:
    from duraflow.engine.client import BlockingRunner, Host

POLL_WAIT_S = 1.0
"""How long one long-poll waits at a partition for new events."""
DEFAULT_BUFFER = 1000

From = str | Mapping[int, int]


class Subscription:
    """An iterator (and async iterator) of history events from every partition.

    Use it either with ``for`` or with ``async for``, not both. Close it (or leave the
    ``with`` block) to stop its pollers.
    """

    def __init__(
        self,
        host: Host,
        runner: BlockingRunner,
        *,
        event_types: list[str] | tuple[str, ...] | None = None,
        workflow_type: str | None = None,
        workflow_id: str | None = None,
        from_: From = "latest",
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        if event_types is not None:
            unknown = sorted(set(event_types) - set(EVENT_TYPES))
            if unknown:
                raise ConfigurationError(
                    f"unknown event types {unknown}; known: {list(EVENT_TYPES)}"
                )
        if isinstance(from_, str) and from_ not in ("earliest", "latest"):
            raise ConfigurationError(
                f"from_ must be 'earliest', 'latest' or a {{partition: lsn}} mapping, got {from_!r}"
            )
        if buffer < 1:
            raise ConfigurationError(f"buffer must be >= 1, got {buffer}")
        self._host = host
        self._runner = runner
        self._filters: dict[str, Any] = {
            "event_types": tuple(event_types) if event_types is not None else None,
            "workflow_type": workflow_type,
            "workflow_id": workflow_id,
        }
        self._from = from_
        self._buffer = buffer
        self.offsets: dict[int, int] = {}
        """Partition -> LSN of the last event handed out (pass it as ``from_`` to resume)."""
        self._queue: asyncio.Queue[AnyEvent | BaseException] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pollers: list[asyncio.Task[None]] = []
        self._closed = False

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[AnyEvent]:
        return self

    def __next__(self) -> AnyEvent:
        return self._runner.run(self._next(owner="sync"))

    def __aiter__(self) -> AsyncIterator[AnyEvent]:
        return self

    async def __anext__(self) -> AnyEvent:
        return await self._next(owner="async")

    def get(self, timeout: float | None = None) -> AnyEvent | None:
        """The next event, or None if none arrives within ``timeout`` seconds (blocking)."""

        async def one() -> AnyEvent | None:
            try:
                return await asyncio.wait_for(self._next(owner="sync"), timeout)
            except asyncio.TimeoutError:
                return None

        return self._runner.run(one())

    async def _next(self, owner: str) -> AnyEvent:
        if self._closed:
            raise StopAsyncIteration if owner == "async" else StopIteration
        queue = await self._start()
        item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        self.offsets[item.partition] = item.lsn
        return item

    # -- pollers ----------------------------------------------------------------------------

    async def _start(self) -> asyncio.Queue[AnyEvent | BaseException]:
        loop = asyncio.get_running_loop()
        if self._queue is not None:
            if loop is not self._loop:
                raise RuntimeError("use a subscription with either 'for' or 'async for', not both")
            return self._queue
        self._loop = loop
        self._queue = asyncio.Queue(self._buffer)
        for partition in range(self._host.partitions):
            start = await self._start_lsn(partition)
            self.offsets.setdefault(partition, start)
            self._pollers.append(loop.create_task(self._poll(partition, start)))
        return self._queue

    async def _start_lsn(self, partition: int) -> int:
        if isinstance(self._from, Mapping):
            return int(self._from.get(partition, 0))
        if self._from == "earliest":
            return 0
        head: m.EventBatch = await self._host.call(partition, m.ReadEvents(limit=0))
        return head.head_lsn

    async def _poll(self, partition: int, after: int) -> None:
        queue = self._queue
        assert queue is not None
        try:
            while True:
                request = m.ReadEvents(
                    after_lsn=after, limit=self._buffer, wait_s=POLL_WAIT_S, **self._filters
                )
                batch: m.EventBatch = await self._host.call(partition, request)
                for body in batch.events:
                    await queue.put(decode_event(body))  # waits while the subscriber lags
                after = batch.next_after_lsn
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the subscriber sees why its stream stopped
            await queue.put(exc)

    def close(self) -> None:
        """Stop the pollers; iteration ends."""
        self._closed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for task in self._pollers:
            loop.call_soon_threadsafe(task.cancel)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
