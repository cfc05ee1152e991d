"""Tiering in the partition: archived, closed runs past their retention leave the hot file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import duraflow as df
from duraflow.actors import messages as m


@df.workflow
async def tier_quick(ctx: df.WorkflowContext, n: int) -> int:
    return n


@df.workflow
async def tier_wait(ctx: df.WorkflowContext) -> object:
    return await ctx.wait_for_signal("go")


def _rows(data_dir: Path, table: str) -> int:
    total = 0
    for path in sorted((data_dir / "partitions").glob("p*.sqlite")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            total += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return total


def _archive_everything(engine: df.Engine) -> list[int]:
    """Tell every partition that all its events are archived (what the consumer reports)."""
    host = engine._host

    async def run() -> list[int]:
        heads = []
        for p in range(host.partitions):
            batch = await host.call(p, m.ReadEvents(limit=0))
            await host.call(p, m.Archived(lsn=batch.head_lsn))
            heads.append(batch.head_lsn)
        return heads

    return asyncio.run(run())


def test_archived_closed_runs_leave_the_partition_after_retention(data_dir: Path) -> None:
    # archive=False: the reports are made up here, and no archive answers for pruned runs
    # (tests/cdc/test_archive_tiering.py has the real consumer and the archive's answers).
    with df.Engine(data_dir, runtime="local", partitions=2, retention=0, archive=False) as engine:
        client = engine.client()
        done = [client.start(tier_quick, i, workflow_id=f"tier-{i}") for i in range(10)]
        assert list(range(10)) == [h.result(timeout=10) for h in done]
        parked = client.start(tier_wait, workflow_id="tier-open")
        heads = _archive_everything(engine)
        assert 1 == _rows(data_dir, "workflows")  # only the open run stays
        with pytest.raises(df.WorkflowNotFound):
            client.get_handle("tier-3").describe()
        parked.signal("go", "late")
        assert "late" == parked.result(timeout=10)
    with df.Engine(data_dir, runtime="local", partitions=2) as engine:
        client = engine.client()
        handle = client.start(tier_quick, 99, workflow_id="tier-after")
        assert 99 == handle.result(timeout=10)
        events = handle.history()
        # LSNs never go back, even though the rows that held the highest ones are gone.
        assert events[0].lsn > heads[events[0].partition]


def test_retention_keeps_recent_runs_and_unarchived_runs_stay(data_dir: Path) -> None:
    with df.Engine(
        data_dir, runtime="local", partitions=1, retention="1h", archive=False
    ) as engine:
        client = engine.client()
        assert 1 == client.start(tier_quick, 1, workflow_id="tier-recent").result(timeout=10)
        _archive_everything(engine)
        assert 1 == _rows(data_dir, "workflows")  # closed a moment ago: kept for an hour
    with df.Engine(data_dir, runtime="local", partitions=1, retention=0, archive=False) as engine:
        client = engine.client()
        assert 2 == client.start(tier_quick, 2, workflow_id="tier-unarchived").result(timeout=10)
        # No new Archived report covers the new run's events: it stays; the old one goes.
        asyncio.run(engine._host.call(0, m.Archived(lsn=0)))
        assert {"tier-unarchived"} == {d.workflow_id for d in client.list()}
