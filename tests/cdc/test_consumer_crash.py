"""The archive is exactly-once across a SIGKILL of the consumer's process.

The consumer is killed while warm segments wait for their Iceberg commit, between the
``history`` commit and the other two tables', and right after a commit (segments not deleted
yet). On Ray the consumer actor's own process is killed (its PID from ``status()``) and Ray
restarts it; on the local runtime a child process hosting the engine is killed and the data
directory reopened. Afterwards every event the partitions hold is in ``history`` exactly once,
and every closed run in ``workflows`` once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import duraflow as df
from duraflow.storage.catalog import open_archive
from duraflow.storage.iceberg import committed_offsets
from tests.cdc import consumer_crash_app as app

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0
MORE_RUNS = 4


def partition_events(data_dir: Path) -> int:
    """Events in the partitions' files, counted with sqlite3 read-only."""
    total = 0
    for path in sorted((data_dir / "partitions").glob("p*.sqlite")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            total += conn.execute("SELECT count(*) FROM workflow_history").fetchone()[0]
        finally:
            conn.close()
    return total


def warm_segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "archive" / "warm").glob("p*.parquet"))


def offsets(data_dir: Path) -> dict[str, dict[int, int]]:
    """Each archive table's committed offsets, read from the catalog by this process."""
    archive = open_archive(data_dir / "archive")
    return {name: committed_offsets(table) for name, table in archive.tables.items()}


def check_pause_state(data_dir: Path, point: str) -> None:
    """What the archive holds at the moment of the kill."""
    state = offsets(data_dir)
    assert warm_segments(data_dir), "the kill should leave warm segments behind"
    if point == "warm":
        assert {"history": {}, "workflows": {}, "activities": {}} == state
    elif point == "between_tables":
        assert state["history"] and not state["workflows"] and not state["activities"]
    else:
        assert state["history"] == state["workflows"] == state["activities"] != {}


def one_row(client: df.Client, query: str) -> tuple[object, ...]:
    (row,) = client.sql(query).to_pylist()
    return tuple(row.values())


def check_exactly_once(engine: df.Engine, data_dir: Path, runs: int) -> None:
    """Every event in ``history`` once, every closed run in ``workflows`` once, all cold."""
    assert engine.sync_archive(timeout=30)
    engine.commit_archive(timeout=60)
    assert [] == warm_segments(data_dir)  # all committed, then deleted
    client = engine.client()
    events, distinct = one_row(
        client, "SELECT count(*), count(DISTINCT (workflow_id, run_id, event_id)) FROM history"
    )
    assert events == distinct == partition_events(data_dir)
    closed, closed_distinct, failed = one_row(
        client,
        "SELECT count(*), count(DISTINCT (workflow_id, run_id)), "
        "count(*) FILTER (WHERE status = 'failed') FROM workflows",
    )
    assert closed == closed_distinct == runs
    numbers = [*range(app.RUNS), *range(MORE_RUNS)]
    assert failed == sum(1 for n in numbers if n % 5 == 4)
    steps, distinct_steps = one_row(
        client, "SELECT count(*), count(DISTINCT (workflow_id, run_id, seq)) FROM activities"
    )
    assert steps == distinct_steps == 2 * runs


# -- Ray: kill the consumer actor's process ---------------------------------------------------


@pytest.fixture
def ray_archive_engine(ray_session: None, data_dir: Path) -> Iterator[df.Engine]:
    """A Ray engine whose consumer commits only when asked (warm segments pile up)."""
    with df.Engine(
        data_dir,
        runtime="ray",
        partitions=app.PARTITIONS,
        synchronous="NORMAL",
        namespace=f"test-{uuid.uuid4().hex[:12]}",
        archive_interval=3600,
    ) as engine:
        yield engine


def consumer_status(engine: df.Engine, timeout: float = 10.0) -> dict[str, object]:
    from duraflow.actors.ray_host import call_actor

    status: dict[str, object] = call_actor(engine._consumer_actor, "status", timeout=timeout)
    return status


def wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout}s"
        time.sleep(0.05)


@pytest.mark.parametrize("point", app.POINTS)
def test_ray_consumer_killed_resumes_exactly_once(
    ray_archive_engine: df.Engine, data_dir: Path, tmp_path: Path, point: str
) -> None:
    engine, client = ray_archive_engine, ray_archive_engine.client()
    app.run_workflows(client, "ray-", app.RUNS)
    assert engine.sync_archive(timeout=30)
    before = consumer_status(engine)
    assert 0 == before["rows_committed"]
    pid = before["pid"]
    assert isinstance(pid, int) and pid != os.getpid()

    if point != "warm":
        marker = tmp_path / "paused"
        actor = engine._consumer_actor
        import ray

        ray.get(actor.__ray_call__.remote(app.pause_actor, point, str(marker)), timeout=10)
        actor.commit.remote(600)  # stops at the pause point; its answer never comes
        wait_for_file(marker, DEADLINE_S)
        assert str(pid) == marker.read_text()
    check_pause_state(data_dir, point)

    os.kill(pid, signal.SIGKILL)  # the consumer actor's process, looked up above
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            after = consumer_status(engine, timeout=5)
            if after["pid"] != pid:
                break
        except (TimeoutError, df.PartitionUnavailable):
            pass
        assert time.monotonic() < deadline, "Ray did not restart the consumer actor"
        time.sleep(0.1)

    app.run_workflows(client, "ray-more-", MORE_RUNS)  # and it goes on reading
    check_exactly_once(engine, data_dir, app.RUNS + MORE_RUNS)


# -- local runtime: kill the process hosting the engine ---------------------------------------


@pytest.mark.parametrize("point", ["warm", "after_commit"])
def test_local_consumer_killed_resumes_exactly_once(
    data_dir: Path, tmp_path: Path, point: str
) -> None:
    marker = tmp_path / "paused"
    out = tmp_path / "child.out"
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")
    with out.open("wb") as sink:
        child = subprocess.Popen(
            [sys.executable, str(Path(app.__file__)), str(data_dir), point, str(marker)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not marker.exists():
            assert child.poll() is None, f"child exited early:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"child not paused:\n{out.read_text()[-3000:]}"
            time.sleep(0.05)
        assert str(child.pid) == marker.read_text()
        check_pause_state(data_dir, point)
        os.kill(child.pid, signal.SIGKILL)
        assert -signal.SIGKILL == child.wait(timeout=10)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)

    with df.Engine(
        data_dir,
        runtime="local",
        partitions=app.PARTITIONS,
        synchronous="NORMAL",
        archive_interval=3600,
    ) as engine:
        app.run_workflows(engine.client(), "local-more-", MORE_RUNS)
        check_exactly_once(engine, data_dir, app.RUNS + MORE_RUNS)
