"""Frames over an abstract Unix socket between two processes of one user on one node.

What the worker links (``actors/worker_link.py``) and the client links
(``actors/client_link.py``) are made of. A Ray actor call between two processes here costs
about 1.4 ms round trip and a quarter of a millisecond of CPU on each side; a frame each way
over a Unix socket between the same two processes about 0.1 ms. An abstract socket (Linux)
leaves no file behind and goes with its process; a listener accepts only processes of its own
user (``SO_PEERCRED``).

A frame is a 4-byte big-endian length, then msgpack (msgspec).
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

log = logging.getLogger("duraflow.links")

_HEADER = struct.Struct("!I")
_encoder = msgspec.msgpack.Encoder()

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""Serves one accepted link until it ends (the peer closed it, or a read failed)."""


def frame(message: Any) -> bytes:
    """``message`` as one frame."""
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
    """The next frame's message (``asyncio.IncompleteReadError`` when the link closed)."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return decoder.decode(await reader.readexactly(size))


def offered(env: str) -> bool:
    """Whether this process may offer links: on Linux, unless ``env`` is ``off``."""
    return sys.platform == "linux" and os.environ.get(env, "").lower() != "off"


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


async def listen(kind: str, serve: Serve) -> tuple[str, asyncio.AbstractServer]:
    """Listen on a new abstract address for links of this user's processes; ``serve`` each
    one. Returns the address and the server."""
    address = f"\0duraflow-{kind}-{uuid.uuid4().hex}"

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if _same_user(writer):
                await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away
        except Exception:  # reason: a bad peer must not end the listener
            log.exception("a %s link failed", kind)
        finally:
            writer.close()

    return address, await asyncio.start_unix_server(accept, address)


class LinkEnd:
    """The connecting end of a link: reads the other end's frames (decoded by ``decoder``)
    and hands each to :meth:`_take` until the link closes, then calls :meth:`_ended` (not
    when :meth:`close` closed it)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: msgspec.msgpack.Decoder[Any],
    ) -> None:
        self._writer = writer
        self.open = True
        self._reading = asyncio.get_running_loop().create_task(self._read(reader, decoder))

    def _take(self, message: Any) -> None:
        raise NotImplementedError

    def _ended(self, why: BaseException | None) -> None:
        """The link closed: the other end went away (``why`` None) or a read failed."""

    async def _read(
        self, reader: asyncio.StreamReader, decoder: msgspec.msgpack.Decoder[Any]
    ) -> None:
        why: BaseException | None = None
        try:
            while True:
                self._take(await read_frame(reader, decoder))
        except asyncio.IncompleteReadError:
            pass  # the other end closed
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reason: any failure ends the link
            why = exc
        finally:
            self.open = False
            self._writer.close()
        self._ended(why)

    def close(self) -> None:
        self.open = False
        self._reading.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()
