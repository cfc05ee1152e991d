"""Engine: picks the hosting, records the deployment (partition count), wires host and client."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import msgspec

from duraflow.actors.local_host import LocalHost
from duraflow.engine.client import BlockingRunner, Client
from duraflow.errors import ConfigurationError

DEFAULT_DATA_DIR = ".duraflow"
DEFAULT_PARTITIONS = 4
DEPLOYMENT_FILE = "deployment.json"
DATA_FORMAT = 1


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
        data_dir: where partition files live (default ``./.duraflow``).
        partitions: partition count, fixed when the data directory is created (default 4).
        synchronous: SQLite ``synchronous`` mode: ``"FULL"`` (default; survives power loss)
            or ``"NORMAL"`` (survives a killed process, not power loss).
        activity_threads: threads for sync activities run in-process.
        max_resident_runs: per partition, how many runs stay in memory between turns; the
            least recently used beyond it are dropped and rebuilt by replay when next needed
            (default: no cap).

    Workflow and activity modules must be imported before the engine opens a data directory
    that has open runs of them, or they are imported from the recorded ``module:qualname``.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        *,
        partitions: int | None = None,
        synchronous: str = "FULL",
        activity_threads: int = 64,
        max_resident_runs: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.deployment = load_deployment(self.data_dir, partitions)
        self._host = LocalHost(
            self.data_dir,
            self.deployment.partitions,
            synchronous=synchronous,
            activity_threads=activity_threads,
            max_resident_runs=max_resident_runs,
        )
        self._runner = BlockingRunner()
        self._client = Client(self._host, self._runner)

    def client(self) -> Client:
        """The client of this engine (start workflows, get handles, list)."""
        return self._client

    def stats(self) -> list[dict[str, int]]:
        """Per-partition counts: open runs, resident runs, LSN."""
        return self._host.stats()

    def close(self) -> None:
        """Close all partitions (open runs resume when the data directory is opened again)."""
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
