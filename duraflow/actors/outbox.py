"""Delivery of a partition's outbox: messages to the partitions owning other workflow IDs
(child starts, child outcomes, cancels, workflows' signals and queries), sent after the turn
that recorded them committed; each delivery's outcome (with the receiver's reply) goes back
to the machine (``Delivered``), which drops the row or arms a resend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from duraflow.engine import effects as fx
from duraflow.errors import DuraflowError, PartitionUnavailable

Send = Callable[[str, Any], Awaitable[Any]]
"""How a partition reaches the owner of another workflow ID: ``await send(workflow_id, msg)``."""


class OutboxSender:
    """Sends ``Send`` effects with ``send`` and posts each outcome with ``post`` (unless the
    partition is ``closing()``)."""

    def __init__(
        self, send: Send, post: Callable[[Any], None], closing: Callable[[], bool]
    ) -> None:
        self._send = send
        self._post = post
        self._closing = closing

    def __call__(self, send: fx.Send) -> None:
        asyncio.get_running_loop().create_task(self._deliver(send))

    async def _deliver(self, send: fx.Send) -> None:
        error: BaseException | None = None
        value = None
        try:
            value = await self._send(send.target_id, send.message)
        except DuraflowError as exc:
            error = exc
        except Exception as exc:  # reason: any transport error means "retry later"
            error = PartitionUnavailable(f"delivery to {send.target_id!r} failed: {exc!r}")
        if not self._closing():
            self._post(fx.Delivered(send.outbox_id, send.message, error, value))
