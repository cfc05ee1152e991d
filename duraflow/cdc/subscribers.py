"""subscribe(): every matching event at least once, in order per partition, resumable.

A :class:`Subscription` runs one poller per partition. Each poller long-polls its partition
(``ReadEvents``: committed history rows after an LSN, the partition's change log) and puts the
decoded events into a bounded buffer. When the subscriber reads slowly the buffer fills and the
pollers simply stop asking: back-pressure lands on the subscriber only, never on workflows.
``offsets`` (partition -> LSN of the last event handed out) can be stored and passed back as
``from_`` to resume without a gap.

A subscription is closed by ``close()`` / ``aclose()``, by leaving its ``with`` / ``async with``
block, when nothing refers to it any more (a ``for`` loop over ``client.subscribe()`` left
early), and by ``client.close()`` / ``engine.close()``. Closing stops the pollers and ends
every reader's iteration, in any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from duraflow.actors import messages as m
from duraflow.cdc.events import EVENT_TYPES, AnyEvent, decode_event
from duraflow.errors import ConfigurationError

if TYPE_CHECKING:
    from duraflow.client.blocking import BlockingRunner
    from duraflow.client.host import Host

POLL_WAIT_S = 1.0
"""How long one long-poll waits at a partition for new events."""
DEFAULT_BUFFER = 1000
CLOSE_WAIT_S = 5.0
"""How long a blocking ``close()`` waits for the pollers to end on their loop."""

From = str | Mapping[int, int]


class _End:
    """Put in the buffer when a subscription closes: every reader that takes it stops."""


_END = _End()


class _Pollers:
    """The running half of a subscription: one poller per partition and their buffer, on one
    event loop. It holds no reference to its Subscription, so a subscription nobody holds
    any more is finalized (and stops its pollers) while they still run."""

    def __init__(
        self, host: Host, loop: asyncio.AbstractEventLoop, buffer: int, filters: dict[str, Any]
    ) -> None:
        self.host = host
        self.loop = loop
        self.queue: asyncio.Queue[AnyEvent | BaseException | _End] = asyncio.Queue(buffer)
        self.stopped = False
        self._buffer = buffer
        self._filters = filters
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, partition: int, after: int) -> None:
        if not self.stopped:
            self._tasks.append(self.loop.create_task(self._poll(partition, after)))

    async def _poll(self, partition: int, after: int) -> None:
        try:
            while True:
                request = m.ReadEvents(
                    after_lsn=after, limit=self._buffer, wait_s=POLL_WAIT_S, **self._filters
                )
                batch: m.EventBatch = await self.host.call(partition, request)
                for body in batch.events:
                    await self.queue.put(decode_event(body))  # waits while the subscriber lags
                after = batch.next_after_lsn
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the subscriber sees why its stream stopped
            await self.queue.put(exc)

    def stop_now(self) -> None:
        """On the loop: cancel the pollers, drop what they buffered and wake every reader."""
        if self.stopped:
            return
        self.stopped = True
        for task in self._tasks:
            task.cancel()  # a cancelled poller puts nothing more
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_END)

    async def stop(self) -> None:
        """On the loop: :meth:`stop_now`, then wait until every poller has ended."""
        self.stop_now()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop_soon(self) -> None:
        """From any thread, without waiting (a finalizer)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs on it
            self.loop.call_soon_threadsafe(self.stop_now)

    def stop_and_wait(self) -> None:
        """From any thread: stop, and wait for the pollers unless this is their loop's thread
        (which cannot wait on itself; they end as soon as it runs again)."""
        if self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop or not self.loop.is_running():
            self.stop_now()
            return
        with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(self.stop(), self.loop).result(CLOSE_WAIT_S)


class Subscription:
    """An iterator (and async iterator) of history events from every partition.

    Use it either with ``for`` or with ``async for``, not both. Close it when done:
    ``close()`` / ``await aclose()``, or use it as a context manager (``with`` /
    ``async with``). Closing stops its pollers and ends iteration for every reader.
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
        if from_ == "latest":
            # Now, not at the first read: an event committed after subscribe() returned is
            # never skipped, however late iteration begins.
            self._from = runner.run(self._heads())
        self._buffer = buffer
        self.offsets: dict[int, int] = {}
        """Partition -> LSN of the last event handed out (pass it as ``from_`` to resume)."""
        self._pollers: _Pollers | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the subscription is closed: iteration ends and ``get`` returns None."""
        return self._closed

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[AnyEvent]:
        return self

    def __next__(self) -> AnyEvent:
        event = None if self._closed else self._runner.run(self._next())
        if event is None:
            raise StopIteration
        return event

    def __aiter__(self) -> AsyncIterator[AnyEvent]:
        return self

    async def __anext__(self) -> AnyEvent:
        event = await self._next()
        if event is None:
            raise StopAsyncIteration
        return event

    def get(self, timeout: float | None = None) -> AnyEvent | None:
        """The next event (blocking), or None if none arrives within ``timeout`` seconds or
        the subscription is closed (see :attr:`closed`)."""
        if self._closed:
            return None

        async def one() -> AnyEvent | None:
            try:
                return await asyncio.wait_for(self._next(), timeout)
            except asyncio.TimeoutError:
                return None

        return self._runner.run(one())

    async def _next(self) -> AnyEvent | None:
        """The next event; None once the subscription is closed."""
        if self._closed:
            return None
        queue = (await self._start()).queue
        item = await queue.get()
        if isinstance(item, _End):
            queue.put_nowait(item)  # for the next reader; the slot it held is free
            return None
        if isinstance(item, BaseException):
            raise item
        self.offsets[item.partition] = item.lsn
        return item

    # -- pollers ----------------------------------------------------------------------------

    async def _start(self) -> _Pollers:
        loop = asyncio.get_running_loop()
        if self._pollers is not None:
            if loop is not self._pollers.loop:
                raise RuntimeError("use a subscription with either 'for' or 'async for', not both")
            return self._pollers
        pollers = self._pollers = _Pollers(self._host, loop, self._buffer, self._filters)
        weakref.finalize(self, pollers.stop_soon)  # dropped unclosed: the pollers stop too
        if self._closed:  # closed by another thread just before the pollers existed
            pollers.stop_now()
        for partition in range(self._host.partitions):
            start = await self._start_lsn(partition)
            self.offsets.setdefault(partition, start)
            pollers.start(partition, start)  # nothing once stopped
        return pollers

    async def _start_lsn(self, partition: int) -> int:
        if isinstance(self._from, Mapping):
            return int(self._from.get(partition, 0))
        return 0  # "earliest" ("latest" became each partition's head in __init__)

    async def _heads(self) -> dict[int, int]:
        """Each partition's newest committed LSN."""
        read = m.ReadEvents(limit=0)
        heads = await asyncio.gather(
            *(self._host.call(p, read) for p in range(self._host.partitions))
        )
        return {p: batch.head_lsn for p, batch in enumerate(heads)}

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the pollers and end iteration for every reader, in any thread; waits until
        the pollers have ended (except when called on their own event loop). Idempotent."""
        self._closed = True
        if self._pollers is not None:
            self._pollers.stop_and_wait()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        self._closed = True
        pollers = self._pollers
        if pollers is None:
            return
        if pollers.loop is asyncio.get_running_loop():
            await pollers.stop()
        else:  # iterated with 'for': the pollers run on the client's loop
            await asyncio.to_thread(pollers.stop_and_wait)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
