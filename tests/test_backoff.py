"""Retry with growing waits until a deadline (duraflow.backoff), on a clock the test steps."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from duraflow.actors.ray_host import CALL_RETRY_WINDOW_S
from duraflow.backoff import retry, retry_async, waits


class Restarting(Exception):
    """What the transport raises while the other side restarts."""


class SteppedTime:
    """A clock that moves only when the code under test sleeps; it records each wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def sleep_async(self, seconds: float) -> None:
        self.sleep(seconds)


def failing(times: int, result: str = "ok") -> Callable[[], str]:
    """A call that raises Restarting ``times`` times, then returns ``result``."""
    calls = itertools.count()

    def call() -> str:
        if next(calls) < times:
            raise Restarting(f"restarting ({times})")
        return result

    return call


def test_waits_start_small_and_double_up_to_a_second() -> None:
    assert [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0] == list(itertools.islice(waits(), 7))
    assert [0.5, 1.0, 2.0, 2.0] == list(itertools.islice(waits(0.5, 2.0), 4))


def test_a_call_that_fails_a_few_times_returns_after_the_growing_waits() -> None:
    time = SteppedTime()
    retried: list[str] = []
    result = retry(
        failing(3),
        retry_on=(Restarting,),
        deadline=10.0,
        on_retry=lambda exc: retried.append(str(exc)),
        clock=time.clock,
        sleep=time.sleep,
    )
    assert "ok" == result
    assert [0.05, 0.1, 0.2] == time.slept
    assert ["restarting (3)"] * 3 == retried


def test_past_the_deadline_the_give_up_error_is_raised_without_the_failure_chained() -> None:
    time = SteppedTime()
    with pytest.raises(TimeoutError, match=r"^gave up: restarting \(99\)$") as caught:
        retry(
            failing(99),
            retry_on=(Restarting,),
            deadline=1.0,
            give_up=lambda exc: TimeoutError(f"gave up: {exc}"),
            clock=time.clock,
            sleep=time.sleep,
        )
    # the next wait (0.8 s at 0.75 s) would end past the deadline: no attempt after it
    assert [0.05, 0.1, 0.2, 0.4] == time.slept
    assert caught.value.__suppress_context__


def test_the_client_retry_window_waits_the_same_as_before() -> None:
    """A call to an actor that never comes back: 63 waits, 59.55 s in all, within 60 s."""
    time = SteppedTime()
    with pytest.raises(Restarting):  # no give_up: the last failure itself
        retry(
            failing(10**6),
            retry_on=(Restarting,),
            deadline=CALL_RETRY_WINDOW_S,
            clock=time.clock,
            sleep=time.sleep,
        )
    assert 63 == len(time.slept)
    assert 59.55 == pytest.approx(sum(time.slept))


def test_other_errors_are_raised_at_once() -> None:
    time = SteppedTime()

    def broken() -> None:
        raise ValueError("not a transport failure")

    with pytest.raises(ValueError, match="not a transport failure"):
        retry(broken, retry_on=(Restarting,), deadline=None, clock=time.clock, sleep=time.sleep)
    assert [] == time.slept


def test_without_a_deadline_it_tries_until_the_call_returns() -> None:
    time = SteppedTime()
    call = failing(100)
    result = retry(call, retry_on=(Restarting,), deadline=None, clock=time.clock, sleep=time.sleep)
    assert "ok" == result
    assert 100 == len(time.slept)


def test_the_async_twin_waits_the_same() -> None:
    time = SteppedTime()
    sync_call = failing(4)

    async def call() -> str:
        return sync_call()

    async def main() -> str:
        return await retry_async(
            call,
            retry_on=(Restarting,),
            deadline=1.0,
            give_up=lambda exc: TimeoutError(str(exc)),
            clock=time.clock,
            sleep=time.sleep_async,
        )

    assert "ok" == asyncio.run(main())
    assert [0.05, 0.1, 0.2, 0.4] == time.slept
