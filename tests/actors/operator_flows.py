"""Workflows of the operator crash test (``test_operator_crash.py``), in an importable module
so that a partition actor that Ray restarts imports them again from the recorded code ref.

Each activity attempt appends ``"<workflow ID> <seq> <attempt> <pid> <step>"`` to the log file
it is given, when it starts, so the test can count what ran and where.
"""

from __future__ import annotations

import asyncio
import os

import duraflow as df


@df.activity(retry=df.RetryPolicy(initial_interval=0.1, maximum_interval=0.5))
def oc_step(log: str, step: str) -> str:
    info = df.activity_info()
    line = f"{info.workflow_id} {info.seq} {info.attempt} {os.getpid()} {step}\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return step.upper()


@df.workflow
async def oc_paused(ctx: df.WorkflowContext, log: str) -> list[str]:
    """Step a; waits for ``go``; step b and a 1 s timer together; step c."""
    a = await ctx.activity(oc_step, log, "a")
    await ctx.wait_for_signal("go")
    b, _ = await asyncio.gather(ctx.activity(oc_step, log, "b"), ctx.sleep(1.0))
    c = await ctx.activity(oc_step, log, "c")
    return [a, b, c]


def steps_run(log: str) -> list[str]:
    """The steps whose attempts started, in order."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [line.split()[-1] for line in f if line.strip()]
