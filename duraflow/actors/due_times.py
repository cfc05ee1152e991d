"""A partition's due times: the heap of what the machine armed, and the loop timer that
wakes the partition when the earliest falls due (or, on a stepped clock, nothing: the
clock's mover fires them)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

from duraflow.engine import effects as fx


class DueTimes:
    """Armed due times, earliest first.

    Args:
        clock: the partition's clock (epoch seconds).
        wake: called (on the loop) when the earliest due time fell due.
        stepped: the clock moves only when told: never arm a loop timer for the future.
    """

    def __init__(self, clock: Callable[[], float], wake: Callable[[], None], stepped: bool) -> None:
        self._clock = clock
        self._wake = wake
        self._stepped = stepped
        self._heap: list[tuple[float, int, fx.Due]] = []
        self._counter = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = math.inf

    def push(self, arm: fx.Arm) -> None:
        heapq.heappush(self._heap, (arm.at, next(self._counter), arm.due))

    def push_all(self, arms: list[Any]) -> None:
        for arm in arms:
            self.push(arm)

    def pop_due(self) -> list[fx.Due]:
        """Take every due time that has fallen due, earliest first."""
        now, heap, due = self._clock(), self._heap, []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def keep_only(self, kind: type) -> None:
        """Drop every due time not of ``kind`` (a reload arms the others again)."""
        self._heap = [entry for entry in self._heap if type(entry[2]) is kind]
        heapq.heapify(self._heap)

    def next(self, live: Callable[[Any], bool]) -> float:
        """When the earliest due time that is still ``live`` falls due (``inf``: none); the
        others are dropped on the way, so a stepped clock does not jump to them."""
        heap = self._heap
        while heap and not live(heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``wake`` called when the earliest due time falls due."""
        if not self._heap:
            return
        due = self._heap[0][0]
        if due >= self._handle_at and self._handle is not None:
            return
        self.cancel()
        delay = max(0.0, due - self._clock())
        if delay > 0 and self._stepped:  # the clock's mover fires it when it gets there
            return
        self._handle_at = due
        self._handle = loop.call_later(delay, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self._handle_at = None, math.inf

    def _fire(self) -> None:
        self._handle, self._handle_at = None, math.inf
        self._wake()
