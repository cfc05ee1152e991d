"""Core engine speed, in-process: workflows/s, start-to-result latency, signals, timers.

Workloads (sizes are options, so CI can run a smoke version):
  W1  N workflows of 3 no-op activities started at once: workflows/s, p50/p99 latency;
      and the same workflow one at a time (unloaded latency).
  W2  signal round trip, unloaded: signal sent -> workflow completes -> result returned.
  W3  M workflows each sleeping 1 s: timer lateness (fire time minus due time).
  Floor: raw SQLite commits/s of one small transaction under the same synchronous mode.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import duraflow as df
from benchmarks.common import RESULTS_DIR, print_table, summary_ms, write_json


@df.activity
def bench_noop(i: int) -> int:
    return i


@df.workflow
async def bench_three_steps(ctx: df.WorkflowContext, i: int) -> int:
    a = await ctx.activity(bench_noop, i)
    b = await ctx.activity(bench_noop, a)
    return await ctx.activity(bench_noop, b)


@df.workflow
async def bench_wait_signal(ctx: df.WorkflowContext) -> Any:
    return await ctx.wait_for_signal("go")


@df.workflow
async def bench_sleep(ctx: df.WorkflowContext, seconds: float) -> float:
    due = ctx.time() + seconds
    await ctx.sleep(seconds)
    return ctx.time() - due  # workflow time at wake-up is the timer_fired event's time


async def _timed_workflow(client: df.Client, i: int) -> float:
    t0 = time.perf_counter()
    handle = await client.start_async(bench_three_steps, i)
    await handle.result_async()
    return time.perf_counter() - t0


async def w1_throughput(client: df.Client, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(_timed_workflow(client, i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    return {
        "workflows": n,
        "seconds": elapsed,
        "workflows_per_s": n / elapsed,
        **summary_ms(list(latencies)),
    }


async def w1_unloaded(client: df.Client, n: int) -> dict[str, Any]:
    latencies = [await _timed_workflow(client, i) for i in range(n)]
    return {"samples": n, **summary_ms(latencies)}


async def w2_signal(client: df.Client, n: int) -> dict[str, Any]:
    samples = []
    for _ in range(n):
        handle = await client.start_async(bench_wait_signal)
        await asyncio.sleep(0.002)
        t0 = time.perf_counter()
        await handle.signal_async("go", 1)
        await handle.result_async()
        samples.append(time.perf_counter() - t0)
    return {"samples": n, **summary_ms(samples)}


async def w3_timers(client: df.Client, n: int, seconds: float = 1.0) -> dict[str, Any]:
    handles = await asyncio.gather(*(client.start_async(bench_sleep, seconds) for _ in range(n)))
    lateness = await asyncio.gather(*(h.result_async() for h in handles))
    return {"timers": n, "sleep_s": seconds, **summary_ms(list(lateness))}


def sqlite_floor(synchronous: str, commits: int = 2000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "floor.sqlite", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE h (lsn INTEGER PRIMARY KEY, wid TEXT, body BLOB)")
        body = b"x" * 160
        t0 = time.perf_counter()
        for i in range(commits):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO h VALUES (?, ?, ?)", (i, f"wf-{i}", body))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        conn.close()
    return {"commits": commits, "commits_per_s": commits / elapsed}


async def run_all(client: df.Client, args: argparse.Namespace) -> dict[str, Any]:
    await w1_unloaded(client, 5)  # warm-up
    return {
        "w1_throughput": await w1_throughput(client, args.workflows),
        "w1_unloaded": await w1_unloaded(client, args.samples),
        "w2_signal_unloaded": await w2_signal(client, args.samples),
        "w3_timer_lateness": await w3_timers(client, args.timers),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks core", description=__doc__)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--timers", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "core.json")
    parser.add_argument("--runtime", choices=("local", "ray"), default="local")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        df.Engine(
            Path(tmp) / "data",
            runtime=args.runtime,
            partitions=args.partitions,
            synchronous=args.synchronous,
        ) as engine,
    ):
        results = asyncio.run(run_all(engine.client(), args))
    results["sqlite_floor"] = sqlite_floor(args.synchronous)
    config = {
        "runtime": args.runtime,
        "partitions": args.partitions,
        "synchronous": args.synchronous,
    }
    w1, un, sig, tim = (
        results[k]
        for k in ("w1_throughput", "w1_unloaded", "w2_signal_unloaded", "w3_timer_lateness")
    )
    print_table(
        f"duraflow core, runtime={args.runtime} ({args.partitions} partitions, "
        f"synchronous={args.synchronous})",
        [
            (
                f"W1 {w1['workflows']} x 3-activity workflows",
                f"{w1['workflows_per_s']:.0f} workflows/s",
            ),
            (
                "W1 start-to-result under load",
                f"p50 {w1['p50_ms']:.1f} ms  p99 {w1['p99_ms']:.1f} ms",
            ),
            (
                "W1 start-to-result unloaded",
                f"p50 {un['p50_ms']:.2f} ms  p99 {un['p99_ms']:.2f} ms",
            ),
            (
                "W2 signal round trip unloaded",
                f"p50 {sig['p50_ms']:.2f} ms  p99 {sig['p99_ms']:.2f} ms",
            ),
            (
                f"W3 lateness of {tim['timers']} 1 s timers",
                f"p50 {tim['p50_ms']:.1f} ms  p99 {tim['p99_ms']:.1f} ms",
            ),
            (
                "floor: SQLite 1-row commits",
                f"{results['sqlite_floor']['commits_per_s']:.0f} commits/s",
            ),
        ],
    )
    path = write_json(args.json, {"config": config, "results": results})
    print(f"\nJSON: {path}")
    return results


if __name__ == "__main__":
    main()
