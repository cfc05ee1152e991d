"""Engine: picks the hosting, records the deployment (partition count), wires host and client."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, get_args

from duraflow.actors.local_host import LocalHost
from duraflow.client.blocking import BlockingRunner
from duraflow.client.client import Client, set_connector
from duraflow.client.host import Host
from duraflow.config import (
    COMMIT_INTERVAL_S,
    DEADLOCK_THRESHOLD_S,
    DEFAULT_ACTIVITY_THREADS,
    DEFAULT_DATA_DIR,
    DEFAULT_NAMESPACE,
    DEFAULT_RETENTION_S,
    DEFAULT_SYNCHRONOUS,
    IDLE_BEFORE_HIBERNATE_S,
    SYNCHRONOUS_MODES,
    EngineConfig,
    S3Config,
    Synchronous,
    WorkerPool,
    check_namespace,
)
from duraflow.engine.retry import Duration, parse_duration
from duraflow.errors import ConfigurationError
from duraflow.storage.deployment import (
    Deployment,
    check_data_dir,
    open_deployment,
    recorded_partitions,
)
from duraflow.storage.layout import archive_paths, data_dir_path

if TYPE_CHECKING:
    # The archive's modules import pyarrow, pyiceberg and DuckDB (about a second): imported
    # where an engine or a client uses them, so a partition's process (which imports this
    # module with the ``duraflow`` package) never loads them.
    from duraflow.cdc.consumer import ConsumerThread
    from duraflow.storage.query import ArchiveReader

Runtime = Literal["ray", "local"]
"""Where an engine hosts its partitions: Ray actors, or threads of this process."""
RUNTIMES: tuple[str, ...] = get_args(Runtime)
ANSWER_MARGIN_S = 10.0
"""How much longer than its own timeout a call to the archive consumer may take to answer."""


def open_data_dir(config: EngineConfig) -> Deployment:
    """Check the data directory of ``config``, creating it on first start: its deployment
    record, every partition file, and (with the archive on) that its archive's tables are
    its own, not those of the data directory it was copied or moved from.

    Raises:
        ConfigurationError: naming the path that is wrong and what to do (see
            ``storage/deployment.py`` and ``storage/catalog.py``).
    """
    data_dir = Path(config.data_dir)
    check_data_dir(data_dir)
    archived: dict[int, int] = {}
    if config.archive:
        # pyiceberg is imported here, not with the module (see TYPE_CHECKING above)
        from duraflow.storage.catalog import archived_offsets, check_table_locations, warehouse_uri

        root, _ = archive_paths(data_dir)
        check_table_locations(root, warehouse_uri(root, config.warehouse))
        archived = archived_offsets(root)
    return open_deployment(data_dir, config.partitions, config.synchronous, archived)


def relocate_archive(data_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Point the archive of a copied or moved data directory at its own files (what
    ``duraflow relocate-archive`` does; see ``storage/relocate.py``). Run it with no engine
    open on the data directory.

    Returns:
        The data files registered per table; empty when the archive was at its place.

    Raises:
        ConfigurationError: no archive, or one that names files missing under ``data_dir``.
    """
    from duraflow.storage import relocate  # reads Iceberg manifests: only when asked

    return relocate.relocate_archive(data_dir_path(data_dir))


