"""Core engine speed on duraflow: W1 (throughput, latency), W2 (signals), W3 (timers).

  W1  N workflows of 3 no-op activities started at once: workflows/s, p50/p99 start-to-result
      latency; the same N with 32 in flight at a time (as Restate's W1 runs too); and the same
      workflow one at a time (unloaded latency). On Ray three times:
      inline activities, plain ones (the default worker pool), and Ray tasks (num_cpus=1).
      Each workflow is one ``client.execute_async`` (its start and its result wait travel in
      one call), as Restate's W1 makes one request per workflow.
  W2  M workflows parked on a signal with their results awaited, all signalled at once:
      send-to-completion p50/p99; and one at a time (unloaded).
  W3  M workflows each sleeping 1 s: timer lateness (fire time minus due time).
  U   update round trips beside a signal's (benchmarks/bench_updates.py).

``python -m benchmarks`` runs these beside DBOS and the floors (see benchmarks/suite.py);
``python -m benchmarks core`` runs them alone.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import duraflow as df
from benchmarks import bench_updates
from benchmarks.common import RESULTS_DIR, in_flight_runs, print_table, summary_ms, write_json
from benchmarks.floors import ray_floor, sqlite_floor


@df.activity
def bench_noop(i: int) -> int:
    return i


@df.activity(inline=True)
def bench_noop_inline(i: int) -> int:
    return i


@df.activity(num_cpus=1)
def bench_noop_task(i: int) -> int:
    return i


STEPS = {"inline": bench_noop_inline, "pool": bench_noop, "ray_tasks": bench_noop_task}
"""W1's activity by kind: in the partition's process, on the default pool, as a Ray task."""

IN_FLIGHT = 32
"""W1's second shape: this many workflows in flight at a time (Restate's W1 runs it too)."""


@df.workflow
async def bench_three_steps(ctx: df.WorkflowContext, i: int, kind: str) -> int:
    step = STEPS[kind]
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


async def _timed_workflow(client: df.Client, i: int, kind: str) -> float:
    t0 = time.perf_counter()
    await client.execute_async(bench_three_steps, i, kind)  # one request, as Restate's W1
    return time.perf_counter() - t0


async def w1_throughput(client: df.Client, n: int, kind: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(_timed_workflow(client, i, kind) for i in range(n)))
    elapsed = time.perf_counter() - t0
    return {
        "workflows": n,
        "seconds": elapsed,
        "workflows_per_s": n / elapsed,
        **summary_ms(list(latencies)),
    }


async def w1_in_flight(client: df.Client, n: int, kind: str, in_flight: int) -> dict[str, Any]:
    """``n`` workflows, ``in_flight`` at a time (a new one starts as one finishes), as
    Restate's W1 runs with 32 in flight (benchmarks/bench_restate.py)."""
    return await in_flight_runs(n, in_flight, lambda i: _timed_workflow(client, i, kind))


async def w1_unloaded(client: df.Client, n: int, kind: str) -> dict[str, Any]:
    latencies = [await _timed_workflow(client, i, kind) for i in range(n)]
    return {"samples": n, **summary_ms(latencies)}


async def w2_signal(client: df.Client, n: int) -> dict[str, Any]:
    """Unloaded: one parked workflow at a time, its result awaited; signal sent -> result."""
    samples = []
    for _ in range(n):
        handle = await client.start_async(bench_wait_signal)
        result = asyncio.ensure_future(handle.result_async())
        await asyncio.sleep(0.005)  # parked, and the result is being awaited
        t0 = time.perf_counter()
        await handle.signal_async("go", 1)
        await result
        samples.append(time.perf_counter() - t0)
    return {"samples": n, **summary_ms(samples)}


async def w2_signal_loaded(client: df.Client, n: int) -> dict[str, Any]:
    """``n`` workflows parked with their results awaited, then all signalled at once:
    each one's time from the send to its result."""
    handles = await asyncio.gather(*(client.start_async(bench_wait_signal) for _ in range(n)))
    done_at: list[float] = []

    async def wait(handle: df.WorkflowHandle) -> None:
        await handle.result_async()
        done_at.append(time.perf_counter())

    waiting = asyncio.ensure_future(asyncio.gather(*(wait(h) for h in handles)))
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    await asyncio.gather(*(h.signal_async("go", 1) for h in handles))
    await waiting
    return {"workflows": n, **summary_ms([t - t0 for t in done_at])}


async def w3_timers(client: df.Client, n: int, seconds: float = 1.0) -> dict[str, Any]:
    handles = await asyncio.gather(*(client.start_async(bench_sleep, seconds) for _ in range(n)))
    lateness = await asyncio.gather(*(h.result_async() for h in handles))
    return {"timers": n, "sleep_s": seconds, **summary_ms(list(lateness))}


KINDS = {"local": ["inline"], "ray": ["inline", "pool", "ray_tasks"]}
"""The W1 kinds run on each runtime (in-process, every activity runs inline)."""


