"""Update round trips on duraflow (run by ``bench_core`` beside W2's signals).

  U  one workflow parked with an update handler at a time: ``update()`` sent -> its result
     back (durable), p50/p99; the same parked workflow's ``signal()`` sent -> acknowledged
     (durable) beside it; and M workflows parked, all updated at once: each one's time from
     the send to its result (W2's shape, with an update instead of a signal).

The issue's target is an update round trip p50 at most 2x a signal's on the same run; the
table prints the ratio to W2's signal round trip (signal sent -> the workflow's result).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import duraflow as df
from benchmarks.common import summary_ms


@df.workflow
async def bench_update_counter(ctx: df.WorkflowContext) -> int:
    count = 0

    def bump(n: int) -> int:
        nonlocal count
        count += n
        return count

    ctx.set_update_handler("bump", bump)
    await ctx.wait_for_signal("stop")
    return count


async def _parked(client: df.Client, n: int) -> list[df.WorkflowHandle]:
    handles = await asyncio.gather(*(client.start_async(bench_update_counter) for _ in range(n)))
    return list(handles)


async def update_unloaded(client: df.Client, n: int) -> dict[str, Any]:
    """``n`` updates of one parked workflow, one at a time: sent -> result."""
    (handle,) = await _parked(client, 1)
    await handle.update_async("bump", 0)  # warm: the run is resident, the batcher made
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await handle.update_async("bump", 1)
        samples.append(time.perf_counter() - t0)
    await handle.signal_async("stop")
    return {"samples": n, **summary_ms(samples)}


async def signal_ack_unloaded(client: df.Client, n: int) -> dict[str, Any]:
    """``n`` signals to one parked workflow, one at a time: sent -> acknowledged."""
    (handle,) = await _parked(client, 1)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await handle.signal_async("noise", 1)
        samples.append(time.perf_counter() - t0)
    await handle.signal_async("stop")
    return {"samples": n, **summary_ms(samples)}


async def update_loaded(client: df.Client, n: int) -> dict[str, Any]:
    """``n`` parked workflows all updated at once: each one's time from the send to its
    result."""
    handles = await _parked(client, n)
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    done_at: list[float] = []

    async def one(handle: df.WorkflowHandle) -> None:
        await handle.update_async("bump", 1)
        done_at.append(time.perf_counter())

    await asyncio.gather(*(one(h) for h in handles))
    await asyncio.gather(*(h.signal_async("stop") for h in handles))
    return {"workflows": n, **summary_ms([t - t0 for t in done_at])}


async def workloads(client: df.Client, samples: int, at_once: int) -> dict[str, Any]:
    """The update workloads' results, keyed as ``bench_core`` reports them."""
    return {
        "u_update_unloaded": await update_unloaded(client, samples),
        "u_signal_ack_unloaded": await signal_ack_unloaded(client, samples),
        "u_update_loaded": await update_loaded(client, at_once),
    }
