"""Read events by LSN from each partition's history (the outbox). Offsets per partition.

Subscriptions (``cdc/subscribers.py``) and the archive's consumer (``cdc/consumer.py``) both
follow every partition's change log with a :class:`ChangeLogReader`: it long-polls a partition
through the host (``ReadEvents``: committed history rows after an LSN), hands each batch to its
user and then moves that partition's offset past the batch. Nothing is skipped: a batch its
user did not take is read again, so delivery is at least once, in LSN order per partition.
The reader reaches partitions only through the host, never their files.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, NoReturn

import msgspec

from duraflow.actors import messages as m

if TYPE_CHECKING:
    from duraflow.client.host import Host

POLL_WAIT_S = 1.0
"""How long one long-poll waits at a partition for new events (and, when reads fail and the
reader retries, how long it waits before the next attempt)."""
CAUGHT_UP_POLL_S = 0.02
"""How often :meth:`ChangeLogReader.caught_up` looks at the offsets."""

Handler = Callable[[int, m.EventBatch], Awaitable[bool]]
"""Takes one partition's batch: True once it is handled (the offset moves past it), False to
read the same events again."""


async def heads(host: Host) -> dict[int, int]:
    """Each partition's newest committed LSN."""
    read = m.ReadEvents(limit=0)
    batches = await asyncio.gather(*(host.call(p, read) for p in range(host.partitions)))
    return {p: batch.head_lsn for p, batch in enumerate(batches)}


class ChangeLogReader:
    """Follows every partition's change log from ``offsets`` (partition -> last LSN read;
    0 or missing: from the start of what the partition holds).

    Args:
        limit: events scanned per read.
        linger_s: after a read that took everything a partition had, wait this long before
            the next (each read has a fixed cost: larger batches read less often cost less per
            event); :meth:`caught_up` cuts the wait short.
        on_read_error: when set, a failed read (a partition restarting or unavailable) is
            reported to it and tried again after ``POLL_WAIT_S``; when None, it raises out of
            :meth:`follow`.
        event_types, workflow_type, workflow_id: only such events are returned (the offsets
            move past the others too).
    """

    def __init__(
        self,
        host: Host,
        offsets: Mapping[int, int],
        *,
        limit: int,
        linger_s: float = 0.0,
        on_read_error: Callable[[int, Exception], None] | None = None,
        event_types: tuple[str, ...] | None = None,
        workflow_type: str | None = None,
        workflow_id: str | None = None,
    ) -> None:
        self.host = host
        self.offsets: dict[int, int] = {p: int(offsets.get(p, 0)) for p in range(host.partitions)}
        """Partition -> LSN of the last event read and handled (what to read after next)."""
        self._linger_s = linger_s
        self._on_read_error = on_read_error
        self._request = m.ReadEvents(
            limit=limit,
            wait_s=POLL_WAIT_S,
            event_types=event_types,
            workflow_type=workflow_type,
            workflow_id=workflow_id,
        )
        self._hurry = asyncio.Event()  # set while someone waits in caught_up(): no lingering
        self._hurried = 0

    async def follow(self, partition: int, handle: Handler) -> NoReturn:
        """Read ``partition``'s batches, in order, forever: each goes to ``handle``, and the
        partition's offset moves past it once ``handle`` returns True. Run one per partition
        as a task; cancel it to stop. Raises what ``handle`` raises, and a failed read unless
        ``on_read_error`` is set."""
        while True:
            batch = await self._read(partition)
            if not await handle(partition, batch):
                continue
            self.offsets[partition] = batch.next_after_lsn
            if self._linger_s and batch.next_after_lsn >= batch.head_lsn:
                await self._linger()

    async def _read(self, partition: int) -> m.EventBatch:
        request = msgspec.structs.replace(self._request, after_lsn=self.offsets[partition])
        while True:
            try:
                batch: m.EventBatch = await self.host.call(partition, request)
                return batch
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._on_read_error is None:
                    raise
                self._on_read_error(partition, exc)
                await asyncio.sleep(POLL_WAIT_S)

    async def _linger(self) -> None:
        if not self._hurry.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), self._linger_s)

    async def caught_up(self, timeout: float) -> bool:
        """Wait until the offsets reach what every partition had committed when this was
        called (no lingering meanwhile); False if ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        target = await heads(self.host)
        self._hurried += 1
        self._hurry.set()
        try:
            while any(self.offsets.get(p, 0) < head for p, head in target.items()):
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(CAUGHT_UP_POLL_S)
            return True
        finally:
            self._hurried -= 1
            if not self._hurried:
                self._hurry.clear()
