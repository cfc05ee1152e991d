"""The benchmark workflows on Restate's Python SDK, served by hypercorn: the SDK's process.

Written the way Restate's docs write workflows: a ``restate.Workflow`` whose ``run`` handler
takes each step with ``ctx.run_typed`` (async no-ops: a sync action would hop to a thread),
waits for a signal on a durable promise that a shared handler resolves, and sleeps with
``ctx.sleep``. Only this process imports the SDK (``python -m benchmarks.restate_app PORT``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

import hypercorn.asyncio
import hypercorn.config
import restate

three_steps = restate.Workflow("BenchThreeSteps")
wait_signal = restate.Workflow("BenchWaitSignal")
sleeper = restate.Workflow("BenchSleep")


async def noop(i: int) -> int:
    return i


@three_steps.main(name="run")
async def run_three_steps(ctx: restate.WorkflowContext, i: int) -> int:
    a = await ctx.run_typed("noop-1", noop, i=i)
    b = await ctx.run_typed("noop-2", noop, i=a)
    return await ctx.run_typed("noop-3", noop, i=b)


@wait_signal.main(name="run")
async def run_wait_signal(ctx: restate.WorkflowContext) -> int:
    return await ctx.promise("go", type_hint=int).value()


@wait_signal.handler(name="signal")
async def signal(ctx: restate.WorkflowSharedContext, value: int) -> None:
    await ctx.promise("go", type_hint=int).resolve(value)


async def deadline(seconds: float) -> float:
    return time.time() + seconds


@sleeper.main(name="run")
async def run_sleeper(ctx: restate.WorkflowContext, seconds: float) -> float:
    """Sleep until a deadline recorded by a step (so a replay keeps it); return how late it
    woke. The sleep is set for the time left after the step's round trip to the server, so
    the lateness is the timer's alone."""
    due = await ctx.run_typed("deadline", deadline, seconds=seconds)
    await ctx.sleep(timedelta(seconds=max(0.0, due - time.time())))
    return time.time() - due


app = restate.app([three_steps, wait_signal, sleeper])


def serve(port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until SIGTERM, with the settings Restate's serving
    docs give for production (unbounded HTTP/2 streams and keep-alive), in one process."""
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.h2_max_concurrent_streams = 2**31 - 1
    config.keep_alive_max_requests = 2**31 - 1
    config.keep_alive_timeout = 2**31 - 1
    asyncio.run(hypercorn.asyncio.serve(app, config))


if __name__ == "__main__":
    serve(int(sys.argv[1]))
