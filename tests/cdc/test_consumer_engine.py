"""The archive consumer inside an engine: concurrent commits, closing, and no archive."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

import duraflow as df
from duraflow.storage.catalog import open_archive
from tests.cdc import consumer_crash_app as app
from tests.cdc.test_consumer_crash import check_exactly_once


def test_commits_from_many_threads_and_the_timer_archive_once(data_dir: Path) -> None:
    with df.Engine(
        data_dir,
        runtime="local",
        partitions=app.PARTITIONS,
        synchronous="NORMAL",
        archive_interval=0.05,
    ) as engine:
        client = engine.client()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            runs = pool.submit(app.run_workflows, client, "many-", app.RUNS)
            commits = [pool.submit(engine.commit_archive, 30) for _ in range(12)]
            runs.result(timeout=60)
            for commit in commits:
                assert isinstance(commit.result(timeout=60), dict)
        app.run_workflows(client, "more-", 4)
        check_exactly_once(engine, data_dir, app.RUNS + 4)


def test_a_closed_engine_says_so_instead_of_waiting(data_dir: Path) -> None:
    engine = df.Engine(data_dir, runtime="local", partitions=1, synchronous="NORMAL")
    engine.close()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="not running"):
        engine.sync_archive(timeout=30)
    with pytest.raises(RuntimeError, match="not running"):
        engine.commit_archive(timeout=30)
    assert time.monotonic() - started < 5
    engine.close()  # twice is fine


def test_an_engine_without_archive_has_none(data_dir: Path) -> None:
    with df.Engine(
        data_dir, runtime="local", partitions=1, synchronous="NORMAL", archive=False
    ) as engine:
        with pytest.raises(df.ConfigurationError):
            engine.sync_archive()
        with pytest.raises(df.ConfigurationError):
            engine.commit_archive()
        with pytest.raises(df.ConfigurationError):
            engine.client().sql("SELECT 1")
    assert not (data_dir / "archive").exists()


def test_processes_opening_a_new_archive_at_once_all_get_it(tmp_path: Path) -> None:
    """pyiceberg's SqlCatalog creates its tables check-then-create: the consumer and a client
    opening a new archive together used to fail with 'table ... already exists'."""
    import threading

    from duraflow.storage.catalog import open_archive

    for trial in range(5):
        folder = tmp_path / f"archive-{trial}"
        barrier = threading.Barrier(4)

        def open_together(folder: Path = folder, barrier: threading.Barrier = barrier) -> object:
            barrier.wait(timeout=10)
            return open_archive(folder)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            opened = [pool.submit(open_together) for _ in range(4)]
            assert all(len(f.result(timeout=60).tables) == 3 for f in opened)


@df.workflow
async def cons_maintained(ctx: df.WorkflowContext, n: int) -> int:
    return n


def test_maintain_archive_expires_snapshots_and_keeps_every_row(tmp_path: Path) -> None:
    with df.Engine(
        tmp_path / "data", runtime="local", partitions=2, archive_interval="1h"
    ) as engine:
        client = engine.client()
        for batch in range(3):  # three commits: three snapshots per table
            for i in range(5):
                client.start(cons_maintained, i, workflow_id=f"maint-{batch}-{i}").result(
                    timeout=10
                )
            assert engine.sync_archive(20)
            engine.commit_archive()
        before = client.sql("SELECT count(*) AS n FROM history").to_pylist()
        report = engine.maintain_archive(keep_snapshots=0)
        assert report["history"]["snapshots_expired"] >= 2
        assert before == client.sql("SELECT count(*) AS n FROM history").to_pylist()
        assert [{"n": 15}] == client.sql("SELECT count(*) AS n FROM workflows").to_pylist()


@df.workflow
async def cons_trimmed(ctx: df.WorkflowContext, n: int) -> int:
    return n


def test_the_consumer_keeps_few_snapshots_and_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commit adds a snapshot to each table, and a commit costs more the more snapshots
    a table keeps: the consumer expires all but the last few after its commits."""
    from duraflow.cdc import consumer

    monkeypatch.setattr(consumer, "SNAPSHOT_MIN_AGE_S", 0.0)
    monkeypatch.setattr(consumer, "KEEP_SNAPSHOTS", 2)
    with df.Engine(
        tmp_path / "data", runtime="local", partitions=2, archive_interval="1h"
    ) as engine:
        client = engine.client()
        for batch in range(7):
            client.start(cons_trimmed, batch, workflow_id=f"trim-{batch}").result(timeout=10)
            assert engine.sync_archive(20)
            engine.commit_archive()
        archive = open_archive(tmp_path / "data" / "archive")
        kept = {name: len(table.metadata.snapshots) for name, table in archive.tables.items()}
        assert 2 <= kept["history"] < 4 and 2 <= kept["workflows"] < 4, kept  # of 7 commits
        assert 0 == kept["activities"]  # these runs schedule no activity: offsets only
        assert [{"n": 7}] == client.sql("SELECT count(*) AS n FROM workflows").to_pylist()
        assert [{"n": 7}] == client.sql(
            "SELECT count(DISTINCT workflow_id) AS n FROM history"
        ).to_pylist()


def test_a_warm_segment_that_cannot_be_written_is_read_again_later(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    warm = data_dir / "archive" / "warm"
    with df.Engine(data_dir, runtime="local", partitions=1, archive_interval="1h") as engine:
        client = engine.client()
        assert engine.sync_archive(20)
        warm.rmdir()
        warm.write_bytes(b"not a folder")  # every segment write fails
        for i in range(3):
            client.start(cons_trimmed, i, workflow_id=f"blocked-{i}").result(timeout=10)
        status = engine._consumer.consumer.status()  # type: ignore[union-attr]  # reason: local runtime
        deadline = time.monotonic() + 10
        while "write warm segment" not in str(status["last_error"]):
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
            status = engine._consumer.consumer.status()  # type: ignore[union-attr]  # reason: as above
        assert 0 == status["events_read"]
        warm.unlink()
        warm.mkdir()
        assert engine.sync_archive(20)
        engine.commit_archive()
        assert [{"n": 3}] == client.sql("SELECT count(*) AS n FROM workflows").to_pylist()
        (events,) = client.sql("SELECT count(*) AS n FROM history").to_pylist()
        assert events["n"] == engine._consumer.consumer.status()["events_read"]  # type: ignore[union-attr]  # reason: as above
