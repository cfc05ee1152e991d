"""Workflows talking to workflows (W6), on duraflow, and DBOS's send/recv for comparison.

  W6  signal: one workflow signals a workflow on the other partition M times, one after
      another; latency from the sender's command (``workflow.external_signal_requested``) to
      the target's ``workflow.signal_received``, both stamped by their partitions' clocks on
      this one machine; p50/p99.
      ping-pong: two workflows on different partitions signal each other N times (ping,
      wait for pong); wall time from the start of both to both results, and per round trip.
      DBOS's twin (``benchmarks/bench_dbos.py`` workload ``w6_ping_pong``) uses
      ``DBOS.send`` / ``DBOS.recv`` inside two workflows.

``python -m benchmarks messages`` runs it alone; the suite runs it on each runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import duraflow as df
from benchmarks.common import RESULTS_DIR, print_table, round_trips, summary_ms, write_json
from duraflow.actors.router import partition_of
from duraflow.cdc import events as ev


@df.workflow
async def bench_msg_collect(ctx: df.WorkflowContext, count: int) -> int:
    got: list[int] = []
    ctx.set_signal_handler("n", got.append)
    await ctx.wait_condition(lambda: len(got) >= count)
    return len(got)


@df.workflow
async def bench_msg_send(ctx: df.WorkflowContext, target: str, count: int) -> int:
    ext = ctx.external_workflow(target)
    for i in range(count):
        await ext.signal("n", i)
    return count


@df.workflow
async def bench_msg_ping(ctx: df.WorkflowContext, peer: str, rounds: int) -> int:
    other = ctx.external_workflow(peer)
    for i in range(rounds):
        await other.signal("ping", i)
        await ctx.wait_for_signal("pong")
    return rounds


@df.workflow
async def bench_msg_pong(ctx: df.WorkflowContext, peer: str, rounds: int) -> int:
    other = ctx.external_workflow(peer)
    for _ in range(rounds):
        i = await ctx.wait_for_signal("ping")
        await other.signal("pong", i)
    return rounds


def on_partition(prefix: str, partition: int, partitions: int) -> str:
    """A workflow ID starting with ``prefix`` that partition ``partition`` owns."""
    n = 0
    while partition_of(f"{prefix}-{n}", partitions) != partition % partitions:
        n += 1
    return f"{prefix}-{n}"


async def w6_signal(client: df.Client, count: int, partitions: int) -> dict[str, Any]:
    target = on_partition("w6-target", 1, partitions)
    collector = await client.start_async(bench_msg_collect, count, workflow_id=target)
    sender = await client.start_async(
        bench_msg_send, target, count, workflow_id=on_partition("w6-sender", 0, partitions)
    )
    await sender.result_async()
    await collector.result_async()
    sent = {
        e.seq: e.at_us
        for e in await sender.history_async()
        if isinstance(e, ev.ExternalSignalRequested)
    }
    received = [
        e.at_us for e in await collector.history_async() if isinstance(e, ev.SignalReceived)
    ]
    latencies = [(at - sent[seq]) / 1e6 for seq, at in zip(sorted(sent), received, strict=True)]
    return {"signals": count, **summary_ms(latencies)}


async def w6_ping_pong(client: df.Client, rounds: int, partitions: int) -> dict[str, Any]:
    ping_id = on_partition("w6-ping", 0, partitions)
    pong_id = on_partition("w6-pong", 1, partitions)
    t0 = time.perf_counter()
    pong = await client.start_async(bench_msg_pong, ping_id, rounds, workflow_id=pong_id)
    ping = await client.start_async(bench_msg_ping, pong_id, rounds, workflow_id=ping_id)
    await asyncio.gather(ping.result_async(), pong.result_async())
    return round_trips(rounds, time.perf_counter() - t0)


async def _scenario(client: df.Client, signals: int, rounds: int, partitions: int) -> dict:
    await w6_signal(client, 5, partitions)  # warm-up: first calls import and build lazily
    return {
        "w6_signal": await w6_signal(client, signals, partitions),
        "w6_ping_pong": await w6_ping_pong(client, rounds, partitions),
    }


def run(
    runtime: str,
    *,
    signals: int = 200,
    rounds: int = 1000,
    partitions: int = 2,
    synchronous: str = "FULL",
) -> dict[str, Any]:
    """W6 on a fresh engine (a Ray-hosted one reuses this process's Ray if connected)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        df.Engine(
            Path(tmp) / "data", runtime=runtime, partitions=partitions, synchronous=synchronous
        ) as engine,
    ):
        return asyncio.run(_scenario(engine.client(), signals, rounds, max(partitions, 2)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks messages", description=__doc__)
    parser.add_argument("--runtimes", default="local,ray")
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--dbos-rounds", type=int, default=20, help="0 to skip DBOS")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "messages.json")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for runtime in [r for r in args.runtimes.split(",") if r]:
        results[runtime] = run(
            runtime,
            signals=args.signals,
            rounds=args.rounds,
            partitions=args.partitions,
            synchronous=args.synchronous,
        )
    if args.dbos_rounds:
        from benchmarks import bench_dbos

        results["dbos"] = {"w6_ping_pong": bench_dbos.ping_pong(args.dbos_rounds)}
    rows = []
    for system, result in results.items():
        if "w6_signal" in result:
            signal = result["w6_signal"]
            rows.append(
                (
                    f"{system}: {signal['signals']} signals across partitions p50/p99",
                    f"{signal['p50_ms']:.1f} / {signal['p99_ms']:.1f} ms",
                )
            )
        pp = result["w6_ping_pong"]
        rows.append(
            (
                f"{system}: ping-pong, {pp['round_trips']} round trips",
                f"{pp['seconds']:.2f} s ({pp['ms_per_round_trip']:.1f} ms per round trip)",
            )
        )
    print_table(
        f"W6 workflows talking to workflows ({args.partitions} partitions, "
        f"synchronous={args.synchronous})",
        rows,
    )
    path = write_json(
        args.json, {"config": vars(args) | {"json": str(args.json)}, "results": results}
    )
    print(f"\nJSON: {path}")
    return results


if __name__ == "__main__":
    main()
