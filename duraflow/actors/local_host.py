"""In-process Host: every Partition on one asyncio loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from duraflow.actors import messages as m
from duraflow.actors.partition import Partition
from duraflow.actors.router import partition_of
from duraflow.config import EngineConfig
from duraflow.engine.activities import InlineExecutor
from duraflow.storage.layout import partition_path


class LocalHost:
    """Hosts the partitions of ``config`` (its ``data_dir``, ``partitions``, ...) in this
    process."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.partitions = config.partitions
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="duraflow-partitions", daemon=True
        )
        self._thread.start()
        self._executor = InlineExecutor(self._loop, config.activity_threads)
        data_dir = Path(config.data_dir)
        self._parts = [
            Partition(
                i, partition_path(data_dir, i), config, executor=self._executor, send=self._send
            )
            for i in range(config.partitions)
        ]
        try:
            asyncio.run_coroutine_threadsafe(self._open_all(), self._loop).result()
        except BaseException:
            self.close()
            raise

    async def _open_all(self) -> None:
        for part in self._parts:
            await part.open()

    async def _send(self, workflow_id: str, request: Any) -> Any:
        return await self._parts[partition_of(workflow_id, self.partitions)].handle(request)

    async def call(self, partition: int, request: Any) -> Any:
        """Send ``request`` to partition ``partition``; awaitable from any event loop."""
        future = asyncio.run_coroutine_threadsafe(
            self._parts[partition].handle(request), self._loop
        )
        return await asyncio.wrap_future(future)

    async def call_batch(self, partition: int, requests: list[Any]) -> list[Any]:
        """Send ``requests`` for one turn; replies in order, an error in place of a failure.
        Encoded as over Ray, so the partition checks a batch the same way from either host."""
        future = asyncio.run_coroutine_threadsafe(
            self._parts[partition].handle_batch(m.encode_requests(requests)), self._loop
        )
        return await asyncio.wrap_future(future)

    def stats(self) -> list[dict[str, int]]:
        async def collect() -> list[dict[str, int]]:
            return [p.stats() for p in self._parts]

        return asyncio.run_coroutine_threadsafe(collect(), self._loop).result()

    def close(self) -> None:
        """Close every partition and stop the loop thread."""
        if self._loop.is_closed():
            return

        async def close_all() -> None:
            for part in self._parts:
                await part.close()

        try:
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout=30)
        finally:
            self._executor.close()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
