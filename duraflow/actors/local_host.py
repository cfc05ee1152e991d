"""In-process Host: each Partition on an asyncio loop of its own, in a background thread.

One thread per partition, as each Ray partition is a process of its own: workflow code that
blocks (``time.sleep``, blocking I/O) holds its own partition only, and the others go on
(the GIL is released by blocking calls; see README "Rules for workflow code"). Under a
stepped clock (``duraflow.testing``) every partition shares one loop, so the clock's
stepper sees them all settle between its moves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from duraflow.actors import messages as m
from duraflow.actors.partition import Partition
from duraflow.actors.router import partition_of
from duraflow.actors.stepped_time import SteppedClock, TimeStepper
from duraflow.config import EngineConfig
from duraflow.engine.activities import InlineExecutor
from duraflow.loop_thread import LoopThread
from duraflow.storage.layout import partition_path

T = TypeVar("T")

CLOSE_TIMEOUT_S = 30.0


class LocalHost:
    """Hosts the partitions of ``config`` (its ``data_dir``, ``partitions``, ...) in this
    process.

    Args:
        config: the deployment's settings.
        clock: a stepped clock for every partition (``duraflow.testing``); ``stepper`` then
            moves it. None: the wall clock.
    """

    def __init__(self, config: EngineConfig, *, clock: SteppedClock | None = None) -> None:
        self.config = config
        self.partitions = config.partitions
        count = config.partitions if clock is None else 1
        self._loop_threads = [LoopThread(f"duraflow-partition-{i}") for i in range(count)]
        self._runners = self._loop_threads * (config.partitions // count)
        """Each partition's loop thread (one shared by all under a stepped clock)."""
        # Async activities run on the loop of the partition that starts them.
        self._executor = InlineExecutor(self._runners[0].loop, config.activity_threads)
        data_dir = Path(config.data_dir)
        self._parts = [
            Partition(
                i,
                partition_path(data_dir, i),
                config,
                executor=self._executor,
                send=self._send,
                clock=time.time if clock is None else clock,
                stepped=clock is not None,
            )
            for i in range(config.partitions)
        ]
        self.stepper = None if clock is None else TimeStepper(clock, self._parts)
        """Moves the stepped clock (None on the wall clock); use it through :meth:`submit`."""
        try:
            opening = [self._submit(i, part.open()) for i, part in enumerate(self._parts)]
            for future in opening:
                future.result()
        except BaseException:
            self.close()
            raise

    def _submit(self, partition: int, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self._runners[partition].submit(coro)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop every partition shares under a stepped clock (from any
        other thread)."""
        assert self.stepper is not None, "only a stepped host shares one loop"
        return self._submit(0, coro)

    async def _send(self, workflow_id: str, request: Any) -> Any:
        return await self.call(partition_of(workflow_id, self.partitions), request)

    async def call(self, partition: int, request: Any) -> Any:
        """Send ``request`` to partition ``partition``; awaitable from any event loop."""
        future = self._submit(partition, self._parts[partition].handle(request))
        return await asyncio.wrap_future(future)

    async def call_batch(self, partition: int, requests: list[Any]) -> list[Any]:
        """Send ``requests`` for one turn; replies in order, an error in place of a failure.
        Encoded as over Ray, so the partition checks a batch the same way from either host."""
        payload = m.encode_requests(requests)
        future = self._submit(partition, self._parts[partition].handle_batch(payload))
        return await asyncio.wrap_future(future)

    def stats(self) -> list[dict[str, int]]:
        async def collect(part: Partition) -> dict[str, int]:
            return part.stats()

        asked = [self._submit(i, collect(part)) for i, part in enumerate(self._parts)]
        return [future.result() for future in asked]

    def close(self) -> None:
        """Close every partition and stop the loop threads."""
        if not any(runner.running for runner in self._loop_threads):
            return
        try:
            closing = [self._submit(i, part.close()) for i, part in enumerate(self._parts)]
            for future in closing:
                future.result(timeout=CLOSE_TIMEOUT_S)
        finally:
            self._executor.close()
            for runner in self._loop_threads:
                runner.stop()