def engine_config(
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    *,
    partitions: int | None = None,
    namespace: str | None = None,
    synchronous: Synchronous = DEFAULT_SYNCHRONOUS,
    activity_threads: int = DEFAULT_ACTIVITY_THREADS,
    max_resident_runs: int | None = None,
    hibernate_after: Duration | None = IDLE_BEFORE_HIBERNATE_S,
    retention: Duration = DEFAULT_RETENTION_S,
    archive: bool = True,
    warehouse: str | None = None,
    s3: S3Config | None = None,
    archive_interval: Duration = COMMIT_INTERVAL_S,
    app_modules: Sequence[str] = (),
    partition_resources: dict[str, float] | None = None,
    deadlock_threshold: Duration | None = DEADLOCK_THRESHOLD_S,
    workers: dict[str, WorkerPool] | None = None,
) -> EngineConfig:
    """The one :class:`EngineConfig` that :class:`Engine` and ``duraflow serve`` (through
    :func:`serve`) build from their options: the same options give the same config on every
    path. Durations are parsed here; the data directory is only read (its partition count).

    Raises:
        ConfigurationError: a partition count that differs from the recorded one, or any
            setting out of its range (the message names the setting, the value and the range;
            see :class:`EngineConfig`).
        InvalidDuration: a duration that cannot be parsed, is negative or over 100 years.
    """
    path = data_dir_path(data_dir)
    mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
    if mode not in SYNCHRONOUS_MODES:
        raise ConfigurationError(
            f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}"
        )
    if isinstance(app_modules, str):  # one module given bare means that module, not letters
        app_modules = (app_modules,)
    if partition_resources is not None and not isinstance(partition_resources, dict):
        raise ConfigurationError(
            f"partition_resources must be a dict of resource names to amounts, "
            f"got {partition_resources!r}"
        )
    return EngineConfig(
        data_dir=str(path),
        partitions=recorded_partitions(path, partitions),
        namespace=namespace or DEFAULT_NAMESPACE,
        synchronous=mode,
        activity_threads=activity_threads,
        max_resident_runs=max_resident_runs,
        hibernate_after_s=(
            None if hibernate_after is None else parse_duration(hibernate_after, "hibernate_after")
        ),
        retention_s=parse_duration(retention, "retention"),
        archive=archive,
        warehouse=warehouse,
        s3=s3,
        archive_interval_s=parse_duration(archive_interval, "archive_interval"),
        app_modules=tuple(app_modules),
        partition_resources=None if partition_resources is None else dict(partition_resources),
        deadlock_threshold_s=_threshold(deadlock_threshold),
        workers={} if workers is None else workers,
    )


def _threshold(deadlock_threshold: Duration | None) -> float | None:
    if deadlock_threshold is None:
        return None
    seconds = parse_duration(deadlock_threshold, "deadlock_threshold")
    if seconds <= 0:
        raise ConfigurationError(
            f"deadlock_threshold must be more than 0 s (None turns it off), got {seconds:g}"
        )
    return seconds


def archive_reader(config: EngineConfig) -> ArchiveReader | None:
    """How a client reads the archive of ``config`` (None without an archive)."""
    if not config.archive:
        return None
    from duraflow.storage.query import ArchiveReader

    root, warm = archive_paths(Path(config.data_dir))
    return ArchiveReader(root, warm, warehouse=config.warehouse, s3=config.s3)


