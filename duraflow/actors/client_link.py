"""The link between a client and a partition actor on the same node: a Unix socket.

A client's calls to a partition (``RayHost.call`` and ``call_batch``) cost a Ray actor call
each: about 1.4 ms round trip and a quarter of a millisecond of CPU on each side here. Each
partition actor therefore listens on an abstract Unix socket (``actors/unix_link.py``:
same-user peers only), and a client on the partition's node links to it the first time it
calls it from an event loop (streams belong to their loop), its calls going by Ray meanwhile.
From then on its calls and their replies travel over the link, a frame each, many at once.
A client on another node, or where no link is offered (``DURAFLOW_CLIENT_LINK=off`` in the
partition's environment, or not Linux), keeps calling by Ray, and asks again for a link
only every ELSEWHERE_RETRY_S (the partition may have moved to its node after a restart).

When the partition's process dies its end closes at once: the calls in flight over it fail
with :class:`LinkClosed`, which the client retries as it retries a call to a restarting actor
(by Ray, which waits for the actor; every request is idempotent), and it links again later.

Frames: the client sends :class:`Call` (a batch as ``messages.encode_requests`` makes it, or
one request as ``messages.encode_request`` does); the partition sends :class:`Reply` with the
pickled reply, as a Ray call's reply is pickled (replies are not durable data), or with none
when the reply cannot be pickled or the call raised: the client then makes the call by Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from duraflow.actors import messages as m
from duraflow.actors.unix_link import LinkEnd, frame, listen, offered, read_frame
from duraflow.errors import PayloadError

log = logging.getLogger("duraflow.links")

LINK_ENV = "DURAFLOW_CLIENT_LINK"
"""Set to ``off`` in a partition actor's environment, it offers no link."""
LINK_RETRY_S = 2.0
"""How long a client waits before it asks a partition again for a link (after one could not
be made, or one closed)."""
ELSEWHERE_RETRY_S = 60.0
"""How long a client waits before it asks again a partition that offered no link here (it
runs on another node, or offers none): it may have moved since."""
BATCH = ""
"""The kind of a :class:`Call` that carries a batch of requests."""


class Call(msgspec.Struct, frozen=True, array_like=True):
    id: int
    kind: str
    """BATCH, or the name of the one request's type."""
    data: bytes


class Reply(msgspec.Struct, frozen=True, array_like=True):
    id: int
    data: bytes | None
    """The pickled reply; None: make the call by Ray instead."""


class LinkClosed(Exception):
    """The link closed (the partition's process died, most likely) before the reply came."""


_calls = msgspec.msgpack.Decoder(Call)
_replies = msgspec.msgpack.Decoder(Reply)

Answer = Callable[[str, bytes], Awaitable[Any]]
"""The partition's answer to a call's kind and data (what its Ray methods would return)."""


# -- the partition's end -------------------------------------------------------------------


class Served:
    """What a partition's end of the links has served: links open now, calls answered."""

    def __init__(self) -> None:
        self.links = 0
        self.calls = 0


async def serve(answer: Answer, served: Served) -> tuple[str | None, asyncio.AbstractServer | None]:
    """Listen for clients' links (the address, or None where no link is offered)."""
    if not offered(LINK_ENV):
        return None, None
    return await listen("partition", lambda reader, writer: _serve(reader, writer, answer, served))


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Answer, served: Served
) -> None:
    loop = asyncio.get_running_loop()
    held: list[bytes] = []
    running: set[asyncio.Task[None]] = set()

    def send() -> None:
        data = b"".join(held)
        held.clear()
        if not writer.is_closing():
            writer.write(data)

    async def one(call: Call) -> None:
        body: bytes | None = None
        try:
            body = pickle.dumps(await answer(call.kind, call.data), protocol=5)
        except Exception:  # reason: the client makes the call by Ray, which reports it
            log.debug("a linked call fell back to Ray", exc_info=True)
        served.calls += 1
        if not held:  # one write for the replies of one loop iteration
            loop.call_soon(send)
        held.append(frame(Reply(call.id, body)))

    served.links += 1
    try:
        while True:
            call = await read_frame(reader, _calls)
            task = loop.create_task(one(call))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        served.links -= 1
        for task in running:
            task.cancel()


# -- the client's end ----------------------------------------------------------------------


