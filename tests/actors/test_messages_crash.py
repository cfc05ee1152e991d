"""Workflow-to-workflow messages survive a kill -9 of the receiving partition's process (Ray).

A sender on partition 0 signals a collector on partition 1 many times, one after another,
and partition 1's actor process is killed (SIGKILL, by the PID it reports) midway. Ray
restarts it; the sender's outbox sends the signal that was in flight again. What must hold:
each signal reaches the collector exactly once, in the order sent. Meanwhile a
``block_until`` on partition 1 waits for a workflow on partition 0 that closes while
partition 1 is down: the notice waits in partition 0's outbox and arrives after the restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import pytest

import duraflow as df
from duraflow.actors.router import partition_of
from duraflow.cdc import events as ev

PARTITIONS = 2  # the ray_engine fixture's
SIGNALS = 150
RESTART_LIMIT_S = 30.0


def on_partition(prefix: str, partition: int) -> str:
    n = 0
    while partition_of(f"{prefix}-{n}", PARTITIONS) != partition:
        n += 1
    return f"{prefix}-{n}"


@df.workflow
async def mc_collector(ctx: df.WorkflowContext, expected: int) -> list[int]:
    got: list[int] = []
    ctx.set_signal_handler("n", got.append)
    await ctx.wait_condition(lambda: len(got) >= expected)
    return got


@df.workflow
async def mc_sender(ctx: df.WorkflowContext, target: str, count: int) -> int:
    ext = ctx.external_workflow(target)
    for i in range(count):
        await ext.signal("n", i)
    return count


@df.workflow
async def mc_gate(ctx: df.WorkflowContext) -> str:
    return str(await ctx.wait_for_signal("go"))


@df.workflow
async def mc_blocker(ctx: df.WorkflowContext, target: str) -> dict[str, str]:
    return await ctx.block_until([target])


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(df.PartitionUnavailable):
            value = predicate()
            if value:
                return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.timeout(120)
def test_signals_to_a_partition_killed_midway_arrive_exactly_once_in_order(
    ray_client: df.Client,
) -> None:
    client = ray_client
    host: Any = client._host  # type: ignore[attr-defined]  # reason: the test needs the PIDs
    collector_id = on_partition("mc-collector", 1)
    gate_id = on_partition("mc-gate", 0)
    collector = client.start(mc_collector, SIGNALS, workflow_id=collector_id)
    gate = client.start(mc_gate, workflow_id=gate_id)
    blocker = client.start(mc_blocker, gate_id, workflow_id=on_partition("mc-blocker", 1))
    wait_for(
        lambda: "workflow.block_until_started" in {ev.event_type(e) for e in blocker.history()},
        30,
        "the block_until to begin",
    )
    victim_pid = host.statuses()[1]["pid"]
    sender = client.start(
        mc_sender, collector_id, SIGNALS, workflow_id=on_partition("mc-sender", 0)
    )
    wait_for(lambda: sender.describe().history_length >= 40, 60, "20 signals to be answered")

    os.kill(victim_pid, signal.SIGKILL)  # partition 1's process: no shutdown hook runs
    gate.signal("go", "while partition 1 is down")  # partition 0 is up: the gate closes now
    assert "while partition 1 is down" == gate.result(timeout=30)

    assert SIGNALS == sender.result(timeout=RESTART_LIMIT_S + 30)
    assert list(range(SIGNALS)) == collector.result(timeout=30)
    assert {gate_id: "completed"} == blocker.result(timeout=30)
    assert victim_pid != host.statuses()[1]["pid"]  # it really was a new process

    received = [e for e in collector.history() if isinstance(e, ev.SignalReceived)]
    assert SIGNALS == len(received)  # exactly once: none appended twice
    history = sender.history()
    sent_at = {e.seq: e.at_us for e in history if isinstance(e, ev.ExternalSignalRequested)}
    answered = [e for e in history if isinstance(e, ev.ExternalCompleted)]
    assert SIGNALS == len(answered)
    waits_s = [(e.at_us - sent_at[e.seq]) / 1e6 for e in answered]
    assert 0 < waits_s.index(max(waits_s)) < SIGNALS - 1  # in flight across the kill: midway
    assert max(waits_s) > 1.0, max(waits_s)  # it waited out the restart
