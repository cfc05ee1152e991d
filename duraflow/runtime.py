"""Engine: picks the hosting, records the deployment (partition count), wires host and client."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from duraflow.actors.local_host import LocalHost
from duraflow.actors.partition import DEFAULT_RETENTION_S
from duraflow.cdc.settings import COMMIT_INTERVAL_S, archive_paths
from duraflow.engine.client import BlockingRunner, Client, Host, set_connector
from duraflow.engine.definitions import Duration, parse_duration
from duraflow.errors import ConfigurationError, PartitionUnavailable
from duraflow.storage.sqlite_store import SYNCHRONOUS_MODES

if TYPE_CHECKING:
    # The archive's modules import pyarrow, pyiceberg and DuckDB (about a second): imported
    # where an engine or a client uses them, so a partition's process (which imports this
    # module with the ``duraflow`` package) never loads them.
    from duraflow.cdc.consumer import ConsumerThread
    from duraflow.storage.catalog import S3Config

DEFAULT_DATA_DIR = ".duraflow"
DEFAULT_PARTITIONS = 4
IDLE_BEFORE_HIBERNATE_S = 60.0
RUNTIMES = ("ray", "local")
DEPLOYMENT_FILE = "deployment.json"
ANSWER_MARGIN_S = 10.0
"""How much longer than its own timeout a call to the archive consumer may take to answer."""
DATA_FORMAT = 1


class RayHostProtocol(Host, Protocol):
    """What the engine needs of a host besides ``call``."""

    def stats(self) -> list[dict[str, int]]: ...

    def close(self) -> None: ...


class Deployment(msgspec.Struct, frozen=True):
    """What a data directory was created with; fixed for its lifetime."""

    partitions: int
    format: int = DATA_FORMAT


def load_deployment(data_dir: Path, partitions: int | None) -> Deployment:
    """Read (or, on first start, write) the deployment record of ``data_dir``.

    Raises:
        ConfigurationError: ``partitions`` differs from the recorded count, or is not >= 1.
    """
    path = data_dir / DEPLOYMENT_FILE
    if path.exists():
        recorded = msgspec.json.decode(path.read_bytes(), type=Deployment)
        if partitions is not None and partitions != recorded.partitions:
            raise ConfigurationError(
                f"{data_dir} was created with partitions={recorded.partitions}; it cannot be "
                f"opened with partitions={partitions} (workflow IDs are routed by that number)"
            )
        return recorded
    count = DEFAULT_PARTITIONS if partitions is None else partitions
    if not isinstance(count, int) or count < 1:
        raise ConfigurationError(f"partitions must be an integer >= 1, got {partitions!r}")
    data_dir.mkdir(parents=True, exist_ok=True)
    deployment = Deployment(partitions=count)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(deployment))
    os.replace(tmp, path)
    return deployment


class Engine:
    """A duraflow engine over one data directory.

    Args:
        data_dir: where partition files live (default ``./.duraflow``). On a Ray cluster
            with several nodes it must be a folder every node sees at the same path.
        runtime: ``"ray"`` (default): partitions are Ray actors and activities Ray tasks, on
            the cluster at ``address`` or on a local Ray started for this engine;
            ``"local"``: partitions on a background thread of this process, activities on
            its threads (tests, embedding).
        partitions: partition count, fixed when the data directory is created (default 4).
        synchronous: SQLite ``synchronous`` mode: ``"FULL"`` (default; survives power loss)
            or ``"NORMAL"`` (survives a killed process, not power loss).
        activity_threads: threads for sync activities run in-process.
        max_resident_runs: per partition, how many runs stay in memory between turns; the
            least recently used beyond it are dropped and rebuilt by replay when next needed
            (default: no cap).
        hibernate_after: runs idle (waiting on a timer or signal) this long are dropped from
            memory and rebuilt by replay when woken (default 60 s; None keeps them).
        address: the Ray cluster to join (``"auto"``, ``"ray://..."``); None starts a local
            Ray unless this process is already connected. Ray runtime only.
        namespace: the Ray namespace of this deployment's actors (default ``"duraflow"``).
        partition_resources: custom Ray resources each partition actor asks for, e.g.
            ``{"duraflow_partition": 1}`` to place partitions only on the nodes started with
            that resource (Ray runtime only; default: none).
        retention: how long a closed run stays in its partition's file once the archive has
            it (default 24 h; 0 allowed); after that it is answered from the archive only.

    Workflow and activity modules must be imported before the engine opens a data directory
    that has open runs of them, or they are imported from the recorded ``module:qualname``.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        *,
        runtime: str = "ray",
        partitions: int | None = None,
        synchronous: str = "FULL",
        activity_threads: int = 64,
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
    ) -> None:
        if runtime not in RUNTIMES:
            raise ConfigurationError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.data_dir = Path(data_dir).resolve()
        self.runtime = runtime
        self.namespace: str | None = None
        """The Ray namespace of this engine's partition actors (Ray runtime only)."""
        self.deployment = load_deployment(self.data_dir, partitions)
        idle_s = None if hibernate_after is None else parse_duration(hibernate_after)
        retention_s = parse_duration(retention, "retention")
        interval_s = parse_duration(archive_interval, "archive_interval")
        self._consumer: ConsumerThread | None = None
        self._consumer_actor: Any = None
        self._host: LocalHost | RayHostProtocol
        if runtime == "local":
            self._host = LocalHost(
                self.data_dir,
                self.deployment.partitions,
                synchronous=synchronous,
                activity_threads=activity_threads,
                max_resident_runs=max_resident_runs,
                hibernate_after_s=idle_s,
                retention_s=retention_s,
            )
            if archive:
                from duraflow.cdc.consumer import Consumer, ConsumerThread

                self._consumer = ConsumerThread(
                    Consumer(
                        self._host,
                        self.data_dir,
                        warehouse=warehouse,
                        s3=s3,
                        commit_interval_s=interval_s,
                    )
                )
        else:
            from duraflow.actors import ray_host  # imports ray: only for the Ray runtime

            settings = ray_host.HostSettings(
                data_dir=str(self.data_dir),
                partitions=self.deployment.partitions,
                namespace=namespace or ray_host.DEFAULT_NAMESPACE,
                synchronous=synchronous,
                activity_threads=activity_threads,
                max_resident_runs=max_resident_runs,
                hibernate_after_s=idle_s,
                retention_s=retention_s,
                actor_resources=partition_resources,
                archive=archive,
                warehouse=warehouse,
                archive_interval_s=interval_s,
            )
            ray_engine = ray_host.EngineOnRay.start(settings, address, s3)
            self._host = ray_engine
            self._consumer_actor = ray_engine.consumer
            self.namespace = settings.namespace
        self._runner = BlockingRunner()
        reader = None
        if archive:
            from duraflow.storage.query import ArchiveReader

            root, warm = archive_paths(self.data_dir)
            reader = ArchiveReader(root, warm, warehouse=warehouse, s3=s3)
        self._client = Client(self._host, self._runner, reader)

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
        """Close the partitions this engine started (open runs resume when the data directory
        is opened again) and, if this engine started Ray, Ray too."""
        if self._consumer is not None:
            self._consumer.close()
        self._host.close()
        self._runner.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- serving on a running Ray cluster: what `duraflow serve / status / stop` do ------------------

