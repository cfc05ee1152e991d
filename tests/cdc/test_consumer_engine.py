"""The archive consumer inside an engine: concurrent commits, closing, and no archive."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

import duraflow as df
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
