"""The link between a partition and a worker of a pool on the same node: a Unix socket.

Each worker listens on an abstract Unix socket (``actors/unix_link.py``: same-user peers only);
a partition on the worker's node sends its attempts over it and gets their outcomes back as
they end, coalesced per loop iteration. Attempts for workers on other nodes, or where no link
could be made, go by Ray actor calls (``actors/pool_dispatch.py``); heartbeats and cancels go
by Ray calls either way.

When the worker dies its end of the socket closes at once: the partition fails every attempt
it sent over the link and has no outcome for with ``WorkerLost``, as with a failed Ray call.
``DURAFLOW_WORKER_LINK=off`` in a worker's environment makes it offer no link (all its
attempts then go by Ray calls).

The partition sends one :class:`Hello` (its actor's name), then :class:`Run` frames; the
worker sends :class:`Outcomes` frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from duraflow.actors.unix_link import LinkEnd, frame, offered, read_frame
from duraflow.actors.unix_link import listen as listen_on
from duraflow.engine.activities import ActivityInfo, ActivityOutcome

LINK_ENV = "DURAFLOW_WORKER_LINK"
"""Set to ``off`` in a worker's environment, it offers no link."""

Key = tuple[str, str, int]
Done = tuple[Key, int, ActivityOutcome]
"""One attempt's outcome: its activity's key (workflow ID, run ID, seq), its number, what it
gave."""


class Job(msgspec.Struct, frozen=True, array_like=True):
    """One attempt sent to a worker."""

    info: ActivityInfo
    code_ref: str
    """Its activity's ``module:qualname``."""
    args: bytes
    timed: bool
    """Whether it has a start-to-close or heartbeat timeout (it heartbeats first when it
    starts)."""


class Hello(msgspec.Struct, frozen=True, array_like=True, tag="hello"):
    partition: str
    """The name of the partition's actor (heartbeats go to it)."""


class Run(msgspec.Struct, frozen=True, array_like=True, tag="run"):
    jobs: list[Job]


class Outcomes(msgspec.Struct, frozen=True, array_like=True, tag="outcomes"):
    done: list[Done]


_to_worker = msgspec.msgpack.Decoder(Hello | Run)
_to_partition = msgspec.msgpack.Decoder(Outcomes)


# -- the worker's end ----------------------------------------------------------------------


Serve = Callable[[list[Job], Any, Callable[[Done], None]], None]
"""Starts jobs for a partition (its actor handle) and reports each one's outcome."""


async def listen(
    find_partition: Callable[[str], Awaitable[Any]], serve: Serve
) -> tuple[str | None, asyncio.AbstractServer | None]:
    """Listen for partitions' links (the address, or None where no link is offered)."""
    if not offered(LINK_ENV):
        return None, None
    return await listen_on(
        "worker", lambda reader, writer: _serve_link(reader, writer, find_partition, serve)
    )


async def _serve_link(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    find_partition: Callable[[str], Awaitable[Any]],
    serve: Serve,
) -> None:
    hello = await read_frame(reader, _to_worker)
    if not isinstance(hello, Hello):
        return
    partition = await find_partition(hello.partition)
    loop = asyncio.get_running_loop()
    held: list[Done] = []

    def send() -> None:
        done = held[:]
        held.clear()
        if not writer.is_closing():
            writer.write(frame(Outcomes(done)))

    def report(done: Done) -> None:
        if not held:
            loop.call_soon(send)
        held.append(done)

    while True:
        message = await read_frame(reader, _to_worker)
        if isinstance(message, Run):
            serve(message.jobs, partition, report)


# -- the partition's end -------------------------------------------------------------------


class Link(LinkEnd):
    """A partition's end of its link to one worker.

    Args:
        delivered: takes the outcomes the worker sends.
        closed: called once when the link closes (the worker died, most likely).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delivered: Callable[[list[Done]], None],
        closed: Callable[[Link, BaseException | None], None],
    ) -> None:
        self._delivered = delivered
        self._closed = closed
        super().__init__(reader, writer, _to_partition)

    @classmethod
    async def connect(
        cls,
        address: str,
        partition: str,
        delivered: Callable[[list[Done]], None],
        closed: Callable[[Link, BaseException | None], None],
    ) -> Link:
        reader, writer = await asyncio.open_unix_connection(address)
        writer.write(frame(Hello(partition)))
        return cls(reader, writer, delivered, closed)

    def send(self, jobs: list[Job]) -> None:
        self._writer.write(frame(Run(jobs)))

    def _take(self, message: Outcomes) -> None:
        self._delivered(message.done)

    def _ended(self, why: BaseException | None) -> None:
        self._closed(self, why)
