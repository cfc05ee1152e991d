"""The background loop thread (duraflow.loop_thread) that the blocking client, the in-process
partitions and the in-process archive consumer run on."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from duraflow.loop_thread import LoopThread


def test_runs_coroutines_from_other_threads_on_its_own() -> None:
    runner = LoopThread("test-loop")
    try:

        async def where() -> str:
            await asyncio.sleep(0)
            return threading.current_thread().name

        assert "test-loop" == runner.run(where())
        assert "test-loop" == runner.submit(where()).result(5)
        assert runner.running
    finally:
        runner.stop()


def test_a_blocking_call_on_its_own_thread_is_refused_instead_of_waiting_forever() -> None:
    runner = LoopThread("test-loop")
    try:

        async def inner() -> int:
            return 1

        async def outer() -> None:
            runner.run(inner())  # blocks the loop it waits on

        with pytest.raises(RuntimeError, match="cannot wait on its own loop"):
            runner.run(outer(), timeout=5)
    finally:
        runner.stop()


def test_stop_cancels_what_runs_waits_for_executor_threads_and_closes() -> None:
    runner = LoopThread("test-loop")
    seen: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    def slow_write() -> None:
        time.sleep(0.1)
        seen.append("written")

    async def start_both() -> list[asyncio.Future[None]]:
        started = [
            asyncio.ensure_future(forever()),
            asyncio.ensure_future(asyncio.to_thread(slow_write)),
        ]
        await asyncio.sleep(0)
        return started

    runner.run(start_both())
    runner.stop()
    assert ["cancelled", "written"] == sorted(seen)
    assert runner.loop.is_closed() and not runner.thread.is_alive() and not runner.running
    runner.stop()  # again: nothing to do


def test_stop_returns_after_its_wait_when_a_callback_blocks_the_loop() -> None:
    runner = LoopThread("test-loop")
    release = threading.Event()
    runner.loop.call_soon_threadsafe(release.wait)

    began = time.monotonic()
    runner.stop(wait_s=0.05)
    assert time.monotonic() - began < 1.0
    assert not runner.loop.is_closed()  # its thread still runs the callback

    release.set()  # the loop then stops and ends its tasks
    runner.stop()
    assert runner.loop.is_closed()
