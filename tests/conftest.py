"""Shared fixtures: a fresh data directory per test and an in-process engine over it.

Workflow and activity names are global (a registry by name), so each test module gives its
workflows names of their own.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import duraflow as df
from duraflow.testing import WorkflowEnvironment

STEPPED_START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
"""Where the stepped clocks of ``skipping_env`` and ``stepped_env`` start."""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory no other test uses."""
    return tmp_path / "data"


@pytest.fixture
def engine(data_dir: Path) -> Iterator[df.Engine]:
    """An in-process engine with 2 partitions, so cross-partition paths are exercised.

    synchronous=NORMAL keeps the suite fast; durability under FULL is the crash test's job.
    """
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as eng:
        yield eng


@pytest.fixture
def client(engine: df.Engine) -> df.Client:
    return engine.client()


@pytest.fixture
def skipping_env(data_dir: Path) -> Iterator[WorkflowEnvironment]:
    """An in-process engine on a stepped clock that jumps to the next due time whenever a
    result is awaited and nothing runs: retry waits and timers of minutes or days cost no
    wall time, and workflow time is exact (``ctx.time()`` differences are the waits)."""
    with WorkflowEnvironment.start_time_skipping(
        data_dir=data_dir, start_time=STEPPED_START
    ) as env:
        yield env


@pytest.fixture
def stepped_env(data_dir: Path) -> Iterator[WorkflowEnvironment]:
    """An in-process engine whose clock moves only by ``env.advance()``: a hanging activity's
    timeouts fire exactly when the test moves the clock past them, and never before."""
    with WorkflowEnvironment.start_local(data_dir=data_dir, start_time=STEPPED_START) as env:
        yield env


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One small local Ray for the whole session (starting one costs about 3 s).

    ``address="local"`` always starts a fresh cluster (a stale cluster file from a crashed run
    can make a bare ``ray.init()`` hang), in a short private temp dir (socket paths have a
    length limit). Two CPUs and 4 units of a custom ``gadget`` resource, so tests can check
    that activities ask Ray for what they declare.
    """
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        resources={"gadget": 4},
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


RAY_ARCHIVE = True
"""Whether ``ray_engine`` runs the archive (its consumer actor). A test module about partition
actors, Ray tasks or the Ray transport, which never reads the archive, sets its own
``RAY_ARCHIVE = False``: the consumer actor costs each Ray engine about 1.5 s to start and stop
(the modules in tests/cdc and tests/actors/test_failover.py keep it)."""


@pytest.fixture
def ray_engine(
    ray_session: None, data_dir: Path, request: pytest.FixtureRequest
) -> Iterator[df.Engine]:
    """A Ray-hosted engine with 2 partition actors in a namespace of its own; closing it
    kills its actors, so tests do not pile up processes. With the archive unless the test's
    module says ``RAY_ARCHIVE = False`` (see ``RAY_ARCHIVE`` above)."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    archive = bool(getattr(request.module, "RAY_ARCHIVE", RAY_ARCHIVE))
    with df.Engine(
        data_dir,
        runtime="ray",
        partitions=2,
        synchronous="NORMAL",
        namespace=namespace,
        archive=archive,
    ) as eng:
        yield eng


@pytest.fixture
def ray_client(ray_engine: df.Engine) -> df.Client:
    return ray_engine.client()


# -- the same test on both runtimes ---------------------------------------------------------------

RUNTIME_PARAMS = [pytest.param("local", id="local"), pytest.param("ray", id="ray")]


@pytest.fixture(params=RUNTIME_PARAMS)
def runtime(request: pytest.FixtureRequest) -> str:
    """``"local"``, then ``"ray"``: a test taking it (or a fixture below) runs on both.

    Ray variants cost about a second each (two partition actors start and are killed), so
    only a representative subset of tests uses these; deselect them with ``-k "not ray"``.
    """
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return str(request.param)


@pytest.fixture
def any_engine(runtime: str, request: pytest.FixtureRequest) -> df.Engine:
    """The ``engine`` fixture on the local runtime, ``ray_engine`` on Ray."""
    engine: df.Engine = request.getfixturevalue("engine" if runtime == "local" else "ray_engine")
    return engine


@pytest.fixture
def any_client(any_engine: df.Engine) -> df.Client:
    """The client of ``any_engine``: the in-process engine, then a Ray-hosted one."""
    return any_engine.client()


@pytest.fixture
def open_any_engine(runtime: str, data_dir: Path) -> Callable[[], df.Engine]:
    """Opens an engine over ``data_dir`` on ``runtime``, as often as a test likes (to close it
    and open the same data directory again). On Ray every opening uses the same namespace, as
    a redeployment would; closing kills the partition actors, so the next opening starts new
    ones that recover from the files."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"

    def open_engine() -> df.Engine:
        if runtime == "local":
            return df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL")
        return df.Engine(
            data_dir, runtime="ray", partitions=2, synchronous="NORMAL", namespace=namespace
        )

    return open_engine
