"""Continue-as-new 10,000 times in one ID (issue 14): each run's history stays bounded, and
once the archive holds the old runs the partition's file stops growing; the archive links
every run to the next, and the handle from ``start`` reaches the last one at once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import duraflow as df

RUNS = 10_000
BATCH = 2_000


@df.workflow
async def eternal(ctx: df.WorkflowContext, n: int) -> int:
    ctx.set_query_handler("n", lambda: n)
    if n == RUNS:
        return n
    if n > 0 and n % BATCH == 0:  # a checkpoint: the test measures, then lets it go on
        await ctx.wait_for_signal("more")
    await ctx.continue_as_new(n + 1)
    return -1


def _file(data_dir: Path) -> tuple[int, int, int]:
    """(pages, workflows rows, history rows) of the one partition file."""
    (path,) = sorted((data_dir / "partitions").glob("p*.sqlite"))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return (
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("SELECT count(*) FROM workflows").fetchone()[0],
            conn.execute("SELECT count(*) FROM workflow_history").fetchone()[0],
        )
    finally:
        conn.close()


def _wait_for_checkpoint(client: df.Client, n: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get_handle("eternal").query("n") == n:
                return
        except df.WorkflowClosed:  # between two runs of the chain
            pass
        assert time.monotonic() < deadline, f"run {n} never came"
        time.sleep(0.02)


def test_ten_thousand_continues_as_new_keep_history_and_file_bounded(data_dir: Path) -> None:
    with df.Engine(
        data_dir,
        runtime="local",
        partitions=1,
        synchronous="NORMAL",
        retention=0,
        archive_interval=3600,  # commit_archive() below decides when runs leave
    ) as engine:
        client = engine.client()
        handle = client.start(eternal, 0, workflow_id="eternal")
        sizes = []
        for checkpoint in range(BATCH, RUNS, BATCH):
            _wait_for_checkpoint(client, checkpoint)
            assert engine.sync_archive(timeout=60)
            engine.commit_archive()
            sizes.append(_file(data_dir))
            client.get_handle("eternal").signal("more")
        assert handle.result(timeout=120) == RUNS
        assert engine.sync_archive(timeout=60)
        engine.commit_archive()
        sizes.append(_file(data_dir))

        first_pages, first_rows, _ = sizes[0]
        assert first_rows < BATCH  # the old runs left the partition
        for pages, rows, history in sizes[1:]:
            assert pages <= first_pages * 1.1, sizes  # freed pages are reused: no growth
            assert rows <= first_rows + 2 and history <= 3 * rows, sizes

        latest = client.get_handle("eternal").describe()
        assert (latest.status, latest.run_id) == ("completed", handle.run_id)
        [row] = client.sql(
            "SELECT count(*) FILTER (WHERE status = 'continued_as_new') AS continued, "
            "count(*) FILTER (WHERE status = 'completed') AS completed, "
            "count(next_run_id) AS linked FROM workflows WHERE workflow_id = 'eternal'"
        ).to_pylist()
        assert {"continued": RUNS, "completed": 1, "linked": RUNS} == row
        [chain] = client.sql(
            "SELECT count(*) AS links FROM workflows a JOIN workflows b "
            "ON b.run_id = a.next_run_id AND b.continued_from = a.run_id "
            "WHERE a.workflow_id = 'eternal' AND b.workflow_id = 'eternal'"
        ).to_pylist()
        assert {"links": RUNS} == chain
        [longest] = client.sql(
            "SELECT max(n) AS n FROM (SELECT run_id, count(*) AS n FROM history "
            "WHERE workflow_id = 'eternal' GROUP BY run_id)"
        ).to_pylist()
        assert {"n": 3} == longest  # started, (a signal,) continued_as_new
