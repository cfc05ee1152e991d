"""How a partition serves its change log: committed history rows by LSN (``ReadEvents``),
long-polled by subscriptions and the archive consumer. Reads never take a turn: between
turns every row up to the machine's LSN is committed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.storage.sqlite_store import PartitionStore


class ChangeLog:
    """Answers ``ReadEvents`` for partition ``index``; :meth:`committed` wakes long polls."""

    def __init__(self, index: int, lsn: Callable[[], int]) -> None:
        self._index = index
        self._lsn = lsn
        self._notified = 0
        self._waiters: list[asyncio.Future[None]] = []

    def committed(self) -> None:
        """A turn committed: wake the reads waiting for rows past what they have."""
        lsn = self._lsn()
        if lsn > self._notified:
            self._notified = lsn
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def read(self, req: m.ReadEvents, store: PartitionStore) -> m.EventBatch:
        """Events after ``req.after_lsn`` (waiting up to ``req.wait_s`` for one)."""
        if req.wait_s > 0 and self._lsn() <= req.after_lsn:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter, req.wait_s)
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        lsn = self._lsn()
        rows = store.read_events(req.after_lsn, req.limit) if req.limit > 0 else []
        types = set(req.event_types) if req.event_types is not None else None
        if types is None and req.workflow_id is None and req.workflow_type is None:
            events = [body for _lsn, _workflow_id, _kind, body in rows]  # the archive's reads
        else:
            events = [
                body
                for _lsn, workflow_id, kind, body in rows
                if (types is None or kind in types)
                and req.workflow_id in (None, workflow_id)
                and (
                    req.workflow_type is None
                    or ev.decode_event(body).workflow_type == req.workflow_type
                )
            ]
        # A full page resumes after its last row; otherwise everything committed was scanned.
        full = bool(rows) and len(rows) == req.limit
        resume = rows[-1][0] if full else max(req.after_lsn, lsn)
        return m.EventBatch(self._index, events, resume, lsn)
