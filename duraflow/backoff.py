"""Call again after a failure of the transport, waiting longer each time, until a deadline.

For calls to something that may be restarting (a Ray actor, an archive's warehouse). The waits
start at ``first_wait_s`` and double up to ``max_wait_s``; the call is given up when the next
wait would end past the deadline. :func:`retry` blocks, :func:`retry_async` is its twin. A
leaf: it imports only the standard library, so every layer may use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

FIRST_WAIT_S = 0.05
"""The wait after the first failure (an actor restarting answers again after ~0.5 s)."""
MAX_WAIT_S = 1.0
"""The longest wait between two attempts."""
GROWTH = 2.0
"""Each wait is the previous one times this, up to the longest."""


def waits(first_wait_s: float = FIRST_WAIT_S, max_wait_s: float = MAX_WAIT_S) -> Iterator[float]:
    """The waits after each failure: ``first_wait_s``, then doubling up to ``max_wait_s``."""
    wait = first_wait_s
    while True:
        yield wait
        wait = min(max_wait_s, wait * GROWTH)


class _Attempts:
    """What retry and retry_async share: the next wait, or giving up."""

    def __init__(
        self,
        retry_on: tuple[type[Exception], ...],
        deadline: float | None,
        give_up: Callable[[Exception], BaseException] | None,
        on_retry: Callable[[Exception], None] | None,
        first_wait_s: float,
        max_wait_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.retry_on = retry_on
        self._deadline = deadline
        self._give_up = give_up
        self._on_retry = on_retry
        self._waits = waits(first_wait_s, max_wait_s)
        self._clock = clock

    def wait_after(self, exc: Exception) -> float:
        """How long to wait after ``exc``; raises the give-up error past the deadline."""
        wait = next(self._waits)
        if self._deadline is not None and self._clock() + wait > self._deadline:
            if self._give_up is None:
                raise exc
            raise self._give_up(exc) from None
        if self._on_retry is not None:
            self._on_retry(exc)
        return wait


def retry(
    call: Callable[[], T],
    *,
    retry_on: tuple[type[Exception], ...],
    deadline: float | None,
    give_up: Callable[[Exception], BaseException] | None = None,
    on_retry: Callable[[Exception], None] | None = None,
    first_wait_s: float = FIRST_WAIT_S,
    max_wait_s: float = MAX_WAIT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """``call()``, called again after each failure in ``retry_on`` until it returns.

    Args:
        call: the attempt; what it raises outside ``retry_on`` goes to the caller at once.
        retry_on: the failures worth another attempt (the transport's).
        deadline: a ``clock()`` time; None: try forever.
        give_up: the error to raise, made from the last failure, when the next wait would end
            past ``deadline`` (None: the failure itself).
        on_retry: told of each failure that is retried (to log it, say).
        first_wait_s: the first wait; each next one doubles, up to ``max_wait_s``.
        max_wait_s: the longest wait.
        clock: monotonic seconds (``deadline`` is one of its times).
        sleep: waits that many seconds.
    """
    attempts = _Attempts(retry_on, deadline, give_up, on_retry, first_wait_s, max_wait_s, clock)
    while True:
        try:
            return call()
        except attempts.retry_on as exc:
            sleep(attempts.wait_after(exc))


async def retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[Exception], ...],
    deadline: float | None,
    give_up: Callable[[Exception], BaseException] | None = None,
    on_retry: Callable[[Exception], None] | None = None,
    first_wait_s: float = FIRST_WAIT_S,
    max_wait_s: float = MAX_WAIT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Awaitable twin of :func:`retry`: ``await call()``, waiting with ``await sleep()``."""
    attempts = _Attempts(retry_on, deadline, give_up, on_retry, first_wait_s, max_wait_s, clock)
    while True:
        try:
            return await call()
        except attempts.retry_on as exc:
            await sleep(attempts.wait_after(exc))