class ClientLink(LinkEnd):
    """A client's end of its link to one partition, on one event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._waiting: dict[int, asyncio.Future[bytes | None]] = {}
        self._next_id = 0
        super().__init__(reader, writer, _replies)

    @classmethod
    async def connect(cls, address: str) -> ClientLink:
        reader, writer = await asyncio.open_unix_connection(address)
        return cls(reader, writer)

    async def call(self, kind: str, data: bytes) -> tuple[bool, Any]:
        """``(True, reply)``, or ``(False, None)`` when the call must be made by Ray.

        Raises:
            LinkClosed: the link closed before the reply came.
        """
        if not self.open:
            raise LinkClosed("the link to the partition closed")
        self._next_id += 1
        call_id = self._next_id
        waiter = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        self._writer.write(frame(Call(call_id, kind, data)))
        body = await waiter
        if body is not None:
            with contextlib.suppress(Exception):  # one that does not unpickle here: by Ray
                return True, pickle.loads(body)
        return False, None

    def _take(self, message: Reply) -> None:
        waiter = self._waiting.pop(message.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message.data)

    def _ended(self, why: BaseException | None) -> None:
        closed = LinkClosed(f"the link to the partition closed{f': {why}' if why else ''}")
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(closed)
        self._waiting.clear()

    def close(self) -> None:
        super().close()
        self._ended(None)


UNORDERED = frozenset({"CollectResults", "ReadEvents"})
"""Requests that only read, and may overtake calls made before them."""


class _Slot:
    __slots__ = ("by_ray", "link", "linking", "next_try")

    def __init__(self) -> None:
        self.link: ClientLink | None = None
        self.linking: asyncio.Task[None] | None = None
        self.next_try = 0.0
        """When to ask the partition for a link again (``time.monotonic()``)."""
        self.by_ray = 0
        """Calls on their way by Ray that later calls must not overtake."""


class Links:
    """A client's links to the partitions of one deployment, per event loop.

    Calls from one loop to one partition reach it in the order they were made, as Ray's calls
    from one caller do: once a link is made, calls keep going by Ray until none of those
    still on their way by Ray could be overtaken (mailbox polls and reads of the change log
    may be).

    Args:
        offer: asks partition ``i`` where it can be linked to (its actor's ``link``).
        node_id: the ID of this process's node.
    """

    def __init__(
        self, offer: Callable[[int], Awaitable[dict[str, Any]]], node_id: Callable[[], str]
    ) -> None:
        self._offer = offer
        self._node_id = node_id
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Slot]]
        self._loops = weakref.WeakKeyDictionary()

    async def call(
        self,
        partition: int,
        linked: tuple[str, bytes] | None,
        by_ray: Callable[[], Awaitable[Any]],
    ) -> Any:
        """The reply of ``partition`` to a call (``linked``: its :class:`Call` kind and data,
        None for one that goes by Ray only): over the link where there is one and it may be
        used, else ``by_ray()`` (a link is made meanwhile, for later calls).

        Raises:
            LinkClosed: the link closed before the reply came.
        """
        loop = asyncio.get_running_loop()
        slots = self._loops.get(loop)
        if slots is None:
            slots = self._loops[loop] = {}
        slot = slots.get(partition)
        if slot is None:
            slot = slots[partition] = _Slot()
        ordered = linked is None or linked[0] not in UNORDERED
        link = slot.link
        if link is None or not link.open:
            if slot.linking is None and time.monotonic() >= slot.next_try:
                slot.linking = loop.create_task(self._link(partition, slot))
        elif linked is not None and not (ordered and slot.by_ray):
            over_link, reply = await link.call(*linked)
            if over_link:
                return reply
        if not ordered:
            return await by_ray()
        slot.by_ray += 1
        try:
            return await by_ray()
        finally:
            slot.by_ray -= 1

    async def _link(self, partition: int, slot: _Slot) -> None:
        """Link to ``partition`` if it runs on this node and offers a link."""
        wait = LINK_RETRY_S
        try:
            offer = await self._offer(partition)
            if offer["address"] is None or offer["node_id"] != self._node_id():
                wait = ELSEWHERE_RETRY_S
            else:
                slot.link = await ClientLink.connect(offer["address"])
        except Exception as exc:  # reason: no link yet; Ray calls meanwhile, asked again later
            log.debug("no link to partition %d yet: %s", partition, exc)
        finally:
            slot.linking = None
            slot.next_try = time.monotonic() + wait

    def close(self) -> None:
        """Close the links (each on its own loop, if that still runs)."""
        for loop, slots in list(self._loops.items()):
            for slot in slots.values():
                if slot.link is not None and not loop.is_closed():
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        loop.call_soon_threadsafe(slot.link.close)
        self._loops.clear()


def encoded(method: str, payload: Any) -> tuple[str, bytes] | None:
    """A Ray call of ``method`` (``call`` or ``call_batch``) with ``payload`` as a
    :class:`Call`'s kind and data; None for one that goes by Ray only."""
    if method == "call_batch":
        return BATCH, payload
    with contextlib.suppress(PayloadError):
        return m.encode_request(payload)
    return None


def decoded(kind: str, data: bytes) -> tuple[str, Any]:
    """A :class:`Call`'s kind and data as the Ray method and its argument it stands for."""
    return ("call_batch", data) if kind == BATCH else ("call", m.decode_request(kind, data))
