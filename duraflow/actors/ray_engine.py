"""The Ray host an Engine starts: it starts or joins Ray, creates (or finds) the partition
actors, the worker pools and the archive's consumer, and on close stops what it created."""

from __future__ import annotations

import contextlib
from typing import Any

import ray

from duraflow.actors.ray_cluster import start_or_join_ray
from duraflow.actors.ray_consumer import start_consumer
from duraflow.actors.ray_host import RayHost, actor_name
from duraflow.config import EngineConfig
from duraflow.engine.definitions import main_module_definitions


class EngineOnRay(RayHost):
    """A RayHost that owns what it started: its partition actors and, maybe, Ray itself."""

    def __init__(
        self, handles: list[Any], created: bool, started_ray: bool, consumer: Any = None
    ) -> None:
        super().__init__(handles)
        self._created = created
        self._started_ray = started_ray
        self.consumer = consumer

    @classmethod
    def start(cls, config: EngineConfig, address: str | None) -> EngineOnRay:
        """Start or join Ray, then create (or find, if served already with the same config)
        the partition actors and the archive's consumer actor."""
        started_ray = start_or_join_ray(address, config.namespace)
        try:
            existing = ray.get_actor(actor_name(0), namespace=config.namespace)
        except ValueError:
            existing = None
        shipped_defs = main_module_definitions()
        shipped = ray.cloudpickle.dumps(shipped_defs) if shipped_defs else None  # type: ignore[attr-defined]  # reason: ray vendors cloudpickle
        host = RayHost.create(config, shipped=shipped)
        consumer = start_consumer(config, detached=False) if config.archive else None
        engine = cls(host._handles, existing is None, started_ray, consumer)
        engine.workers = host.workers
        return engine

    def close(self) -> None:
        super().close()
        if self._created:
            # All at once: a consumer actor still starting (a new worker process, a second or
            # so) must not keep the partitions running, their timers firing, meanwhile.
            owned = [*self._handles, *([self.consumer] if self.consumer is not None else [])]
            with contextlib.suppress(Exception):  # an actor may be restarting or gone
                ray.get([h.shutdown.remote() for h in owned], timeout=30)
            for handle in [*owned, *self.workers]:
                ray.kill(handle, no_restart=True)
        if self._started_ray:
            ray.shutdown()
