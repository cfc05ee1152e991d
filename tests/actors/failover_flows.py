"""Workflows for the Ray failover tests, and helpers shared by ``test_failover.py`` and
``multinode_script.py`` (which runs in a process of its own).

The workflows live in an importable module, so that a partition actor that Ray restarts (or
moves to another node) can import them again from the ``module:qualname`` recorded in history.

``fo_order`` runs an inline activity (in the partition actor's own process), an activity as a
Ray task and a durable timer concurrently, then collects signals until it has seen every key
it was told to expect, then runs one more inline activity. Each activity attempt appends one
line ``"<workflow ID> <run ID> <seq> <attempt> <pid> <unix time>"`` to a log file given as an
argument when it starts, so a test can tell which attempts ran, where and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duraflow as df
from duraflow.cdc import events as ev

SIGNAL = "fo_sig"
SIGNAL_TIMEOUT_S = 90.0
"""Bounded, so that a lost signal shows up as a wrong result instead of a hang."""

RETRY = df.RetryPolicy(initial_interval=0.1, backoff_coefficient=1.5, maximum_interval=1.0)


def inline_ms(n: int, i: int) -> int:
    """How long inline step ``i`` of workflow ``n`` takes: 200-2,000 ms, spread over the run."""
    return 200 + 200 * ((n * 7 + i * 3) % 10)


def remote_ms(n: int) -> int:
    """How long the Ray-task step of workflow ``n`` takes: 5-40 ms."""
    return 5 + 5 * (n % 8)


def sleep_s(n: int) -> float:
    """The durable timer of workflow ``n``: 0.5-3 s."""
    return 0.5 + 0.5 * (n % 6)


def step_value(n: int, i: int) -> int:
    return n * 10 + i


def _record(log: str) -> None:
    info = df.activity_info()
    fields = (info.workflow_id, info.run_id, info.seq, info.attempt, os.getpid())
    line = " ".join(map(str, fields)) + f" {time.time():.6f}\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@df.activity(inline=True, retry=RETRY)
def fo_inline_step(n: int, i: int, log: str) -> int:
    _record(log)
    time.sleep(inline_ms(n, i) / 1000)
    return step_value(n, i)


@df.activity(retry=RETRY)
def fo_remote_step(n: int, log: str) -> dict[str, Any]:
    _record(log)
    time.sleep(remote_ms(n) / 1000)
    return {"value": step_value(n, 5), "pid": os.getpid()}


@df.workflow
async def fo_order(ctx: df.WorkflowContext, n: int, log: str, wanted: list[str]) -> dict[str, Any]:
    first, remote, _ = await asyncio.gather(
        ctx.activity(fo_inline_step, n, 0, log),
        ctx.activity(fo_remote_step, n, log),
        ctx.sleep(sleep_s(n)),
    )
    got: list[Any] = []
    keys: set[str] = set()
    while not set(wanted) <= keys:
        signal = await ctx.wait_for_signal(SIGNAL, timeout=SIGNAL_TIMEOUT_S, default=None)
        if signal is None:
            break  # a lost signal: the test sees it in the result
        got.append(signal)
        keys.add(signal["key"])
    last = await ctx.activity(fo_inline_step, n, 1, log)
    return {"n": n, "steps": [first, remote["value"], last], "signals": got}


@df.workflow
async def fo_parked(ctx: df.WorkflowContext, n: int) -> dict[str, Any]:
    """Waits for one signal (bounded, so a lost one shows as a wrong result, not a hang)."""
    got = await ctx.wait_for_signal(SIGNAL, timeout=SIGNAL_TIMEOUT_S, default=None)
    return {"n": n, "got": got}


def expected_steps(n: int) -> list[int]:
    return [step_value(n, 0), step_value(n, 5), step_value(n, 1)]


# -- signals: sent until acknowledged ------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    """One logical signal: the token that was acknowledged, and the attempts that raised.

    ``acked`` stays empty when a resend found the run closed: then an earlier attempt, which
    raised, was appended after all (and the run went on with it)."""

    workflow_id: str
    key: str
    acked: str = ""
    unacked: list[str] = dataclasses.field(default_factory=list)
    sent_at: float = 0.0
    acked_at: float = 0.0


async def send_until_acked(
    handle: df.WorkflowHandle, key: str, deadline: float, errors: list[BaseException]
) -> Sent:
    """Send signal ``key`` until a send returns. A send that raised may or may not have been
    appended, so each attempt carries its own token. Only ``PartitionUnavailable`` (retriable)
    is retried; any other error propagates."""
    sent = Sent(handle.workflow_id, key, sent_at=time.monotonic())
    attempt = 0
    while True:
        token = f"{handle.workflow_id}/{key}/{attempt}"
        try:
            await handle.signal_async(SIGNAL, {"key": key, "token": token})
        except df.WorkflowClosed:
            if not sent.unacked:
                raise
            return sent  # an attempt that raised was appended, and the run finished with it
        except df.PartitionUnavailable as exc:
            errors.append(exc)
            sent.unacked.append(token)
            if time.monotonic() > deadline:
                raise AssertionError(f"{handle.workflow_id}: {key} never acknowledged") from exc
            attempt += 1
            await asyncio.sleep(0.2)
            continue
        sent.acked = token
        sent.acked_at = time.monotonic()
        return sent


# -- reading partition files directly (read-only) -----------------------------------------------


def partition_file(data_dir: Path, index: int) -> Path:
    return data_dir / "partitions" / f"p{index:04d}.sqlite"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield conn
    finally:
        conn.close()


@dataclasses.dataclass
class Snapshot:
    """What one partition file held at one moment."""

    lsn: int
    completed: set[tuple[str, int]]  # (workflow ID, seq)
    running: dict[tuple[str, int], int]  # (workflow ID, seq) -> attempt
    timers: dict[tuple[str, int], int]  # (workflow ID, seq) -> fire_at_us

    def to_json(self) -> dict[str, Any]:
        return {
            "lsn": self.lsn,
            "completed": sorted(self.completed),
            "running": [[w, s, a] for (w, s), a in sorted(self.running.items())],
            "timers": [[w, s, at] for (w, s), at in sorted(self.timers.items())],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            data["lsn"],
            {(w, s) for w, s in data["completed"]},
            {(w, s): a for w, s, a in data["running"]},
            {(w, s): at for w, s, at in data["timers"]},
        )


def snapshot(data_dir: Path, index: int) -> Snapshot:
    snap = Snapshot(0, set(), {}, {})
    with read_only(partition_file(data_dir, index)) as conn:
        conn.execute("BEGIN")  # one read transaction: a consistent view
        snap.lsn = conn.execute("SELECT coalesce(max(lsn), 0) FROM workflow_history").fetchone()[0]
        for (body,) in conn.execute(
            "SELECT body FROM workflow_history WHERE event_type = 'workflow.activity_completed'"
        ):
            event = ev.decode_event(body)
            assert isinstance(event, ev.ActivityCompleted)
            snap.completed.add((event.workflow_id, event.seq))
        for wid, seq, attempt in conn.execute(
            "SELECT workflow_id, seq, attempt FROM workflow_activities WHERE state = 'running'"
        ):
            snap.running[(wid, seq)] = attempt
        for wid, seq, fire_at_us in conn.execute(
            "SELECT workflow_id, seq, fire_at_us FROM workflow_timers"
        ):
            snap.timers[(wid, seq)] = fire_at_us
        conn.execute("COMMIT")
    return snap


def mid_flight(snap: Snapshot, at_least: int) -> bool:
    """Some activities completed, some in flight, some timers pending."""
    return min(len(snap.completed), len(snap.running), len(snap.timers)) >= at_least
