"""kill -9 of a Ray partition actor in the middle of the runs family's work (issue 14 items 5
and 6): chains continuing as new (with signals left for the next run), a workflow retry
waiting out its backoff, and a run whose run_timeout falls due while the actor is down.

Ray restarts the actor; it recovers from its SQLite file. What must hold afterwards: every
chain ends with the right result and has exactly one run per step, each linked to the next
(no run started twice, none lost); each run recorded its activity's result once; carried
signals reach the run that takes them, once; the retry makes exactly the attempts its policy
allows; the run timeout closes its run once, as ``timed_out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import duraflow as df
from duraflow.actors.router import partition_of
from duraflow.cdc import events as ev

RAY_ARCHIVE = False
PARTITIONS = 2
VICTIM = 0
HOPS = 12
CHAINS = 4


@df.activity
async def rc_hop_step(n: int) -> int:
    await asyncio.sleep(0.15)
    return n * 10


@df.workflow
async def rc_hopper(ctx: df.WorkflowContext, n: int, taken: list[str]) -> dict[str, Any]:
    """One activity per run, then continue as new; takes one "note" signal every 4th run."""
    step = await ctx.activity(rc_hop_step, n)
    assert step == n * 10
    if n % 4 == 3:
        taken = [*taken, await ctx.wait_for_signal("note", timeout="60s")]
    if n == HOPS:
        return {"n": n, "taken": taken}
    await ctx.continue_as_new(n + 1, taken)
    return {}


@df.workflow
async def rc_flaky(ctx: df.WorkflowContext) -> int:
    if ctx.info.attempt < 3:
        raise RuntimeError(f"attempt {ctx.info.attempt}")
    return ctx.info.attempt


@df.workflow
async def rc_stall(ctx: df.WorkflowContext) -> None:
    await ctx.sleep("1h")


def _on_victim(prefix: str, count: int) -> list[str]:
    found, n = [], 0
    while len(found) < count:
        wid = f"{prefix}-{n}"
        if partition_of(wid, PARTITIONS) == VICTIM:
            found.append(wid)
        n += 1
    return found


def _wait(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _runs(client: df.Client, workflow_id: str) -> list[df.WorkflowInfo | Any]:
    return [d for d in client.list(limit=100_000) if d.workflow_id == workflow_id]


@pytest.mark.timeout(180)
def test_sigkill_mid_continue_as_new_retry_and_run_timeout(
    ray_engine: df.Engine, ray_client: df.Client, data_dir: Path
) -> None:
    client = ray_client
    host: Any = client._host  # type: ignore[attr-defined]  # reason: the test needs the actor
    victim = host._handles[VICTIM]
    old_pid = ray.get(victim.status.remote(), timeout=30)["pid"]

    chains = _on_victim("rc-hop", CHAINS)
    handles = [client.start(rc_hopper, 0, [], workflow_id=wid) for wid in chains]
    for handle in handles:  # three signals per chain, most of them taken by later runs
        for text in ("x", "y", "z"):
            handle.signal("note", f"{handle.workflow_id}:{text}")
    [flaky_id] = _on_victim("rc-flaky", 1)
    flaky = client.start(
        rc_flaky,
        workflow_id=flaky_id,
        retry=df.RetryPolicy(initial_interval="2s", backoff_coefficient=1, maximum_attempts=3),
    )
    [stall_id] = _on_victim("rc-stall", 1)
    stall = client.start(rc_stall, workflow_id=stall_id, run_timeout="4s")
    stall_started = time.monotonic()

    # Kill once every chain is part way (some runs continued as new, none finished) and the
    # retry waits out a backoff.
    def mid_way() -> bool:
        runs = client.list(limit=100_000)
        hops = [d for d in runs if d.workflow_type == "rc_hopper"]
        per_chain = {wid: sum(d.workflow_id == wid for d in hops) for wid in chains}
        flaky_runs = [d for d in runs if d.workflow_id == flaky_id]
        return min(per_chain.values()) >= 2 and len(flaky_runs) >= 2

    _wait(mid_way, "the chains to be part way")
    assert all(client.get_handle(wid).describe().status == "running" for wid in chains)
    assert time.monotonic() - stall_started < 4  # its run_timeout falls due after the kill
    with contextlib.suppress(ProcessLookupError):
        os.kill(old_pid, signal.SIGKILL)

    def restarted() -> bool:
        try:
            return ray.get(victim.status.remote(), timeout=2)["pid"] != old_pid
        except Exception:  # the actor is away while Ray restarts it
            return False

    _wait(restarted, "the killed partition actor to come back")

    # Everything finishes, with the results the inputs determine.
    for handle in handles:
        wid = handle.workflow_id
        out = handle.result(timeout=90)
        assert {"n": HOPS, "taken": [f"{wid}:{t}" for t in ("x", "y", "z")]} == out
    assert 3 == flaky.result(timeout=60)
    with pytest.raises(df.WorkflowTimedOutError, match="run_timeout"):
        stall.result(timeout=60)

    # One run per step, linked first to last; each run's activity result recorded once;
    # each signal recorded in as many runs as it was carried through, and taken once.
    for handle in handles:
        runs = {d.run_id: d for d in _runs(client, handle.workflow_id)}
        assert len(runs) == HOPS + 1
        assert (
            sorted(d.status for d in runs.values()) == ["completed"] + ["continued_as_new"] * HOPS
        )
        chain, run_id = [], handle.first_run_id
        while run_id is not None:
            chain.append(run_id)
            assert runs[run_id].first_run_id == handle.first_run_id
            run_id = runs[run_id].next_run_id
        assert len(chain) == HOPS + 1 and chain[-1] == handle.run_id
        for run_id in chain:
            history = client.get_handle(handle.workflow_id, run_id).history()
            done = [e for e in history if isinstance(e, ev.ActivityCompleted)]
            assert 1 == len(done), history
            started = sum(isinstance(e, ev.WorkflowStarted) for e in history)
            closing = sum(isinstance(e, ev.CLOSING) for e in history)
            assert (1, 1) == (started, closing)
    flaky_runs = sorted(_runs(client, flaky_id), key=lambda d: d.attempt)
    assert [(d.attempt, d.status) for d in flaky_runs] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert ["timed_out"] == [d.status for d in _runs(client, stall_id)]
