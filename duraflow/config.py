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

import re
from collections.abc import Iterator
from typing import Any, Final, Literal, get_args

import msgspec

from duraflow.errors import ConfigurationError

DEFAULT_DATA_DIR = ".duraflow"
DEFAULT_PARTITIONS = 4
DEFAULT_NAMESPACE = "duraflow"
DEFAULT_SYNCHRONOUS: Final = "FULL"
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

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
"""SQLite ``synchronous`` mode of the partition files (lower case is accepted too)."""
SYNCHRONOUS_MODES: tuple[str, ...] = get_args(Synchronous)
"""SQLite ``synchronous`` modes a partition file may be opened with."""
MAX_PARTITIONS = 1024
"""The most partitions a deployment may have (each is a Ray actor, or a file and a share of
one thread in-process)."""
MAX_ACTIVITY_THREADS = 1024
"""The most threads a partition's process may run sync activities on."""
MAX_COUNT = 2**31 - 1
"""The largest count setting (``max_resident_runs``) accepted."""
MAX_DURATION_S = 100 * 365.25 * 86400.0
"""The longest duration accepted anywhere (settings, timeouts, sleeps, retry intervals): 100
years, 3,155,760,000 s. Durations become microsecond timestamps in SQLite INTEGER columns; with
this bound ``now + duration`` stays below 2**63 microseconds for the next 290,000 years."""
MAX_RESOURCE = 1e9
"""The largest amount of one custom Ray resource a partition actor may ask for."""
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_QUEUE = "default"
"""The queue of activities that name none: the engine's default worker pool serves it."""
MAX_POOL_SIZE = 1024
"""The most workers one pool may have (each is a Ray actor: a process of ~80 MiB)."""
DEFAULT_MAX_ASYNC = 100
"""How many async attempts one worker runs at once by default."""
_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class WorkerPool(msgspec.Struct, frozen=True, kw_only=True):
    """A pool of long-lived Ray actors that run the activity attempts of one queue.

    ``df.Engine(workers={"gpu": df.WorkerPool(size=4, num_gpus=1)})`` starts four workers,
    each holding one GPU, for the activities declared ``@df.activity(queue="gpu")``; the
    queue ``"default"`` is the pool of every activity that names no queue and asks Ray for
    nothing of its own. A pool's size is its queue's concurrency across the deployment: each
    worker runs one sync attempt at a time, and up to ``max_async`` async ones.

    Attributes:
        size: how many workers (1 to 1,024; None: the cluster's CPU count, at least 1).
        num_cpus, num_gpus: what each worker reserves from Ray for its whole life (finite
            numbers >= 0; default 0 CPUs, 0 GPUs).
        resources: custom Ray resources each worker reserves (amounts above 0).
        runtime_env: Ray's runtime environment of the workers (a dict).
        max_async: async attempts one worker runs at once (1 to 1,024).
    """

    size: int | None = None
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    resources: dict[str, float] | None = None
    runtime_env: dict[str, Any] | None = None
    max_async: int = DEFAULT_MAX_ASYNC

    def __post_init__(self) -> None:
        if self.size is not None:
            _check_count("WorkerPool size", self.size, 1, MAX_POOL_SIZE, "None (CPU count)")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= MAX_RESOURCE
            ):
                raise _refused(f"WorkerPool {name}", value, f"a number from 0 to {MAX_RESOURCE:g}")
            msgspec.structs.force_setattr(self, name, float(value))
        _check_resource_dict("WorkerPool resources", self.resources)
        if self.runtime_env is not None and not isinstance(self.runtime_env, dict):
            raise _refused("WorkerPool runtime_env", self.runtime_env, "a dict (Ray's) or None")
        _check_count("WorkerPool max_async", self.max_async, 1, MAX_ACTIVITY_THREADS)

    def ray_options(self) -> dict[str, Any]:
        """What each worker actor asks Ray for."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.runtime_env:
            options["runtime_env"] = dict(self.runtime_env)
        return options


def check_queue(queue: object, what: str = "queue") -> str:
    """``queue`` if it is a queue name duraflow accepts (it becomes part of actor names).

    Raises:
        ConfigurationError: not 1 to 64 letters, digits, ``_``, ``.`` or ``-`` starting with
            a letter or digit.
    """
    if not isinstance(queue, str) or not _QUEUE.fullmatch(queue):
        raise _refused(
            what, queue, "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return queue


class S3Config(msgspec.Struct, frozen=True):
    """Where an S3 (or S3-compatible) warehouse is and how to sign in.

    Attributes:
        endpoint: ``http://127.0.0.1:9000`` for moto or MinIO; ``None`` for AWS itself.
        access_key_id, secret_access_key: credentials; ``None`` lets pyarrow find them in the
            environment of the process that reads or writes the bucket. Never shown by
            ``repr``.
        region: the bucket's region.
        session_token: the token of temporary credentials (AWS STS), with the two above.
            Never shown by ``repr``.
    """

    endpoint: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = "us-east-1"
    session_token: str | None = None

    def __post_init__(self) -> None:
        for name in ("endpoint", "access_key_id", "secret_access_key", "session_token"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                # never the value itself: it may be a credential
                raise ConfigurationError(
                    f"s3.{name} must be a str or None, got a {type(value).__name__}"
                )
        if not isinstance(self.region, str) or not self.region:
            raise _refused("s3.region", self.region, "a region name like 'us-east-1'")
        if self.session_token and not self.access_key_id:
            raise ConfigurationError(
                "s3.session_token goes with access_key_id and secret_access_key (the temporary "
                "credentials it belongs to)"
            )

    def __repr__(self) -> str:
        hidden = HIDDEN if self.access_key_id or self.secret_access_key else None
        return f"S3Config(endpoint={self.endpoint!r}, region={self.region!r}, credentials={hidden})"

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        # msgspec's own __rich_repr__ would list every field, the credentials too
        yield "endpoint", self.endpoint
        yield "region", self.region

    def without_credentials(self) -> S3Config:
        """The same bucket, signing in with the reading process's own AWS credentials."""
        return msgspec.structs.replace(
            self, access_key_id=None, secret_access_key=None, session_token=None
        )

    def scrub(self, message: str) -> str:
        """``message`` with the credentials taken out."""
        for secret in (self.session_token, self.secret_access_key, self.access_key_id):
            if secret:
                message = message.replace(secret, HIDDEN)
        return message


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of a deployment (see ``df.Engine`` for what each one does).

    Where the deployment is hosted (``runtime``, the Ray ``address``) is not part of it: the
    same config is served on a cluster or hosted in-process.

    Every value is checked when a config is made or decoded (see README "Options and their
    ranges"); one that is out of range raises :class:`~duraflow.errors.ConfigurationError`
    naming the setting, the value and what is allowed.

    Attributes:
        data_dir: absolute path of the data directory.
        partitions: the partition count recorded in the data directory (1 to 1,024).
        namespace: the Ray namespace of the partition and consumer actors (1 to 64 letters,
            digits, ``_``, ``.``, ``-``).
        synchronous: SQLite ``synchronous`` mode, upper case (``SYNCHRONOUS_MODES``).
        activity_threads: threads for sync activities run in a partition's process (1 to
            1,024).
        max_resident_runs: per partition, runs kept in memory between turns (0 to 2**31-1;
            None: no cap).
        hibernate_after_s: idle runs are dropped from memory after this long (0 to 100 years;
            None: never).
        retention_s: how long a closed, archived run stays in its partition's file (0 to 100
            years).
        archive: whether a consumer archives the change log (warm Parquet, then Iceberg).
        warehouse: the Iceberg warehouse (None: ``data_dir/archive/warehouse``).
        s3: endpoint, region and credentials of an ``s3://`` warehouse.
        archive_interval_s: how often the consumer commits warm segments to Iceberg (above 0,
            at most 100 years).
        app_modules: modules every partition actor imports when it starts.
        partition_resources: custom Ray resources each partition actor asks for (amounts
            above 0).
        deadlock_threshold_s: workflow code that holds its partition longer without an
            ``await`` is reported and its run marked stuck (above 0, at most 100 years; None:
            never; for debuggers).
        workers: the worker pools the engine starts on Ray, by queue name; ``"default"``
            configures the default pool (otherwise: one worker per cluster CPU, reserving
            nothing).
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
    workers: dict[str, WorkerPool] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every path to a config (Engine, serve, an actor decoding its argument, a client
        # reading a deployment's) checks it here, so a value that would hang or break a
        # partition later is refused at once, naming the setting and its range.
        _check_text("data_dir", self.data_dir, "a directory path")
        check_partitions(self.partitions)
        check_namespace(self.namespace)
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise _refused("synchronous", self.synchronous, f"one of {SYNCHRONOUS_MODES}")
        _check_count("activity_threads", self.activity_threads, 1, MAX_ACTIVITY_THREADS)
        if self.max_resident_runs is not None:
            _check_count("max_resident_runs", self.max_resident_runs, 0, MAX_COUNT, "None (no cap)")
        if self.hibernate_after_s is not None:
            self._seconds("hibernate_after_s", 0.0, "None (never)")
        self._seconds("retention_s", 0.0)
        if not isinstance(self.archive, bool):
            raise _refused("archive", self.archive, "True or False")
        if self.warehouse is not None:
            _check_text("warehouse", self.warehouse, "s3://bucket/prefix, a path or a file:// URI")
        if self.s3 is not None and not isinstance(self.s3, S3Config):
            raise _refused("s3", self.s3, "a duraflow.config.S3Config or None")
        self._seconds("archive_interval_s", None)
        if self.deadlock_threshold_s is not None:
            self._seconds("deadlock_threshold_s", None, "None (off)")
        self._check_app_modules()
        _check_resource_dict("partition_resources", self.partition_resources)
        self._check_workers()

    def _seconds(self, name: str, least: float | None, otherwise: str = "") -> None:
        """Check (and store as a float) the duration setting ``name``; ``least`` None means
        it must be above 0."""
        value = getattr(self, name)
        low = "above 0 and at most" if least is None else f"from {least:g} to"
        allowed = f"seconds {low} 100 years ({MAX_DURATION_S:.0f} s)"
        if otherwise:
            allowed += f", or {otherwise}"
        name = name.removesuffix("_s")  # as Engine and serve call it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _refused(name, value, allowed)
        seconds = float(max(-1, min(value, 2**63))) if isinstance(value, int) else value
        if not (seconds > 0 if least is None else seconds >= least) or not (
            seconds <= MAX_DURATION_S
        ):
            raise _refused(name, value, allowed)
        msgspec.structs.force_setattr(self, f"{name}_s", seconds)

    def _check_app_modules(self) -> None:
        modules = self.app_modules
        if isinstance(modules, list):
            modules = tuple(modules)
            msgspec.structs.force_setattr(self, "app_modules", modules)
        if not isinstance(modules, tuple):
            raise _refused("app_modules", modules, "a list of module names")
        for module in modules:
            if not isinstance(module, str) or not all(
                part.isidentifier() for part in module.split(".")
            ):
                raise _refused("app_modules", module, "importable module names like 'app.flows'")

    def _check_workers(self) -> None:
        if not isinstance(self.workers, dict):
            raise _refused("workers", self.workers, "a dict of queue names to df.WorkerPool")
        for queue, pool in self.workers.items():
            check_queue(queue, "a workers queue name")
            if not isinstance(pool, WorkerPool):
                raise _refused(f"workers[{queue!r}]", pool, "a df.WorkerPool")

    def pools(self) -> dict[str, WorkerPool]:
        """The pools this engine starts: its ``workers``, and the default pool."""
        return {DEFAULT_QUEUE: WorkerPool(), **self.workers}

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        # msgspec's own __rich_repr__ would show the nested S3Config's fields, credentials too
        for name in self.__struct_fields__:
            yield name, getattr(self, name)

    def encode(self) -> bytes:
        """msgpack of the whole config, credentials included: for the actors only."""
        return msgspec.msgpack.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> EngineConfig:
        """The config :meth:`encode` made.

        Raises:
            ConfigurationError: not a config, or a setting out of its range.
        """
        try:
            return msgspec.msgpack.decode(data, type=cls)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"not a valid duraflow config: {exc}") from None

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
        """The config :meth:`public` showed (without credentials).

        Raises:
            ConfigurationError: not a config, or a setting out of its range.
        """
        try:
            return msgspec.convert(shown, cls)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"not a valid duraflow config: {exc}") from None

    def differences(self, other: EngineConfig) -> dict[str, tuple[Any, Any]]:
        """``{name: (self's value, other's value)}`` for each setting that differs, as
        :meth:`public` shows them (the credentials are not compared)."""
        mine, theirs = self.public(), other.public()
        return {
            name: (mine[name], theirs[name])
            for name in self.__struct_fields__
            if mine[name] != theirs[name]
        }