class Engine:
    """A duraflow engine over one data directory.

    Args:
        data_dir: where partition files live (default ``./.duraflow``). On a Ray cluster
            with several nodes it must be a folder every node sees at the same path.
        runtime: ``"ray"`` (default): partitions are Ray actors and activities run on worker
            pools (README "Where activities run"), on
            the cluster at ``address`` or on a local Ray started for this engine;
            ``"local"``: partitions on a background thread of this process, activities on
            its threads (tests, embedding).
        partitions: partition count, fixed when the data directory is created (default 4;
            1 to 1,024).
        synchronous: SQLite ``synchronous`` mode: ``"FULL"`` (default; survives power loss)
            or ``"NORMAL"`` (survives a killed process, not power loss).
        activity_threads: threads for sync activities run in-process (1 to 1,024).
        max_resident_runs: per partition, how many runs stay in memory between turns (0 to
            2**31-1); the least recently used beyond it are dropped and rebuilt by replay
            when next needed (default: no cap).
        hibernate_after: runs idle (waiting on a timer or signal) this long are dropped from
            memory and rebuilt by replay when woken (default 60 s; None keeps them).
        address: the Ray cluster to join (``"auto"``, ``"ray://..."``); None starts a local
            Ray unless this process is already connected. Ray runtime only.
        namespace: the Ray namespace of this deployment's actors (default ``"duraflow"``;
            1 to 64 letters, digits, ``_``, ``.``, ``-``).
        partition_resources: custom Ray resources each partition actor asks for, e.g.
            ``{"duraflow_partition": 1}`` to place partitions only on the nodes started with
            that resource (Ray runtime only; default: none).
        retention: how long a closed run stays in its partition's file once the archive has
            it (default 24 h; 0 allowed); after that it is answered from the archive only.
        archive: run the archive's consumer (warm Parquet, then Iceberg; default True).
        warehouse: where the Iceberg tables' files go: ``s3://bucket/prefix``, a path or a
            ``file://`` URI (default ``data_dir/archive/warehouse``).
        s3: endpoint, region and credentials of an ``s3://`` warehouse.
        archive_interval: how often warm segments are committed to Iceberg (default 5 s).
        deadlock_threshold: workflow code (an activation or a query handler) that holds its
            partition longer than this without an ``await`` is reported while it blocks and
            its run marked stuck when it returns (default 2 s; None turns the detector off,
            e.g. to stop at breakpoints in workflow code). README "Rules for workflow code".
        takeover: open the partition files even if a stalled owner (a process stopped,
            frozen or cut off, that you know is being replaced) still holds them: their locks
            are broken and each file gets a newer epoch, so that owner writes nothing more
            when it wakes and closes its partitions (README "Fencing"). ``runtime="local"``
            only: a restarted Ray partition actor takes over from its stalled predecessor by
            itself. Without it (default) such a file raises ``PartitionUnavailable``.
        workers: worker pools by queue name, e.g. ``{"gpu": df.WorkerPool(size=4,
            num_gpus=1)}`` for ``@df.activity(queue="gpu")``; ``"default"`` sizes the pool
            of activities that name no queue (default: one worker per cluster CPU). Ray
            runtime only: in-process, every activity runs on this process's threads.

    These settings become one :class:`~duraflow.config.EngineConfig` (``engine.config``),
    the same that ``duraflow serve`` builds from its options; partitions and the archive's
    consumer take every setting from it.

    Every option is checked here: one out of its range raises ``ConfigurationError`` (or
    ``InvalidDuration`` for a duration: at most 100 years) naming the option, the value and
    what is allowed, before anything is written.

    Workflow and activity modules must be imported before the engine opens a data directory
    that has open runs of them, or they are imported from the recorded ``module:qualname``.
    Use it as a context manager, or call :meth:`close`.
    """

    _client_class: type[Client] = Client
    """What :meth:`client` is (``duraflow.testing`` counts the waits for results)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        *,
        runtime: Runtime = "ray",
        partitions: int | None = None,
        synchronous: Synchronous = DEFAULT_SYNCHRONOUS,
        activity_threads: int = DEFAULT_ACTIVITY_THREADS,
        max_resident_runs: int | None = None,
        hibernate_after: Duration | None = IDLE_BEFORE_HIBERNATE_S,
        address: str | None = None,
        namespace: str | None = None,
        partition_resources: dict[str, float] | None = None,
        retention: Duration = DEFAULT_RETENTION_S,
        archive: bool = True,
        warehouse: str | None = None,
        s3: S3Config | None = None,
        archive_interval: Duration = COMMIT_INTERVAL_S,
        deadlock_threshold: Duration | None = DEADLOCK_THRESHOLD_S,
        takeover: bool = False,
        workers: dict[str, WorkerPool] | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ConfigurationError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if not isinstance(takeover, bool):
            raise ConfigurationError(f"takeover must be True or False, got {takeover!r}")
        if takeover and runtime != "local":
            raise ConfigurationError(
                "takeover=True is for runtime='local': on Ray, a restarted partition actor "
                "takes its file over from a stalled predecessor by itself"
            )
        self._takeover = takeover
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigurationError(
                f"address must be a Ray address ('auto', 'host:port', 'ray://...') or None, "
                f"got {address!r}"
            )
        self.config = engine_config(
            data_dir,
            partitions=partitions,
            namespace=namespace,
            synchronous=synchronous,
            activity_threads=activity_threads,
            max_resident_runs=max_resident_runs,
            hibernate_after=hibernate_after,
            retention=retention,
            archive=archive,
            warehouse=warehouse,
            s3=s3,
            archive_interval=archive_interval,
            partition_resources=partition_resources,
            deadlock_threshold=deadlock_threshold,
            workers=workers,
        )
        """Every setting of this engine, as its partitions and archive consumer got them."""
        self.data_dir = Path(self.config.data_dir)
        self.runtime = runtime
        self.namespace: str | None = None
        """The Ray namespace of this engine's partition actors (Ray runtime only)."""
        self.deployment = open_data_dir(self.config)
        """The data directory's deployment record (partition count, deployment ID)."""
        self._consumer: ConsumerThread | None = None
        self._consumer_actor: Any = None
        self._host: Host
        if runtime == "local":
            self._host = self._local_host()
            if self.config.archive:
                from duraflow.cdc.consumer import Consumer, ConsumerThread

                self._consumer = ConsumerThread(Consumer(self._host, self.config))
        else:
            from duraflow.actors.ray_engine import EngineOnRay  # imports ray: only on Ray

            on_ray = EngineOnRay.start(self.config, address)
            self._host = on_ray
            self._consumer_actor = on_ray.consumer
            self.namespace = self.config.namespace
        self._client = self._client_class(self._host, BlockingRunner(), archive_reader(self.config))

    def _local_host(self) -> LocalHost:
        """The in-process host (``duraflow.testing`` gives it a stepped clock)."""
        return LocalHost(self.config, takeover=self._takeover)

    def client(self) -> Client:
        """The client of this engine (start workflows, get handles, list)."""
        return self._client

    def stats(self) -> list[dict[str, int]]:
        """Per-partition counts: open runs, resident runs, LSN."""
        return self._host.stats()

    def duckdb(self) -> Any:
        """A DuckDB session over the archive and live runs (see :meth:`Client.duckdb`)."""
        return self._client.duckdb()

    def sync_archive(self, timeout: float = 30.0) -> bool:
        """Wait until every event committed so far is queryable in the archive (warm or cold
        tier); False if ``timeout`` seconds passed first.

        Raises:
            ConfigurationError: the engine was made with ``archive=False``.
        """
        if self._consumer is not None:
            waiting = self._consumer.consumer.caught_up(timeout)
            return bool(self._consumer.call(waiting, timeout + ANSWER_MARGIN_S))
        if self._consumer_actor is not None:
            from duraflow.actors import ray_host  # imports ray: only on the Ray runtime

            return bool(
                ray_host.call_actor(
                    self._consumer_actor, "caught_up", timeout, timeout=timeout + ANSWER_MARGIN_S
                )
            )
        raise ConfigurationError("this engine has no archive (archive=False)")

    def commit_archive(self, timeout: float = 120.0) -> dict[int, int]:
        """Commit the warm tier to the Iceberg tables now; returns the offsets per partition.

        Raises:
            ConfigurationError: the engine was made with ``archive=False``.
            TimeoutError: the archive could not be opened or committed within ``timeout``
                seconds (an unreachable warehouse, say).
        """
        if self._consumer is not None:
            committing = self._consumer.consumer.commit(timeout)
            return dict(self._consumer.call(committing, timeout + ANSWER_MARGIN_S))
        if self._consumer_actor is not None:
            from duraflow.actors import ray_host  # imports ray: only on the Ray runtime

            return dict(
                ray_host.call_actor(
                    self._consumer_actor, "commit", timeout, timeout=timeout + ANSWER_MARGIN_S
                )
            )
        raise ConfigurationError("this engine has no archive (archive=False)")

    def maintain_archive(self, keep_snapshots: Duration = "1h", timeout: float = 600.0) -> Any:
        """Compact each closed day of the archive's tables into one sorted file and expire
        snapshots older than ``keep_snapshots``; returns what was done per table.

        Run it now and then (e.g. daily): commits stay cheap only while few snapshots are kept.
        """
        keep_s = parse_duration(keep_snapshots, "keep_snapshots")
        if self._consumer is not None:
            return self._consumer.call(self._consumer.consumer.maintain(keep_s), timeout)
        if self._consumer_actor is not None:
            from duraflow.actors import ray_host  # imports ray: only on the Ray runtime

            return ray_host.call_actor(self._consumer_actor, "maintain", keep_s, timeout=timeout)
        raise ConfigurationError("this engine has no archive (archive=False)")

    def close(self) -> None:
        """Close the client (its subscriptions end first), then the partitions this engine
        started (open runs resume when the data directory is opened again) and, if this
        engine started Ray, Ray too."""
        self._client.close()  # nothing of the client may call a partition once it is gone
        if self._consumer is not None:
            self._consumer.close()
        self._host.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- reaching a deployment served on a Ray cluster ---------------------------------------------


def join_ray(address: str, namespace: str) -> None:
    """Join the Ray cluster at ``address`` (``"auto"``: the one on this node) in ``namespace``.

    Raises:
        ConfigurationError: no address, a bad namespace, or the cluster cannot be joined.
    """
    from duraflow.actors import ray_cluster  # imports ray: only for the Ray runtime

    if not address:
        raise ConfigurationError(
            "the address of a running Ray cluster is needed: 'auto' on one of its nodes, or "
            "the head's host:port (start one with 'ray start --head')"
        )
    check_namespace(namespace)
    ray_cluster.join_cluster(address, namespace)


def _connect_on_ray(address: str, namespace: str) -> tuple[Host, Any]:
    from duraflow.actors import ray_host  # imports ray: only for Ray clients

    join_ray(address, namespace)
    host = ray_host.RayHost.connect(namespace)
    config = EngineConfig.from_public(host.statuses()[0]["config"])
    # The deployment's archive settings without its S3 credentials: this process signs in to
    # the bucket with its own (the AWS environment variables, a profile, an instance role).
    return host, archive_reader(config)


set_connector(_connect_on_ray)
