"""The limits beneath the engine, measured the same way in the same run.

SQLite  raw ``sqlite3`` on a partition file's own schema (our migrations, no duraflow code
        on the write path): commits/s of one-row transactions (the fsync bound of a turn
        that carries one request), and W1 workflows/s when each workflow's rows (its run
        row, its history, its activity rows inserted and deleted, the close) are written
        in transactions of 1 and of --per-commit workflows, as batched turns write them.
Ray     an empty async actor method: sequential round trip p50/p99, calls/s with many in
        flight, and the cost per request when one call carries a batch of 100.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import summary_ms
from duraflow.storage.schema import migrate

BODY = b"x" * 160  # about the size of an encoded history event
W1_EVENTS = 8  # workflow.started, 3 x (activity.scheduled, activity.completed), .completed


def _open(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    migrate(conn)
    return conn


def _w1_rows(conn: sqlite3.Connection, n: int, lsn: int) -> int:
    wid, rid = f"wf-{n}", f"run-{n}"
    conn.execute(
        "INSERT INTO workflows (workflow_id, run_id, workflow_type, code_ref, status, "
        "started_at_us) VALUES (?, ?, 'bench', 'bench:flow', 'running', ?)",
        (wid, rid, n),
    )
    for event_id in range(1, W1_EVENTS + 1):
        lsn += 1
        conn.execute(
            "INSERT INTO workflow_history VALUES (?, ?, ?, ?, 'event', ?, ?)",
            (lsn, wid, rid, event_id, n, BODY),
        )
    for seq in range(3):
        conn.execute(
            "INSERT INTO workflow_activities (workflow_id, run_id, seq, activity, code_ref, "
            "args, options, attempt, state, scheduled_at_us) "
            "VALUES (?, ?, ?, 'noop', 'bench:noop', ?, ?, 1, 'running', ?)",
            (wid, rid, seq, BODY[:20], BODY[:40], n),
        )
        conn.execute(
            "DELETE FROM workflow_activities WHERE workflow_id = ? AND run_id = ? AND seq = ?",
            (wid, rid, seq),
        )
    conn.execute(
        "UPDATE workflows SET status = 'completed', closed_at_us = ?, result = ? "
        "WHERE workflow_id = ? AND run_id = ?",
        (n, BODY[:20], wid, rid),
    )
    return lsn


def sqlite_floor(synchronous: str, workflows: int = 2000, per_commit: int = 50) -> dict[str, Any]:
    """Raw SQLite on the partition schema (see the module docstring)."""
    results: dict[str, Any] = {"synchronous": synchronous}
    with tempfile.TemporaryDirectory() as tmp:
        conn = _open(Path(tmp) / "commits.sqlite", synchronous)
        commits = max(200, workflows)
        t0 = time.perf_counter()
        for i in range(commits):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO workflow_history VALUES (?, 'wf', 'run', ?, 'event', 0, ?)",
                (i + 1, i + 1, BODY),
            )
            conn.execute("COMMIT")
        results["commits_per_s"] = commits / (time.perf_counter() - t0)
        conn.close()
        for label, batch in (("w1_one_per_commit", 1), ("w1_batched", per_commit)):
            conn = _open(Path(tmp) / f"{label}.sqlite", synchronous)
            lsn = 0
            t0 = time.perf_counter()
            for start in range(0, workflows, batch):
                conn.execute("BEGIN IMMEDIATE")
                for n in range(start, min(workflows, start + batch)):
                    lsn = _w1_rows(conn, n, lsn)
                conn.execute("COMMIT")
            results[f"{label}_workflows_per_s"] = workflows / (time.perf_counter() - t0)
            conn.close()
    results["per_commit"] = per_commit
    return results


def ray_floor(calls: int = 2000, samples: int = 300) -> dict[str, Any]:
    """Ray's actor-call costs, on the Ray this process is connected to."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        async def echo(self, value: Any) -> Any:
            return value

    actor = Echo.remote()  # type: ignore[attr-defined]  # reason: ray.remote adds .remote
    ray.get(actor.echo.remote(0))

    async def measure() -> dict[str, Any]:
        for _ in range(50):
            await actor.echo.remote(0)
        rtt = []
        for _ in range(samples):
            t0 = time.perf_counter()
            await actor.echo.remote(0)
            rtt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(actor.echo.remote(i) for i in range(calls)))
        pipelined = calls / (time.perf_counter() - t0)
        batch = [b"r" * 200] * 100
        t0 = time.perf_counter()
        for _ in range(calls // 100):
            await actor.echo.remote(batch)
        per_request_us = (time.perf_counter() - t0) / (calls // 100 * 100) * 1e6
        return {
            "round_trip": summary_ms(rtt),
            "pipelined_calls_per_s": pipelined,
            "batched_us_per_request": per_request_us,
        }

    try:
        return asyncio.run(measure())
    finally:
        ray.kill(actor)
