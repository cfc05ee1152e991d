"""In-process Host: each Partition on an asyncio loop of its own, in a background thread.

One thread per partition, as each Ray partition is a process of its own: workflow code that
blocks (``time.sleep``, blocking I/O) holds its own partition only, and the others go on
(the GIL is released by blocking calls; see README "Rules for workflow code"). Under a
stepped clock (``duraflow.testing``) every partition shares one loop, so the clock's
stepper sees them all settle between its moves.

Fencing (``storage/fencing.py``): with ``takeover=True`` the host breaks the lock of each
partition file a stalled owner still holds (the operator says that owner is replaced) and
claims a newer epoch; a partition of this host whose file another owner took over the same way
is closed at its next write turn (``fenced``), having written nothing more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from duraflow.actors import messages as m
from duraflow.actors.partition import Partition
from duraflow.actors.router import partition_of
from duraflow.actors.stepped_time import SteppedClock, TimeStepper
from duraflow.client.host import Host
from duraflow.config import EngineConfig
from duraflow.engine.activities import InlineExecutor
from duraflow.errors import PartitionFenced
from duraflow.loop_thread import LoopThread
from duraflow.storage import fencing
from duraflow.storage.layout import partition_path

log = logging.getLogger("duraflow.local")

T = TypeVar("T")

CLOSE_TIMEOUT_S = 30.0


class LocalHost(Host):
    """Hosts the partitions of ``config`` (its ``data_dir``, ``partitions``, ...) in this
    process.

    Args:
        config: the deployment's settings.
        clock: a stepped clock for every partition (``duraflow.testing``); ``stepper`` then
            moves it. None: the wall clock.
        takeover: open partition files whose lock a stalled owner still holds (the caller
            knows that owner is replaced): its lock is broken and a newer epoch claimed, so it
            writes nothing more once it wakes. Without it such a file raises
            PartitionUnavailable.
    """

    def __init__(
        self, config: EngineConfig, *, clock: SteppedClock | None = None, takeover: bool = False
    ) -> None:
        self.config = config
        self.partitions = config.partitions
        self.fenced: dict[int, PartitionFenced] = {}
        """The partitions this host closed because a newer owner took their file over."""
        self._fenced_closing: dict[int, concurrent.futures.Future[None]] = {}
        count = config.partitions if clock is None else 1
        self._loop_threads = [LoopThread(f"duraflow-partition-{i}") for i in range(count)]
        self._runners = self._loop_threads * (config.partitions // count)
        """Each partition's loop thread (one shared by all under a stepped clock)."""
        # Async activities run on the loop of the partition that starts them.
        self._executor = InlineExecutor(self._runners[0].loop, config.activity_threads)
        data_dir = Path(config.data_dir)
        self._paths = [partition_path(data_dir, i) for i in range(config.partitions)]
        self._parts = [
            Partition(
                i,
                self._paths[i],
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
            opening = [self._submit(i, self._open(i, takeover)) for i in range(self.partitions)]
            for future in opening:
                future.result()
        except BaseException:
            self.close()
            raise

    async def _open(self, index: int, takeover: bool) -> None:
        if takeover:
            holder = fencing.break_lock(self._paths[index])
            if holder is not None:
                log.warning(
                    "partition %d: taking its file over from %s, which still holds it "
                    "(takeover=True); that owner writes nothing more once it wakes",
                    index,
                    holder,
                )
        with fencing.fenced_callback(functools.partial(self._fenced_out, index)):
            await self._parts[index].open()

    def _fenced_out(self, index: int, error: PartitionFenced) -> None:
        """Partition ``index``'s file was taken over (called in the turn that found it, on its
        loop): close the partition, which writes nothing more."""
        self.fenced[index] = error
        self._fenced_closing[index] = self._submit(index, self._parts[index].close())

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
        """Send ``request`` to partition ``partition``; awaitable from any event loop.

        Raises:
            PartitionFenced: another owner took the partition's file over.
        """
        self._check_owned(partition)
        future = self._submit(partition, self._parts[partition].handle(request))
        return await asyncio.wrap_future(future)

    async def call_batch(self, partition: int, requests: list[Any]) -> list[Any]:
        """Send ``requests`` for one turn; replies in order, an error in place of a failure.
        Encoded as over Ray, so the partition checks a batch the same way from either host."""
        self._check_owned(partition)
        payload = m.encode_requests(requests)
        future = self._submit(partition, self._parts[partition].handle_batch(payload))
        return await asyncio.wrap_future(future)

    def _check_owned(self, partition: int) -> None:
        if self.fenced:
            error = self.fenced.get(partition)
            if error is not None:
                raise PartitionFenced(str(error))

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
            closing = [
                self._fenced_closing.get(i) or self._submit(i, part.close())
                for i, part in enumerate(self._parts)
            ]
            for future in closing:
                future.result(timeout=CLOSE_TIMEOUT_S)
        finally:
            self._executor.close()
            for runner in self._loop_threads:
                runner.stop()
