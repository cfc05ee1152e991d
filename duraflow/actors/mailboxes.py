"""Mailboxes: where a partition leaves the outcomes of runs a client waits for.

A client waiting for many results registers each run once (``AwaitResult`` with its
mailbox) and then long-polls the mailbox (``CollectResults``): one call brings every outcome
that arrived meanwhile, instead of one held call per run. Mailboxes live in memory only; a
partition that restarts forgets them, and the client, told so, registers its runs again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from duraflow.actors import messages as m
from duraflow.engine import effects as fx

MAILBOX_TTL_S = 300.0
"""A mailbox nobody collected from or registered with for this long is dropped (its client
went away); a live client keeps a collect call waiting while it waits for anything."""


class _Mailbox:
    __slots__ = ("collector", "outcomes", "touched")

    def __init__(self, now: float) -> None:
        self.outcomes: list[m.MailedOutcome] = []
        self.collector: asyncio.Future[None] | None = None
        self.touched = now


class Mailboxes:
    """The mailboxes of one partition; used from its event loop only."""

    def __init__(
        self, ttl_s: float = MAILBOX_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._boxes: dict[str, _Mailbox] = {}
        self._ttl = ttl_s
        self._clock = clock
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._boxes)

    def register(self, mailbox: str) -> None:
        """Make sure ``mailbox`` exists (a run's outcome will be delivered to it)."""
        now = self._clock()
        box = self._boxes.get(mailbox)
        if box is None:
            self._boxes[mailbox] = _Mailbox(now)
        else:
            box.touched = now
        self._sweep(now)

    def deliver(self, mailbox: str, item: m.MailedOutcome) -> None:
        """Leave ``item`` in ``mailbox`` and wake its collector; dropped if the box is gone."""
        box = self._boxes.get(mailbox)
        if box is None:
            return
        box.outcomes.append(item)
        if box.collector is not None and not box.collector.done():
            box.collector.set_result(None)

    async def collect(self, mailbox: str, wait_s: float) -> list[m.MailedOutcome] | None:
        """Take what is in ``mailbox``, waiting up to ``wait_s`` for something to arrive;
        None when there is no such mailbox."""
        box = self._boxes.get(mailbox)
        if box is None:
            return None
        if not box.outcomes and wait_s > 0:
            if box.collector is not None and not box.collector.done():
                box.collector.set_result(None)  # a newer collect supersedes a stale one
            waiter = box.collector = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(waiter, wait_s)
            except asyncio.TimeoutError:
                pass
            finally:
                if box.collector is waiter:
                    box.collector = None
        box.touched = self._clock()
        taken, box.outcomes = box.outcomes, []
        return taken

    def close(self) -> None:
        """Wake every waiting collector (empty-handed) and forget all mailboxes."""
        for box in self._boxes.values():
            if box.collector is not None and not box.collector.done():
                box.collector.set_result(None)
        self._boxes.clear()

    def _sweep(self, now: float) -> None:
        if now - self._swept < self._ttl / 4:
            return
        self._swept = now
        stale = [
            name
            for name, box in self._boxes.items()
            if box.collector is None and now - box.touched > self._ttl
        ]
        for name in stale:
            del self._boxes[name]


class ResultWaits:
    """Who waits for which open run's outcome: held futures (one call per run) and mailbox
    registrations (``AwaitResult`` with a mailbox). In memory only; used from the
    partition's loop."""

    def __init__(self, mailboxes: Mailboxes) -> None:
        self.mailboxes = mailboxes
        self._futures: dict[tuple[str, str], list[asyncio.Future[Any]]] = {}
        self._mailed: dict[tuple[str, str], list[tuple[str, str | None]]] = {}

    def add(self, wait: fx.AwaitClose, future: asyncio.Future[Any], incarnation: str) -> None:
        """Hold ``future`` until the run closes, or register its mailbox and answer at once."""
        key = (wait.workflow_id, wait.run_id)
        if wait.mailbox is None:
            self._futures.setdefault(key, []).append(future)
            return
        self.mailboxes.register(wait.mailbox)
        mailed = self._mailed.setdefault(key, [])
        entry = (wait.mailbox, wait.requested_run_id)
        if entry not in mailed:  # a client registers again after a restart
            mailed.append(entry)
        future.set_result(m.Waiting(incarnation))  # the outcome goes to the mailbox

    def closed(self, outcome: m.Outcome) -> None:
        """A run closed: answer its held futures and fill its mailboxes."""
        key = (outcome.workflow_id, outcome.run_id)
        for future in self._futures.pop(key, ()):
            if not future.done():
                future.set_result(outcome)
        for mailbox, requested_run_id in self._mailed.pop(key, ()):
            self.mailboxes.deliver(mailbox, m.MailedOutcome(requested_run_id, outcome))

    def close(self, error: BaseException) -> None:
        """The partition closes: every held future fails with ``error``."""
        self.mailboxes.close()
        for futures in self._futures.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._futures.clear()
