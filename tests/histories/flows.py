"""The workflows whose recorded histories live in this folder: keep them replayable.

tests/test_histories.py replays every history here against these functions as they are now.
A change to one of them that would break the runs already recorded (another activity, a timer
moved, a child started under another ID) makes that test fail: change such a workflow the way
you would in production (a new name, or a version branch), then record again with
``./dev python -m tests.histories.record``. Names start with ``hist_`` (the registry is
global to the test session).
"""

from __future__ import annotations

import asyncio

import duraflow as df

FAST = df.RetryPolicy(initial_interval="1m", backoff_coefficient=2.0, maximum_attempts=5)


@df.activity(retry=FAST)
def hist_charge(order_id: str, amount: float) -> dict:
    """Fails its first attempt, so the history holds a retry."""
    if df.activity_info().attempt == 1:
        raise RuntimeError("card network busy")
    return {"order": order_id, "charged": amount}


@df.activity
def hist_reserve(sku: str) -> str:
    return f"reserved {sku}"


@df.activity
async def hist_notify(who: str, text: str) -> str:
    return f"{who}: {text}"


@df.workflow
async def hist_activities(ctx: df.WorkflowContext, order_id: str) -> dict:
    """An activity that is retried once, then two that run side by side."""
    charged = await ctx.activity(hist_charge, order_id, 12.5)
    reserved = await asyncio.gather(
        ctx.activity(hist_reserve, "a-1"), ctx.activity(hist_reserve, "b-2")
    )
    return {"charged": charged, "reserved": list(reserved)}


@df.workflow
async def hist_timers(ctx: df.WorkflowContext) -> dict:
    """ctx.sleep, asyncio.sleep and a signal wait that times out: three durable timers."""
    started = ctx.time()
    await ctx.sleep("1h")
    await asyncio.sleep(30 * 60)
    late = await ctx.wait_for_signal("never", timeout="1d", default="timed out")
    return {"late": late, "hours": (ctx.time() - started) / 3600}


@df.workflow
async def hist_signals(ctx: df.WorkflowContext) -> dict:
    """Signals taken in order, one with a timeout that the signal beats (a timer cancelled)."""
    items: list[object] = []
    ctx.set_query_handler("items", lambda: list(items))
    for _ in range(2):
        items.append(await ctx.wait_for_signal("item"))
    done = await ctx.wait_for_signal("done", timeout="1h")
    return {"items": items, "done": done}


@df.workflow
async def hist_child(ctx: df.WorkflowContext, n: int) -> int:
    await ctx.sleep("5m")
    if n < 0:
        raise ValueError(f"negative: {n}")
    return len(await ctx.activity(hist_notify, "child", str(n))) + n


@df.workflow
async def hist_children(ctx: df.WorkflowContext) -> dict:
    """A child that completes and one that fails; the parent sees both."""
    good = await ctx.execute_child(hist_child, 3, workflow_id="hist-children/good")
    try:
        await ctx.execute_child(hist_child, -1, workflow_id="hist-children/bad")
    except df.ChildWorkflowError as exc:
        failed = exc.cause_type
    else:
        failed = "nothing"
    return {"good": good, "failed": failed}


@df.workflow
async def hist_cancel(ctx: df.WorkflowContext) -> str:
    """Cancelled while it sleeps: runs a cleanup activity, then closes as cancelled."""
    try:
        await ctx.sleep("7d")
    except asyncio.CancelledError:
        await ctx.activity(hist_notify, "ops", "cancelled while sleeping")
        raise
    return "slept a week"


@df.workflow
async def hist_worker(ctx: df.WorkflowContext, n: int) -> int:
    """A child that reports to its parent, asks it a question, and waits to be told to stop."""
    await ctx.signal_parent("progress", {"worker": n, "done": True})
    factor = await ctx.query_parent("factor")
    stop = await ctx.wait_for_signal("stop")
    return n * factor + stop


@df.workflow
async def hist_coordinator(ctx: df.WorkflowContext) -> dict:
    """A parent coordinating children that signal back (signal handler, wait_condition,
    child signal and query, external cancel, block_until with a timeout that the closing beats)."""
    reports: list[object] = []
    ctx.set_query_handler("factor", lambda: 10)
    ctx.set_signal_handler("progress", reports.append)
    workers = [
        await ctx.start_child(hist_worker, n, workflow_id=f"hist-coordinator/{n}") for n in (1, 2)
    ]
    await ctx.wait_condition(lambda: len(reports) == 2, timeout="1h")
    for worker in workers:
        await worker.signal("stop", 5)
    results = [await worker.result() for worker in workers]
    closed = await ctx.block_until(
        [w.workflow_id for w in workers], condition="all_complete", timeout="1h"
    )
    try:
        await ctx.external_workflow("hist-nobody").cancel("no such workflow")
    except df.WorkflowNotFound:
        missing = "not found"
    else:
        missing = "found"
    return {"results": results, "closed": closed, "reports": len(reports), "missing": missing}


WORKFLOWS = [
    hist_activities,
    hist_timers,
    hist_signals,
    hist_child,
    hist_children,
    hist_cancel,
    hist_worker,
    hist_coordinator,
]
"""Every workflow whose histories are recorded here."""
