"""Engine: picks the hosting, records the deployment (partition count), wires host and client."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Protocol

import msgspec

from duraflow.actors.local_host import LocalHost
from duraflow.engine.client import BlockingRunner, Client, Host, set_connector
from duraflow.engine.definitions import Duration, parse_duration
from duraflow.errors import ConfigurationError

DEFAULT_DATA_DIR = ".duraflow"
DEFAULT_PARTITIONS = 4
IDLE_BEFORE_HIBERNATE_S = 60.0
RUNTIMES = ("ray", "local")
DEPLOYMENT_FILE = "deployment.json"
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
    ) -> None:
        if runtime not in RUNTIMES:
            raise ConfigurationError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.data_dir = Path(data_dir).resolve()
        self.runtime = runtime
        self.deployment = load_deployment(self.data_dir, partitions)
        idle_s = None if hibernate_after is None else parse_duration(hibernate_after)
        self._host: LocalHost | RayHostProtocol
        if runtime == "local":
            self._host = LocalHost(
                self.data_dir,
                self.deployment.partitions,
                synchronous=synchronous,
                activity_threads=activity_threads,
                max_resident_runs=max_resident_runs,
                hibernate_after_s=idle_s,
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
            )
            self._host = ray_host.EngineOnRay.start(settings, address)
        self._runner = BlockingRunner()
        self._client = Client(self._host, self._runner)

    def client(self) -> Client:
        """The client of this engine (start workflows, get handles, list)."""
        return self._client

    def stats(self) -> list[dict[str, int]]:
        """Per-partition counts: open runs, resident runs, LSN."""
        return self._host.stats()

    def close(self) -> None:
        """Close the partitions this engine started (open runs resume when the data directory
        is opened again) and, if this engine started Ray, Ray too."""
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


def _connect_on_ray(address: str, namespace: str) -> Host:
    from duraflow.actors import ray_host  # imports ray: only for Ray clients

    ray_host.start_or_join_ray(address, namespace)
    return ray_host.RayHost.connect(namespace)


set_connector(_connect_on_ray)
