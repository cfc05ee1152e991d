"""Many workflows parked on a signal: time to start them, memory while parked, time to finish.

For each runtime (Ray-hosted by default) this starts N workflows that each wait for one
signal, measures the total RSS of every process involved (this driver and all its
descendants: Ray's GCS, raylet, partition actors, workers) while they are parked, optionally
waits until idle runs hibernate (dropped from memory, state kept in SQLite), then signals all
of them and waits for every result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import duraflow as df
from benchmarks.common import RESULTS_DIR, print_table, rss_mib, write_json

BATCH = 500
SETTLE_S = 1.0
"""How long the parked runs settle after the last start before RSS is measured."""


@df.workflow
async def bench_parked(ctx: df.WorkflowContext) -> Any:
    return await ctx.wait_for_signal("go")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


async def _in_batches(coros: list[Any]) -> list[Any]:
    results: list[Any] = []
    for i in range(0, len(coros), BATCH):
        results.extend(await asyncio.gather(*coros[i : i + BATCH]))
    return results


async def scenario(
    client: df.Client, n: int, engine: df.Engine, wait_s: float, settle_s: float = SETTLE_S
) -> dict[str, Any]:
    ids = [f"parked-{i:06d}" for i in range(n)]
    t0 = time.perf_counter()
    await _in_batches([client.start_async(bench_parked, workflow_id=wid) for wid in ids])
    start_s = time.perf_counter() - t0
    await asyncio.sleep(settle_s)
    rss_parked = rss_mib(descendants(os.getpid()))
    stats_parked = engine.stats()
    rss_hibernated = None
    if wait_s > 0:
        await asyncio.sleep(wait_s)
        rss_hibernated = rss_mib(descendants(os.getpid()))
    stats_hibernated = engine.stats()
    t1 = time.perf_counter()
    handles = [client.get_handle(wid) for wid in ids]
    await _in_batches([h.signal_async("go", 1) for h in handles])
    signal_s = time.perf_counter() - t1
    results = await _in_batches([h.result_async() for h in handles])
    finish_s = time.perf_counter() - t1
    assert results == [1] * n
    return {
        "workflows": n,
        "start_s": start_s,
        "starts_per_s": n / start_s,
        "rss_parked_mib": rss_parked,
        "resident_parked": sum(s["resident"] for s in stats_parked),
        "rss_after_hibernation_mib": rss_hibernated,
        "resident_after_wait": sum(s["resident"] for s in stats_hibernated),
        "signal_all_s": signal_s,
        "signal_and_complete_s": finish_s,
    }


def run(
    runtime: str,
    workflows: int,
    *,
    partitions: int = 2,
    synchronous: str = "FULL",
    hibernate_after: float | None = None,
    settle_s: float = SETTLE_S,
) -> dict[str, Any]:
    """One W4 run on a fresh engine (and, on Ray, a fresh local Ray) with the engine's
    default settings; with ``hibernate_after`` it also waits until idle runs left memory and
    measures RSS again."""
    options: dict[str, Any] = {"partitions": partitions, "synchronous": synchronous}
    if hibernate_after is not None:
        options["hibernate_after"] = hibernate_after
    with (
        tempfile.TemporaryDirectory() as tmp,
        df.Engine(Path(tmp) / "data", runtime=runtime, **options) as engine,
    ):
        wait_s = hibernate_after * 1.5 + 1 if hibernate_after else 0.0
        return asyncio.run(scenario(engine.client(), workflows, engine, wait_s, settle_s))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks parked", description=__doc__)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--runtime", choices=("ray", "local"), default="ray")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--hibernate-after", type=float, default=5.0)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "parked.json")
    args = parser.parse_args(argv)
    result = run(
        args.runtime,
        args.workflows,
        partitions=args.partitions,
        synchronous=args.synchronous,
        hibernate_after=args.hibernate_after or None,
    )
    config = {
        k: getattr(args, k) for k in ("runtime", "partitions", "hibernate_after", "synchronous")
    }
    print_table(
        f"{args.workflows} workflows parked on a signal, runtime={args.runtime} "
        f"({args.partitions} partitions, synchronous={args.synchronous})",
        [
            ("start all", f"{result['start_s']:.1f} s ({result['starts_per_s']:.0f}/s)"),
            (
                "total RSS while parked",
                f"{result['rss_parked_mib']:.0f} MiB ({result['resident_parked']} runs resident)",
            ),
            (
                "total RSS after hibernation",
                f"{result['rss_after_hibernation_mib'] or 0:.0f} MiB "
                f"({result['resident_after_wait']} runs resident)",
            ),
            ("signal all", f"{result['signal_all_s']:.1f} s"),
            ("signal all and complete", f"{result['signal_and_complete_s']:.1f} s"),
        ],
    )
    path = write_json(args.json, {"config": config, "results": result})
    print(f"\nJSON: {path}")
    return result


if __name__ == "__main__":
    main()
