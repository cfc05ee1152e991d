"""Stepped time for in-process partitions: a clock that moves only when told, and its moves.

Every durable time of a partition (timers, retry backoffs, activity start-to-close,
schedule-to-close and heartbeat deadlines, ``ctx.now()``) comes from its clock and its due-time
heap. With a :class:`SteppedClock` the partitions arm nothing on the wall clock; a
:class:`TimeStepper` moves the clock forward and has every partition fire what fell due, in
due-time order. It runs on the partitions' own event loop (the in-process host's).

Skipping time (:meth:`TimeStepper.start_skipping`) needs to know that nothing else could happen
first: every partition's inbox is empty, no activity attempt runs, and this stays so for a few
turns of the loop (a message between two partitions, or an outcome handed back from an
activity thread, is in flight for a couple of iterations). The check reads a few fields of
each partition; the production path pays nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence

from duraflow.actors.partition import Partition

log = logging.getLogger("duraflow.stepped_time")

SETTLE_SPINS = 8
"""Loop iterations a quiet state must last before it counts as settled."""
SETTLE_POLL_S = 0.001
"""How often :meth:`TimeStepper.advance` looks again while the partitions are still busy."""
SKIP_POLL_S = 0.002
"""How often the skipper looks for a chance to skip while a client waits for a result."""
IDLE_POLL_S = 0.02
"""How often it looks while no client waits."""
DUE_TOLERANCE_S = 1e-6
"""A due time this close past an advance's end still falls within it: history records
microseconds, and sums of durations in float seconds can land a rounding error short."""


class SteppedClock:
    """Seconds since the epoch that change only by :meth:`set` (never backwards).

    Call it (or :meth:`now`) for the time; it is the ``clock`` of every partition of an
    in-process host made with it. Read from any thread; moved on the host's loop.
    """

    def __init__(self, start: float) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        """The current time, seconds since the epoch."""
        return self._now

    def set(self, seconds: float) -> None:
        """Move the clock to ``seconds``.

        Raises:
            ValueError: ``seconds`` is earlier than the current time.
        """
        if seconds < self._now:
            raise ValueError(f"a stepped clock never goes back ({seconds} < {self._now})")
        self._now = float(seconds)


class TimeStepper:
    """Moves a :class:`SteppedClock` for partitions that all run on the calling loop."""

    def __init__(self, clock: SteppedClock, partitions: Sequence[Partition]) -> None:
        self.clock = clock
        self._parts = list(partitions)
        self._lock: asyncio.Lock | None = None
        self._skipper: asyncio.Task[None] | None = None

    def _moving(self) -> asyncio.Lock:
        # made on first use, on the loop that uses it
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, stopping at each due time on the way.

        At each stop every partition fires what fell due and the turns that follow settle
        before the clock moves on, so a timer armed on the way (say after a first timer fired)
        fires at its own time too. Running activity attempts are not waited for: a clock that
        jumps past an attempt's deadline times it out, as the wall clock would.
        """
        async with self._moving():
            target = self.clock.now() + seconds
            while True:
                await self._until_settled()
                due = self.next_due()
                if due > target + DUE_TOLERANCE_S:
                    break
                await self._move_to(due)
            await self._move_to(target)

    async def start_skipping(self, waiting: Callable[[], bool]) -> None:
        """From now on, whenever ``waiting()`` and every partition is idle (nothing queued, no
        attempt running), move the clock to the earliest due time."""
        if self._skipper is None:
            self._skipper = asyncio.get_running_loop().create_task(self._skip_while(waiting))

    async def stop_skipping(self) -> None:
        """Stop skipping (waits for a move under way to finish)."""
        skipper, self._skipper = self._skipper, None
        if skipper is not None:
            skipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await skipper

    async def _skip_while(self, waiting: Callable[[], bool]) -> None:
        while True:
            await asyncio.sleep(SKIP_POLL_S if waiting() else IDLE_POLL_S)
            if not waiting():
                continue
            try:
                await self._skip_once(waiting)
            except Exception:  # reason: a failed turn is the partition's to report; skip on
                log.exception("skipping to the next due time failed")

    async def _skip_once(self, waiting: Callable[[], bool]) -> None:
        async with self._moving():
            if not await self._settled(attempts=True):
                return
            due = self.next_due()
            if due < math.inf and waiting():
                await self._move_to(due)

    def next_due(self) -> float:
        """The earliest due time over the partitions (``inf``: nothing is due, ever)."""
        return min((p.next_due() for p in self._parts), default=math.inf)

    async def _move_to(self, seconds: float) -> None:
        self.clock.set(max(seconds, self.clock.now()))
        await asyncio.gather(*(p.clock_moved() for p in self._parts))

    async def _until_settled(self) -> None:

        while not await self._settled(attempts=False):  # noqa: ASYNC110
            await asyncio.sleep(SETTLE_POLL_S)

    async def _settled(self, attempts: bool) -> bool:
        """Whether every partition is quiet, and stays so over a few loop iterations."""
        before = self._quiet(attempts)
        if before is None:
            return False
        for _ in range(SETTLE_SPINS):
            await asyncio.sleep(0)
        return before == self._quiet(attempts)

    def _quiet(self, attempts: bool) -> tuple[int, ...] | None:
        """The partitions' turn counts, or None if one is busy."""
        turns = []
        for part in self._parts:
            if part.busy(attempts):
                return None
            turns.append(part.turns)
        return tuple(turns)
