"""Core engine speed: workflows/s, start-to-result latency, signals, timers; in-process and
Ray-hosted side by side (ratios in one run are what to compare: the machine is noisy).

Workloads (sizes are options, so CI can run a smoke version):
  W1  N workflows of 3 no-op activities started at once: workflows/s, p50/p99 latency;
      and the same workflow one at a time (unloaded latency). On Ray, once with inline
      activities and once with activities as Ray tasks.
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


@df.activity(inline=True)
def bench_noop_inline(i: int) -> int:
    return i


@df.workflow
async def bench_three_steps(ctx: df.WorkflowContext, i: int, inline: bool) -> int:
    step = bench_noop_inline if inline else bench_noop
    a = await ctx.activity(step, i)
    b = await ctx.activity(step, a)
    return await ctx.activity(step, b)


@df.workflow
async def bench_wait_signal(ctx: df.WorkflowContext) -> Any:
    return await ctx.wait_for_signal("go")


@df.workflow
async def bench_sleep(ctx: df.WorkflowContext, seconds: float) -> float:
    due = ctx.time() + seconds
    await ctx.sleep(seconds)
    return ctx.time() - due  # workflow time at wake-up is the timer_fired event's time


async def _timed_workflow(client: df.Client, i: int, inline: bool) -> float:
    t0 = time.perf_counter()
    handle = await client.start_async(bench_three_steps, i, inline)
    await handle.result_async()
    return time.perf_counter() - t0


async def w1_throughput(client: df.Client, n: int, inline: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(_timed_workflow(client, i, inline) for i in range(n)))
    elapsed = time.perf_counter() - t0
    return {
        "workflows": n,
        "seconds": elapsed,
        "workflows_per_s": n / elapsed,
        **summary_ms(list(latencies)),
    }


async def w1_unloaded(client: df.Client, n: int, inline: bool) -> dict[str, Any]:
    latencies = [await _timed_workflow(client, i, inline) for i in range(n)]
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


async def run_runtime(client: df.Client, runtime: str, args: argparse.Namespace) -> dict[str, Any]:
    kinds = [True] if runtime == "local" else [True, False]
    results: dict[str, Any] = {}
    for inline in kinds:
        label = "inline" if inline else "ray_tasks"
        await w1_unloaded(client, 5, inline)  # warm-up (Ray starts task workers lazily)
        results[f"w1_throughput_{label}"] = await w1_throughput(client, args.workflows, inline)
        results[f"w1_unloaded_{label}"] = await w1_unloaded(client, args.samples, inline)
    results["w2_signal_unloaded"] = await w2_signal(client, args.samples)
    results["w3_timer_lateness"] = await w3_timers(client, args.timers)
    return results


def _cell(result: dict[str, Any] | None, fmt: str) -> str:
    return "-" if result is None else fmt.format(**result)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks core", description=__doc__)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--timers", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--runtimes", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "core.json")
    args = parser.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    results: dict[str, Any] = {}
    for runtime in runtimes:
        with (
            tempfile.TemporaryDirectory() as tmp,
            df.Engine(
                Path(tmp) / "data",
                runtime=runtime,
                partitions=args.partitions,
                synchronous=args.synchronous,
            ) as engine,
        ):
            results[runtime] = asyncio.run(run_runtime(engine.client(), runtime, args))
    results["sqlite_floor"] = sqlite_floor(args.synchronous)
    columns = [
        (r, k) for r in runtimes for k in (["inline"] if r == "local" else ["inline", "ray_tasks"])
    ]
    header = "  ".join(f"{f'{r}/{k}':>22}" for r, k in columns)
    rows = []
    thr = "{workflows_per_s:.0f} wf/s"
    lat = "{p50_ms:.1f} / {p99_ms:.1f} ms"
    for title, key, fmt in (
        (f"W1 {args.workflows} x 3 activities", "w1_throughput", thr),
        ("W1 latency under load p50/p99", "w1_throughput", lat),
        ("W1 unloaded latency p50/p99", "w1_unloaded", lat),
    ):
        cells = [_cell(results[r].get(f"{key}_{k}"), fmt) for r, k in columns]
        rows.append((title, "  ".join(f"{c:>22}" for c in cells)))
    for title, key in (
        ("W2 signal round trip p50/p99", "w2_signal_unloaded"),
        (f"W3 lateness, {args.timers} x 1 s timers p50/p99", "w3_timer_lateness"),
    ):
        cells = [_cell(results[r][key] if k == "inline" else None, lat) for r, k in columns]
        rows.append((title, "  ".join(f"{c:>22}" for c in cells)))
    floor = results["sqlite_floor"]["commits_per_s"]
    rows.append(("floor: SQLite 1-row commits", f"{floor:.0f} commits/s"))
    print_table(
        f"duraflow core ({args.partitions} partitions, synchronous={args.synchronous})\n"
        f"{'':<34}  {header}",
        rows,
    )
    config = {"runtimes": runtimes, "partitions": args.partitions, "synchronous": args.synchronous}
    path = write_json(args.json, {"config": config, "results": results})
    print(f"\nJSON: {path}")
    return results


if __name__ == "__main__":
    main()