def check_partitions(partitions: object) -> int:
    """``partitions`` if it is a partition count duraflow accepts.

    Raises:
        ConfigurationError: not a whole number from 1 to ``MAX_PARTITIONS``.
    """
    _check_count("partitions", partitions, 1, MAX_PARTITIONS)
    assert isinstance(partitions, int)
    return partitions


def check_namespace(namespace: object) -> str:
    """``namespace`` if it is a Ray namespace duraflow accepts.

    Raises:
        ConfigurationError: not 1 to 64 letters, digits, ``_``, ``.`` or ``-`` starting with
            a letter or digit.
    """
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise _refused(
            "namespace",
            namespace,
            "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    return namespace


def _check_resource_dict(name: str, resources: object) -> None:
    if resources is None:
        return
    allowed = f"a dict of resource names to amounts above 0 and at most {MAX_RESOURCE:g}"
    if not isinstance(resources, dict):
        raise _refused(name, resources, allowed)
    for key, amount in resources.items():
        if (
            not isinstance(key, str)
            or not key
            or isinstance(amount, bool)
            or not isinstance(amount, (int, float))
            or not 0 < amount <= MAX_RESOURCE
        ):
            raise _refused(name, {key: amount}, allowed)


def _check_count(name: str, value: object, least: int, most: int, otherwise: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        allowed = f"a whole number from {least} to {most}"
        raise _refused(name, value, allowed + (f", or {otherwise}" if otherwise else ""))


def _check_text(name: str, value: object, allowed: str) -> None:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _refused(name, value, allowed)


def _refused(name: str, value: object, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"{name} must be {allowed}, got {_short(value)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
