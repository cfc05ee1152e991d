"""The link between a partition and a worker of a pool on the same node: a Unix socket.

A Ray actor call between two processes here costs about 1.4 ms round trip; a frame each way
over a Unix socket between the same two processes about 0.1 ms. So each worker listens on an
abstract Unix socket (Linux: no file to leave behind; it goes with the process) and accepts
only processes of its own user (``SO_PEERCRED``); a partition on the worker's node sends its
attempts over it and gets their outcomes back as they end, coalesced per loop iteration.
Attempts for workers on other nodes, or where no link could be made, go by Ray actor calls
(``actors/pool_dispatch.py``); heartbeats and cancels go by Ray calls either way.

When the worker dies its end of the socket closes at once: the partition fails every attempt
it sent over the link and has no outcome for with ``WorkerLost``, as with a failed Ray call.
``DURAFLOW_WORKER_LINK=off`` in a worker's environment makes it offer no link (all its
attempts then go by Ray calls).

Frames: a 4-byte big-endian length, then msgpack (msgspec). The partition sends one
:class:`Hello` (its actor's name), then :class:`Run` frames; the worker sends
:class:`Outcomes` frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from duraflow.engine.activities import ActivityInfo, ActivityOutcome

log = logging.getLogger("duraflow.workers")

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


_HEADER = struct.Struct("!I")
_encoder = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(Hello | Run)
_to_partition = msgspec.msgpack.Decoder(Outcomes)


def _frame(message: Hello | Run | Outcomes) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return decoder.decode(await reader.readexactly(size))


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


# -- the worker's end ----------------------------------------------------------------------


Serve = Callable[[list[Job], Any, Callable[[Done], None]], None]
"""Starts jobs for a partition (its actor handle) and reports each one's outcome."""


async def listen(
    find_partition: Callable[[str], Awaitable[Any]], serve: Serve
) -> tuple[str | None, asyncio.AbstractServer | None]:
    """Listen for partitions' links (the address, or None where no link is offered)."""
    if sys.platform != "linux" or os.environ.get(LINK_ENV, "").lower() == "off":
        return None, None
    address = f"\0duraflow-worker-{uuid.uuid4().hex}"

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if _same_user(writer):
                await _serve_link(reader, writer, find_partition, serve)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the partition went away
        except Exception:  # reason: a bad peer must not end the worker
            log.exception("a worker's link to a partition failed")
        finally:
            writer.close()

    server = await asyncio.start_unix_server(accept, address)
    return address, server


async def _serve_link(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    find_partition: Callable[[str], Awaitable[Any]],
    serve: Serve,
) -> None:
    hello = await _read(reader, _to_worker)
    if not isinstance(hello, Hello):
        return
    partition = await find_partition(hello.partition)
    loop = asyncio.get_running_loop()
    held: list[Done] = []

    def send() -> None:
        done = held[:]
        held.clear()
        if not writer.is_closing():
            writer.write(_frame(Outcomes(done)))

    def report(done: Done) -> None:
        if not held:
            loop.call_soon(send)
        held.append(done)

    while True:
        message = await _read(reader, _to_worker)
        if isinstance(message, Run):
            serve(message.jobs, partition, report)


# -- the partition's end -------------------------------------------------------------------


class Link:
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
        self._writer = writer
        self.open = True
        self._reading = asyncio.get_running_loop().create_task(
            self._read(reader, delivered, closed)
        )

    @classmethod
    async def connect(
        cls,
        address: str,
        partition: str,
        delivered: Callable[[list[Done]], None],
        closed: Callable[[Link, BaseException | None], None],
    ) -> Link:
        reader, writer = await asyncio.open_unix_connection(address)
        writer.write(_frame(Hello(partition)))
        return cls(reader, writer, delivered, closed)

    def send(self, jobs: list[Job]) -> None:
        self._writer.write(_frame(Run(jobs)))

    async def _read(
        self,
        reader: asyncio.StreamReader,
        delivered: Callable[[list[Done]], None],
        closed: Callable[[Link, BaseException | None], None],
    ) -> None:
        why: BaseException | None = None
        try:
            while True:
                delivered((await _read(reader, _to_partition)).done)
        except asyncio.IncompleteReadError:
            pass  # the worker's end closed
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reason: any failure ends the link; its attempts are lost
            why = exc
        finally:
            self.open = False
            self._writer.close()
        closed(self, why)

    def close(self) -> None:
        self.open = False
        self._reading.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()