SERVE_TIMEOUT_S = 120.0
"""How long :func:`serve` waits for every partition to open (recover) its file."""
STATUS_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
CLEANUP_TIMEOUT_S = 5.0


class Served(msgspec.Struct, frozen=True):
    """What :func:`serve` found running or started.

    Attributes:
        already_running: the namespace already served this data directory with these
            settings; nothing was created.
        statuses: one dict per partition (``index``, ``pid``, ``node_ip``, ``open``, ...).
    """

    namespace: str
    data_dir: str
    partitions: int
    app_modules: tuple[str, ...]
    already_running: bool
    statuses: list[dict[str, Any]]


def serve(
    data_dir: str | os.PathLike[str],
    *,
    address: str = "auto",
    app_modules: Sequence[str] = (),
    partitions: int | None = None,
    namespace: str | None = None,
    synchronous: str = "FULL",
    partition_resources: dict[str, float] | None = None,
    timeout: float = SERVE_TIMEOUT_S,
) -> Served:
    """Serve ``data_dir`` on the running Ray cluster at ``address``: create its detached
    partition actors and wait until every partition has opened (recovered) its file.

    The actors outlive this process and restart on failure; each imports ``app_modules``
    when it starts, so a restarted partition finds its workflow code without any client.
    They go away with the cluster or with :func:`stop_serving`. Serving again with the same
    settings finds the running actors and changes nothing.

    Args:
        data_dir: the data directory; every node that may host a partition must see it at
            the same path.
        address: the cluster (``"auto"`` on one of its nodes, or the head's ``host:port``).
        app_modules: modules defining the workflows and activities (imported here first, so
            an unimportable module fails now rather than in every actor).
        partitions: partition count; fixed when the data directory is created (default 4).
        namespace: the Ray namespace of the actors (default ``"duraflow"``).
        synchronous: SQLite ``synchronous`` mode of the partitions.
        partition_resources: custom Ray resources each partition actor asks for, to keep
            partitions on the nodes that offer them (those that see the data directory).
        timeout: seconds to wait for the partitions to open.

    Raises:
        ConfigurationError: ``partitions`` differs from the count recorded in ``data_dir``;
            the namespace already serves another data directory or other app modules; an app
            module cannot be imported; the cluster cannot be joined.
        PartitionUnavailable: a partition did not open within ``timeout``.
    """
    from duraflow.actors import ray_host  # imports ray: only for the Ray runtime

    mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
    if mode not in SYNCHRONOUS_MODES:
        raise ConfigurationError(
            f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}"
        )
    modules = tuple(app_modules)
    for module in modules:
        _import_app(module)
    path = Path(data_dir).resolve()
    if (path / DEPLOYMENT_FILE).exists():
        load_deployment(path, partitions)  # a partition count that differs fails before Ray
    namespace = namespace or ray_host.DEFAULT_NAMESPACE
    _join(address, namespace)
    running = ray_host.running_status(namespace, timeout)
    if running is not None:
        if Path(running["data_dir"]) != path:
            raise ConfigurationError(
                f"Ray namespace {namespace!r} already serves {running['data_dir']}, not "
                f"{path}: serve it in another namespace (--namespace), or stop that one "
                f"first (duraflow stop --namespace {namespace})"
            )
        running_modules = tuple(running.get("app_modules", ()))
        if running_modules != modules:
            raise ConfigurationError(
                f"Ray namespace {namespace!r} already serves {path} with app modules "
                f"{list(running_modules)}, not {list(modules)}: stop it first "
                f"(duraflow stop --namespace {namespace}), then serve again"
            )
    deployment = load_deployment(path, partitions)
    settings = ray_host.HostSettings(
        data_dir=str(path),
        partitions=deployment.partitions,
        namespace=namespace,
        synchronous=mode,
        hibernate_after_s=IDLE_BEFORE_HIBERNATE_S,
        app_modules=modules,
        actor_resources=partition_resources,
    )
    try:
        host = ray_host.RayHost.create(settings, detached=True, timeout=timeout)
    except PartitionUnavailable:
        if running is None:  # remove the actors this call created (some may be up)
            with contextlib.suppress(PartitionUnavailable):
                ray_host.stop_partition_actors(namespace, timeout=CLEANUP_TIMEOUT_S)
        raise
    ray_host.start_consumer(settings, detached=True, s3=None)  # the archive's stream consumer
    return Served(
        namespace=namespace,
        data_dir=str(path),
        partitions=deployment.partitions,
        app_modules=modules,
        already_running=running is not None,
        statuses=host.statuses(),
    )


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

    namespace = namespace or ray_host.DEFAULT_NAMESPACE
    _join(address, namespace)
    return ray_host.RayHost.connect(namespace).status_reports(timeout)


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
    from duraflow.actors import ray_host  # imports ray: only for the Ray runtime

    namespace = namespace or ray_host.DEFAULT_NAMESPACE
    _join(address, namespace)
    return ray_host.stop_partition_actors(namespace, timeout)


def _join(address: str, namespace: str) -> None:
    from duraflow.actors import ray_host  # imports ray: only for the Ray runtime

    if not address:
        raise ConfigurationError(
            "the address of a running Ray cluster is needed: 'auto' on one of its nodes, or "
            "the head's host:port (start one with 'ray start --head')"
        )
    ray_host.join_cluster(address, namespace)


def _import_app(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # reason: any error raised by the app's import is the app's
        raise ConfigurationError(
            f"cannot import app module {module!r}: {type(exc).__name__}: {exc}"
        ) from None


def _connect_on_ray(address: str, namespace: str) -> tuple[Host, Any]:
    from duraflow.actors import ray_host  # imports ray: only for Ray clients

    _join(address, namespace)
    host = ray_host.RayHost.connect(namespace)
    data_dir = Path(host.statuses()[0]["data_dir"])
    from duraflow.storage.query import ArchiveReader

    root, warm = archive_paths(data_dir)
    return host, ArchiveReader(root, warm)


set_connector(_connect_on_ray)
