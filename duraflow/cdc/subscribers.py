"""subscribe(): every matching event at least once, in order per partition, resumable.

A :class:`Subscription` runs one poller per partition. Each poller follows its partition's
change log (``cdc/stream.py``: committed history rows after an LSN) and puts the decoded
events into a bounded buffer. When the subscriber reads slowly the buffer fills and the
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
from duraflow.cdc.stream import ChangeLogReader, heads
from duraflow.errors import ConfigurationError

if TYPE_CHECKING:
    from duraflow.client.blocking import BlockingRunner
    from duraflow.client.host import Host

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
        self, reader: ChangeLogReader, loop: asyncio.AbstractEventLoop, buffer: int
    ) -> None:
        self.reader = reader
        self.loop = loop
        self.queue: asyncio.Queue[AnyEvent | BaseException | _End] = asyncio.Queue(buffer)
        self.stopped = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """One poller per partition, from the reader's offsets (nothing once stopped)."""
        if not self.stopped:
            for partition in self.reader.offsets:
                self._tasks.append(self.loop.create_task(self._poll(partition)))

    async def _poll(self, partition: int) -> None:
        try:
            await self.reader.follow(partition, self._put)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the subscriber sees why its stream stopped
            await self.queue.put(exc)

    async def _put(self, partition: int, batch: m.EventBatch) -> bool:
        for body in batch.events:
            await self.queue.put(decode_event(body))  # waits while the subscriber lags
        return True

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
            self._from = runner.run(heads(host))
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
        # "earliest" reads from 0; "latest" became each partition's head in __init__
        start = self._from if isinstance(self._from, Mapping) else {}
        reader = ChangeLogReader(self._host, start, limit=self._buffer, **self._filters)
        pollers = self._pollers = _Pollers(reader, loop, self._buffer)
        weakref.finalize(self, pollers.stop_soon)  # dropped unclosed: the pollers stop too
        if self._closed:  # closed by another thread just before the pollers existed
            pollers.stop_now()
        for partition, lsn in reader.offsets.items():
            self.offsets.setdefault(partition, lsn)
        pollers.start()  # nothing once stopped
        return pollers

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
