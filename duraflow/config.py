"""EngineConfig: every setting of a deployment in one frozen Struct, passed on unchanged.

``df.Engine(...)`` and ``duraflow serve`` each build one :class:`EngineConfig` (through
``runtime.engine_config``); the in-process host, the Ray partition and consumer actors, each
:class:`~duraflow.actors.partition.Partition` and the archive consumer read their settings
from it and from nothing else, so a setting cannot be set on one path and dropped on another.
On Ray it travels msgpack-encoded as an actor's constructor argument (a few hundred bytes: Ray
re-runs ``__init__`` with it on every restart).

Note:
    The config carries the S3 credentials to the archive consumer. They never appear in a
    repr, in :meth:`EngineConfig.public` (what status calls and errors show) or in an error
    message; only the encoded bytes handed to the actors hold them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

DEFAULT_DATA_DIR = ".duraflow"
DEFAULT_PARTITIONS = 4
DEFAULT_NAMESPACE = "duraflow"
DEFAULT_SYNCHRONOUS = "FULL"
DEFAULT_ACTIVITY_THREADS = 64
IDLE_BEFORE_HIBERNATE_S = 60.0
"""How long a run waiting on a timer or signal stays in memory before it is dropped."""
DEFAULT_RETENTION_S = 86_400.0
"""How long a closed run stays in its partition's file after it is archived."""
COMMIT_INTERVAL_S = 5.0
"""How often the archive consumer commits its warm segments to the Iceberg tables."""
DEADLOCK_THRESHOLD_S = 2.0
"""How long workflow code (an activation, a query handler) may hold its partition without an
``await`` before its run is marked stuck (Temporal's deadlock detector uses 2 s too)."""
HIDDEN = "<hidden>"


class S3Config(msgspec.Struct, frozen=True):
    """Where an S3 (or S3-compatible) warehouse is and how to sign in.

    Attributes:
        endpoint: ``http://127.0.0.1:9000`` for moto or MinIO; ``None`` for AWS itself.
        access_key_id, secret_access_key: credentials; ``None`` lets pyarrow find them in the
            environment of the process that reads or writes the bucket. Never shown by
            ``repr``.
        region: the bucket's region.
    """

    endpoint: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = "us-east-1"

    def __repr__(self) -> str:
        hidden = HIDDEN if self.access_key_id or self.secret_access_key else None
        return f"S3Config(endpoint={self.endpoint!r}, region={self.region!r}, credentials={hidden})"

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        # msgspec's own __rich_repr__ would list every field, the credentials too
        yield "endpoint", self.endpoint
        yield "region", self.region

    def without_credentials(self) -> S3Config:
        """The same bucket, signing in with the reading process's own AWS credentials."""
        return msgspec.structs.replace(self, access_key_id=None, secret_access_key=None)

    def scrub(self, message: str) -> str:
        """``message`` with the credentials taken out."""
        for secret in (self.secret_access_key, self.access_key_id):
            if secret:
                message = message.replace(secret, HIDDEN)
        return message


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of a deployment (see ``df.Engine`` for what each one does).

    Where the deployment is hosted (``runtime``, the Ray ``address``) is not part of it: the
    same config is served on a cluster or hosted in-process.

    Attributes:
        data_dir: absolute path of the data directory.
        partitions: the partition count recorded in the data directory.
        namespace: the Ray namespace of the partition and consumer actors.
        synchronous: SQLite ``synchronous`` mode, upper case.
        activity_threads: threads for sync activities run in a partition's process.
        max_resident_runs: per partition, runs kept in memory between turns (None: no cap).
        hibernate_after_s: idle runs are dropped from memory after this long (None: never).
        retention_s: how long a closed, archived run stays in its partition's file.
        archive: whether a consumer archives the change log (warm Parquet, then Iceberg).
        warehouse: the Iceberg warehouse (None: ``data_dir/archive/warehouse``).
        s3: endpoint, region and credentials of an ``s3://`` warehouse.
        archive_interval_s: how often the consumer commits warm segments to Iceberg.
        app_modules: modules every partition actor imports when it starts.
        partition_resources: custom Ray resources each partition actor asks for.
        deadlock_threshold_s: workflow code that holds its partition longer without an
            ``await`` is reported and its run marked stuck (None: never; for debuggers).
    """

    data_dir: str
    partitions: int
    namespace: str = DEFAULT_NAMESPACE
    synchronous: str = DEFAULT_SYNCHRONOUS
    activity_threads: int = DEFAULT_ACTIVITY_THREADS
    max_resident_runs: int | None = None
    hibernate_after_s: float | None = IDLE_BEFORE_HIBERNATE_S
    retention_s: float = DEFAULT_RETENTION_S
    archive: bool = True
    warehouse: str | None = None
    s3: S3Config | None = None
    archive_interval_s: float = COMMIT_INTERVAL_S
    app_modules: tuple[str, ...] = ()
    partition_resources: dict[str, float] | None = None
    deadlock_threshold_s: float | None = DEADLOCK_THRESHOLD_S

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        # msgspec's own __rich_repr__ would show the nested S3Config's fields, credentials too
        for name in self.__struct_fields__:
            yield name, getattr(self, name)

    def encode(self) -> bytes:
        """msgpack of the whole config, credentials included: for the actors only."""
        return msgspec.msgpack.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> EngineConfig:
        """The config :meth:`encode` made."""
        return msgspec.msgpack.decode(data, type=cls)

    def public(self) -> dict[str, Any]:
        """This config as JSON values (lists, not tuples), without the S3 credentials: what
        status calls report, what clients that connect to a deployment read, and what errors
        compare."""
        s3 = None if self.s3 is None else self.s3.without_credentials()
        shown: dict[str, Any] = msgspec.json.decode(
            msgspec.json.encode(msgspec.structs.replace(self, s3=s3))
        )
        return shown

    @classmethod
    def from_public(cls, shown: dict[str, Any]) -> EngineConfig:
        """The config :meth:`public` showed (without credentials)."""
        return msgspec.convert(shown, cls)

    def differences(self, other: EngineConfig) -> dict[str, tuple[Any, Any]]:
        """``{name: (self's value, other's value)}`` for each setting that differs, as
        :meth:`public` shows them (the credentials are not compared)."""
        mine, theirs = self.public(), other.public()
        return {
            name: (mine[name], theirs[name])
            for name in self.__struct_fields__
            if mine[name] != theirs[name]
        }
