"""The archive's stream consumer (``cdc/consumer.py``) as a Ray actor named ``consumer`` in
the deployment's namespace: one per deployment, restarted by Ray, resuming from the archive.
It reads the partitions through a ``RayHost`` like any client (over links where it shares
their node)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import ray

from duraflow.actors.ray_host import RayHost, actor_name
from duraflow.config import EngineConfig

CONSUMER_NAME = "consumer"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=100)
class ConsumerActor:
    """The archive's stream consumer as a Ray actor; restarts resume from the archive."""

    async def __init__(self, config: bytes) -> None:
        # Imported here, not with the module: pyarrow, pyiceberg and DuckDB cost a partition
        # actor (which shares this module) about a second on every restart.
        from duraflow.cdc.consumer import Consumer

        self._config = EngineConfig.decode(config)
        handles = [
            ray.get_actor(actor_name(i), namespace=self._config.namespace)
            for i in range(self._config.partitions)
        ]
        self._consumer = Consumer(RayHost(handles), self._config)
        self._task = asyncio.get_running_loop().create_task(self._consumer.run())

    async def status(self) -> dict[str, Any]:
        """PID, node, the consumer's counters and offsets, and the deployment's config as
        :meth:`EngineConfig.public` shows it (no credentials)."""
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "running": not self._task.done(),
            "config": self._consumer.config.public(),
            **self._consumer.status(),
        }

    async def caught_up(self, timeout: float) -> bool:
        return await self._consumer.caught_up(timeout)

    async def commit(self, timeout: float | None = None) -> dict[int, int]:
        return await self._consumer.commit(timeout)

    async def maintain(self, keep_snapshots_s: float) -> dict[str, Any]:
        return await self._consumer.maintain(keep_snapshots_s)

    async def shutdown(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


def start_consumer(config: EngineConfig, *, detached: bool) -> Any:
    """Create (or find) the deployment's consumer actor."""
    options: dict[str, Any] = {
        "name": CONSUMER_NAME,
        "namespace": config.namespace,
        "get_if_exists": True,
    }
    if detached:
        options["lifetime"] = "detached"
    return ConsumerActor.options(**options).remote(config.encode())
