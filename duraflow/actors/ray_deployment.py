"""A deployment served on Ray, seen from outside it: the running one's status, starting a
queue's detached workers, and stopping it (partitions, the archive's consumer, the workers)."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import ray

from duraflow.actors.ray_consumer import CONSUMER_NAME
from duraflow.actors.ray_host import actor_name, wait_opened
from duraflow.actors.workers import pool_names, start_pool
from duraflow.config import EngineConfig, WorkerPool
from duraflow.errors import PartitionUnavailable

_PARTITION_NAME = re.compile(r"partition-\d{4,}")


def running_status(namespace: str, timeout: float) -> dict[str, Any] | None:
    """The status of partition 0 of the deployment served in ``namespace`` (None if none)."""
    try:
        first = ray.get_actor(actor_name(0), namespace=namespace)
    except ValueError:
        return None
    return wait_opened([first], timeout)[0]


def stop_partition_actors(namespace: str, timeout: float) -> list[int]:
    """Close every partition actor of ``namespace`` (files and locks released), then kill it
    for good. Returns the indexes of the partitions stopped.

    Raises:
        PartitionUnavailable: no partition actor in ``namespace``.
    """
    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and _PARTITION_NAME.fullmatch(a["name"])
    )
    if not names:
        raise PartitionUnavailable(f"no duraflow deployment in Ray namespace {namespace!r}")
    handles = []
    for name in names:
        with contextlib.suppress(ValueError):  # died meanwhile
            handles.append(ray.get_actor(name, namespace=namespace))
    with contextlib.suppress(ValueError):  # the archive's consumer, if it runs
        handles.insert(0, ray.get_actor(CONSUMER_NAME, namespace=namespace))
    with contextlib.suppress(Exception):  # an actor may be restarting or gone
        ray.get([h.shutdown.remote() for h in handles], timeout=timeout)
    for handle in handles:
        ray.kill(handle, no_restart=True)
    stop_workers(namespace)
    return [int(name.removeprefix("partition-")) for name in names]


def start_worker_pool(
    config: EngineConfig, queue: str, pool: WorkerPool, timeout: float
) -> list[dict[str, Any]]:
    """Create (or find) the detached workers of ``queue`` and return their statuses.

    Raises:
        TimeoutError: a worker did not answer within ``timeout`` seconds.
    """
    handles = start_pool(config, queue, pool, detached=True)
    try:
        return list(ray.get([h.status.remote() for h in handles], timeout=timeout))
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            f"the workers of queue {queue!r} did not start within {timeout:g}s: does a node "
            f"offer what each asks for ({pool.ray_options()})?"
        ) from None


def stop_workers(namespace: str, queue: str | None = None) -> list[str]:
    """Kill the workers of ``queue`` (of every pool when None) in ``namespace``; their names."""
    names = pool_names(namespace, queue)
    for name in names:
        with contextlib.suppress(ValueError):  # died meanwhile
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    return names