async def _workloads(client: df.Client, runtime: str, sizes: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in _kinds(runtime, sizes):
        await w1_unloaded(client, 5, kind)  # warm-up (Ray starts task workers lazily)
        results[f"w1_throughput_{kind}"] = await w1_throughput(client, sizes.workflows, kind)
        results[f"w1_in_flight_{kind}"] = await w1_in_flight(
            client, sizes.workflows, kind, sizes.in_flight
        )
        results[f"w1_unloaded_{kind}"] = await w1_unloaded(client, sizes.samples, kind)
    results["w2_signal_unloaded"] = await w2_signal(client, sizes.samples)
    results["w2_signal_loaded"] = await w2_signal_loaded(client, sizes.signals)
    results["w3_timer_lateness"] = await w3_timers(client, sizes.timers)
    results.update(await bench_updates.workloads(client, sizes.samples, sizes.signals))
    return results


def _kinds(runtime: str, sizes: argparse.Namespace) -> list[str]:
    """The W1 kinds to run on ``runtime``: those of KINDS that ``--kinds`` names (all by
    default)."""
    wanted = getattr(sizes, "kinds", None)
    return [k for k in KINDS[runtime] if not wanted or k in wanted.split(",")]


def run(runtime: str, sizes: argparse.Namespace) -> dict[str, Any]:
    """W1-W3 on a fresh engine (``runtime`` "local" or "ray"); on Ray, the Ray floor too."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        df.Engine(
            Path(tmp) / "data",
            runtime=runtime,
            partitions=sizes.partitions,
            synchronous=sizes.synchronous,
        ) as engine,
    ):
        results = asyncio.run(_workloads(engine.client(), runtime, sizes))
        if runtime == "ray":
            results["ray_floor"] = ray_floor()
    return results


def add_size_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflows", type=int, default=1000, help="W1 workflows at once")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="W1 in flight at once")
    parser.add_argument("--samples", type=int, default=100, help="unloaded samples (W1, W2)")
    parser.add_argument("--signals", type=int, default=200, help="W2 parked workflows")
    parser.add_argument("--timers", type=int, default=200, help="W3 sleeping workflows")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks core", description=__doc__)
    add_size_options(parser)
    parser.add_argument("--runtimes", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--kinds", default="", help="W1 kinds, comma-separated (default: all)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "core.json")
    args = parser.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    results: dict[str, Any] = {runtime: run(runtime, args) for runtime in runtimes}
    results["sqlite_floor"] = sqlite_floor(args.synchronous)
    columns = [(r, k) for r in runtimes for k in _kinds(r, args)]
    once = {r: k for r, k in reversed(columns)}  # W2, W3, U: in each runtime's first column
    rows = [("", "  ".join(f"{f'{r}/{k}':>22}" for r, k in columns))]
    thr = "{workflows_per_s:.0f} wf/s"
    lat = "{p50_ms:.1f} / {p99_ms:.1f} ms"
    for title, key, fmt in (
        (f"W1 {args.workflows} x 3 activities", "w1_throughput", thr),
        ("W1 latency under load p50/p99", "w1_throughput", lat),
        (f"W1 {args.in_flight} in flight", "w1_in_flight", thr),
        (f"W1 {args.in_flight} in flight p50/p99", "w1_in_flight", lat),
        ("W1 unloaded latency p50/p99", "w1_unloaded", lat),
    ):
        cells = [_cell(results[r].get(f"{key}_{k}"), fmt) for r, k in columns]
        rows.append((title, "  ".join(f"{c:>22}" for c in cells)))
    for title, key in (
        (f"W2 {args.signals} signalled at once p50/p99", "w2_signal_loaded"),
        ("W2 signal unloaded p50/p99", "w2_signal_unloaded"),
        (f"W3 lateness, {args.timers} x 1 s timers p50/p99", "w3_timer_lateness"),
        (f"U {args.signals} updated at once p50/p99", "u_update_loaded"),
        ("U update round trip p50/p99", "u_update_unloaded"),
        ("U signal sent -> acked p50/p99", "u_signal_ack_unloaded"),
    ):
        cells = [_cell(results[r][key] if k == once[r] else None, lat) for r, k in columns]
        rows.append((title, "  ".join(f"{c:>22}" for c in cells)))
    ratios = [
        _ratio(results[r], "u_update_unloaded", "w2_signal_unloaded") if k == once[r] else "-"
        for r, k in columns
    ]
    rows.append(("U update p50 / W2 signal p50", "  ".join(f"{c:>22}" for c in ratios)))
    floor = results["sqlite_floor"]
    rows.append(("floor: SQLite 1-row commits", f"{floor['commits_per_s']:.0f} commits/s"))
    print_table(
        f"duraflow core ({args.partitions} partitions, synchronous={args.synchronous})", rows
    )
    config = {"runtimes": runtimes, "partitions": args.partitions, "synchronous": args.synchronous}
    path = write_json(args.json, {"config": config, "results": results})
    print(f"\nJSON: {path}")
    return results


def _ratio(results: dict[str, Any], key: str, over: str) -> str:
    """``key``'s p50 over ``over``'s, as "1.23x" (the issue's targets are such ratios)."""
    return f"{results[key]['p50_ms'] / results[over]['p50_ms']:.2f}x"


def _cell(result: dict[str, Any] | None, fmt: str) -> str:
    return "-" if result is None else fmt.format(**result)


if __name__ == "__main__":
    main()
