"""Serving a deployment on a running Ray cluster: what ``duraflow serve``, ``worker``,
``status`` and ``stop`` do."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any

import msgspec

from duraflow.config import (
    DEFAULT_NAMESPACE,
    EngineConfig,
    WorkerPool,
    check_queue,
)
from duraflow.errors import ConfigurationError, PartitionUnavailable
from duraflow.runtime import join_ray, open_data_dir
from duraflow.storage.deployment import recorded_partitions

SERVE_TIMEOUT_S = 120.0
"""How long :func:`serve` waits for every partition to open (recover) its file."""
STATUS_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
CLEANUP_TIMEOUT_S = 5.0


class Served(msgspec.Struct, frozen=True):
    """What :func:`serve` found running or started.

    Attributes:
        config: the served config.
        already_running: the namespace already served this data directory with this config;
            nothing was created.
        statuses: one dict per partition (``index``, ``pid``, ``node_ip``, ``open``, ...).
    """

    config: EngineConfig
    already_running: bool
    statuses: list[dict[str, Any]]


def serve(
    config: EngineConfig, *, address: str = "auto", timeout: float = SERVE_TIMEOUT_S
) -> Served:
    """Serve ``config`` on the running Ray cluster at ``address``: create its detached
    partition actors and its archive consumer, and wait until every partition has opened
    (recovered) its file.

    The actors outlive this process and restart on failure; each partition imports
    ``config.app_modules`` when it starts, so a restarted partition finds its workflow code
    without any client. They go away with the cluster or with :func:`stop_serving`. Serving
    again with the same config finds the running actors and changes nothing.

    Args:
        config: the deployment, as :func:`engine_config` builds it (``duraflow serve`` builds
            it from its options); every node that may host a partition must see its data
            directory at the same path.
        address: the cluster (``"auto"`` on one of its nodes, or the head's ``host:port``).
        timeout: seconds to wait for the partitions to open.

    Raises:
        ConfigurationError: ``config.partitions`` differs from the count recorded in the data
            directory; the namespace already serves another data directory or other settings;
            an app module cannot be imported; the cluster cannot be joined.
        PartitionUnavailable: a partition did not open within ``timeout``.
    """
    from duraflow.actors import ray_consumer, ray_deployment, ray_host  # imports ray: only on Ray

    for module in config.app_modules:  # here first: an unimportable module fails now
        _import_app(module)
    path = Path(config.data_dir)
    recorded_partitions(path, config.partitions)  # a count that differs fails before Ray
    join_ray(address, config.namespace)
    running = ray_deployment.running_status(config.namespace, timeout)
    if running is not None:
        ray_host.check_same_deployment(running, config)
    open_data_dir(config)
    try:
        host = ray_host.RayHost.create(config, detached=True, timeout=timeout)
    except PartitionUnavailable:
        if running is None:  # remove the actors this call created (some may be up)
            with contextlib.suppress(PartitionUnavailable):
                ray_deployment.stop_partition_actors(config.namespace, timeout=CLEANUP_TIMEOUT_S)
        raise
    if config.archive:
        ray_consumer.start_consumer(config, detached=True)
    return Served(config=config, already_running=running is not None, statuses=host.statuses())


def serve_workers(
    queue: str,
    pool: WorkerPool,
    *,
    address: str = "auto",
    namespace: str | None = None,
    timeout: float = SERVE_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Start (or find) the detached worker pool of ``queue`` for the deployment served in
    ``namespace`` on the Ray cluster at ``address``, and wait until every worker answers.

    The workers outlive this process, restart when their process dies, and import the
    deployment's app modules. Returns each worker's status (``queue``, ``index``, ``pid``,
    ``node_id``).

    Raises:
        PartitionUnavailable: nothing is served in that namespace.
        ConfigurationError: a bad queue name; the cluster cannot be joined.
        TimeoutError: a worker did not answer within ``timeout`` (no node has what it asks).
    """
    from duraflow.actors import ray_deployment  # imports ray: only for the Ray runtime

    check_queue(queue)
    namespace = namespace or DEFAULT_NAMESPACE
    join_ray(address, namespace)
    running = ray_deployment.running_status(namespace, timeout)
    if running is None:
        raise PartitionUnavailable(
            f"no duraflow deployment in Ray namespace {namespace!r}: serve one first "
            "(duraflow serve)"
        )
    config = EngineConfig.from_public(running["config"])
    return ray_deployment.start_worker_pool(config, queue, pool, timeout)


def serving_status(
    *, address: str = "auto", namespace: str | None = None, timeout: float = STATUS_TIMEOUT_S
) -> list[dict[str, Any]]:
    """One dict per partition of the deployment served in ``namespace``: ``index``, ``pid``,
    ``node_ip``, ``node_id``, ``open``, ``resident``, ``lsn``, ``data_dir`` — or ``index`` and
    ``error`` for a partition that did not answer within ``timeout``.

    Raises:
        PartitionUnavailable: nothing is served in that namespace.
        ConfigurationError: the cluster cannot be joined.
    """
    from duraflow.actors import ray_host  # imports ray: only for the Ray runtime

    namespace = namespace or DEFAULT_NAMESPACE
    join_ray(address, namespace)
    return ray_host.RayHost.connect(namespace).status_reports(timeout)


def serving_pools(
    partitions: list[dict[str, Any]],
    *,
    namespace: str | None = None,
    timeout: float = STATUS_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """One dict per worker pool of the deployment served in ``namespace`` (after
    :func:`serving_status`, whose reports are ``partitions``): ``queue``, ``size``, ``alive``
    (workers that answered within ``timeout``), ``running`` (attempts they run now) and
    ``outstanding`` (attempts the partitions sent them or are about to, not answered yet)."""
    from duraflow.actors import workers  # imports ray: only for the Ray runtime

    return workers.pool_reports(namespace or DEFAULT_NAMESPACE, partitions, timeout)


def stop_serving(
    *, address: str = "auto", namespace: str | None = None, timeout: float = STOP_TIMEOUT_S
) -> list[int]:
    """Close every partition served in ``namespace`` and kill its actor for good; the data
    directory stays as it is (open runs resume when it is served again).

    Returns:
        The indexes of the partitions stopped.

    Raises:
        PartitionUnavailable: nothing is served in that namespace.
        ConfigurationError: the cluster cannot be joined.
    """
    from duraflow.actors import ray_deployment  # imports ray: only for the Ray runtime

    namespace = namespace or DEFAULT_NAMESPACE
    join_ray(address, namespace)
    return ray_deployment.stop_partition_actors(namespace, timeout)


def _import_app(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # reason: any error raised by the app's import is the app's
        raise ConfigurationError(
            f"cannot import app module {module!r}: {type(exc).__name__}: {exc}"
        ) from None
