"""Workflows for the Ray update crash test (``test_updates_crash.py``), in an importable
module so that a restarted partition actor imports them again from ``module:qualname``.

``uf_ledger`` takes ``credit`` updates whose handler awaits an inline activity (so updates
are in flight when the partition is killed), and ``note`` updates answered at once; each
handler appends to the ledger the workflow returns when told to ``close``. Each activity
attempt appends ``"<workflow ID> <request ID> <pid>"`` to a log file, so a test can tell that
attempts may run again after a kill while their recorded results stay once.
"""

from __future__ import annotations

import os
import time
from typing import Any

import duraflow as df

RETRY = df.RetryPolicy(initial_interval=0.1, backoff_coefficient=1.5, maximum_interval=1.0)


@df.activity(inline=True, retry=RETRY)
def uf_apply(log: str, request_id: str, amount: int) -> int:
    line = f"{df.activity_info().workflow_id} {request_id} {os.getpid()}\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    time.sleep(0.1 + 0.1 * amount)  # the first updates finish before the kill, later ones not
    return amount


@df.workflow
async def uf_ledger(ctx: df.WorkflowContext, log: str) -> list[Any]:
    ledger: list[Any] = []

    async def credit(change: dict[str, Any]) -> int:
        amount = await ctx.activity(uf_apply, log, change["id"], change["amount"])
        ledger.append(change["id"])
        return int(amount) * 10

    def note(change: dict[str, Any]) -> str:
        ledger.append(change["id"])
        return f"noted {change['id']}"

    ctx.set_update_handler("credit", credit)
    ctx.set_update_handler("note", note)
    await ctx.wait_for_signal("close", timeout="10m")
    return ledger
