"""Closing subscriptions: ``close()``, ``with`` / ``async with``, a ``for`` loop left early,
and ``client.close()`` / ``engine.close()`` ending every subscription; the process exits
promptly afterwards, on both runtimes."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from tests.test_cli import _kill_session

ROOT = Path(__file__).resolve().parents[2]
EXIT_BOUND_S = 30.0
"""How long a process may take to exit once its engine is closed (a leaked Ray-backed
subscription made it hang about 60 s, then exit non-zero)."""
SCRIPT_TIMEOUT_S = 240.0
"""Everything the script does, Ray's start included (slow on a busy 2-core machine)."""
LEAK = "Task was destroyed but it is pending"


@df.workflow
async def close_flow(ctx: df.WorkflowContext, n: int) -> int:
    return n + 1


@df.workflow
async def close_waits(ctx: df.WorkflowContext) -> None:
    await ctx.wait_for_signal("never")


# Three loops left early: whether a leaked poller calls a partition after Ray is shut down
# is a race, and each loop adds one poller per partition. archive=False: with no archive
# consumer to stop first, engine.close() kills the partitions while the long-polls still
# wait there, and a leaked poller retries after Ray is gone: that call hangs the process.
BREAK_SCRIPT = """
import sys, time, uuid
import duraflow as df

@df.workflow
async def break_flow(ctx, n):
    return n + 1

runtime, data_dir = sys.argv[1], sys.argv[2]
options = {"namespace": f"close-{uuid.uuid4().hex[:8]}"} if runtime == "ray" else {}
engine = df.Engine(
    data_dir, runtime=runtime, partitions=4, synchronous="NORMAL", archive=False, **options
)
client = engine.client()
client.execute(break_flow, 1, workflow_id="break-1")
for event_type in ("workflow.started", "workflow.completed", None):
    for event in client.subscribe([event_type] if event_type else None, from_="earliest"):
        print("EVENT", event.workflow_id, flush=True)
        break
engine.close()
print("CLOSED", time.time(), flush=True)
"""


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 60)
@pytest.mark.parametrize("runtime", ["local", "ray"])
def test_a_process_that_breaks_out_of_a_subscription_exits_promptly(
    runtime: str, tmp_path: Path
) -> None:
    script = tmp_path / "break_script.py"
    script.write_text(textwrap.dedent(BREAK_SCRIPT))
    ray_tmp = tempfile.mkdtemp(prefix="rsc", dir="/tmp")  # short: socket path limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp  # the script's engine starts a Ray of its own, here
    child = subprocess.Popen(
        [sys.executable, str(script), runtime, str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = child.communicate(timeout=SCRIPT_TIMEOUT_S)
        exited_at = time.time()
    except subprocess.TimeoutExpired:
        _kill_session(child.pid)
        out, err = child.communicate()
        pytest.fail(f"the script did not exit within {SCRIPT_TIMEOUT_S}s:\n{out}\n{err[-3000:]}")
    finally:
        _kill_session(child.pid)  # whatever the script left running (a Ray it started, say)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert 0 == child.returncode, f"stdout:\n{out}\nstderr:\n{err[-3000:]}"
    assert "EVENT break-1" in out
    closed_at = float(out.split("CLOSED")[1].split()[0])
    assert exited_at - closed_at < EXIT_BOUND_S, err[-3000:]
    assert LEAK not in err, err[-3000:]


def test_a_subscription_used_as_a_context_manager_is_closed_after_it(
    any_client: df.Client,
) -> None:
    any_client.start(close_flow, 1, workflow_id="close-with")
    with any_client.subscribe(from_="earliest") as sub:
        first = sub.get(timeout=20)
        assert not sub.closed
    assert first is not None and "close-with" == first.workflow_id
    assert sub.closed
    assert [] == list(sub)  # iteration ends at once, also for a later reader
    assert sub.get(timeout=20) is None
    sub.close()  # again: nothing happens


def test_a_for_loop_left_early_lets_its_subscription_go(any_client: df.Client) -> None:
    """Its pollers hold no reference to it, so it is finalized, which stops them."""
    any_client.start(close_flow, 1, workflow_id="close-for")
    sub = any_client.subscribe(from_="earliest")
    gone = weakref.ref(sub)
    for event in sub:
        assert "close-for" == event.workflow_id
        break
    del sub, event  # what `for event in client.subscribe(): break` leaves behind
    gc.collect()
    assert gone() is None


def test_an_async_subscription_closes_with_async_with_and_aclose(
    any_client: df.Client,
) -> None:
    async def main() -> tuple[str, list[ev.Event], list[ev.Event]]:
        await any_client.start_async(close_flow, 1, workflow_id="close-async")
        async with any_client.subscribe(from_="earliest") as sub:
            async for event in sub:
                first = event.workflow_id
                break
        after_with = [e async for e in sub]
        other = any_client.subscribe(from_="earliest")
        assert (await other.__anext__()).workflow_id == "close-async"
        await other.aclose()
        await other.aclose()  # idempotent
        return first, after_with, [e async for e in other]

    first, after_with, after_aclose = asyncio.run(main())
    assert ("close-async", [], []) == (first, after_with, after_aclose)


def test_client_close_ends_a_subscription_a_thread_is_blocked_reading(
    any_client: df.Client,
) -> None:
    any_client.start(close_waits, workflow_id="close-reader")
    sub = any_client.subscribe(workflow_id="close-reader", from_="earliest")
    seen: list[str] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for event in sub:  # one event, then nothing more comes: it blocks
                seen.append(ev.event_type(event))
        except BaseException as exc:  # reason: the test reports whatever ended the loop
            errors.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    any_client.close()
    reader.join(timeout=10)
    assert not reader.is_alive(), "the reader still waits on a closed client's subscription"
    assert [] == errors
    assert sub.closed
    assert "workflow.started" == seen[0]


def test_client_close_fails_a_call_a_thread_is_blocked_in(any_client: df.Client) -> None:
    handle = any_client.start(close_waits, workflow_id="close-waiter")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            handle.result()  # the run waits for a signal that never comes
        except BaseException as exc:  # reason: the test reports whatever ended the wait
            errors.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    time.sleep(0.5)  # the result wait has reached the partition
    any_client.close()
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "the waiter still waits on a closed client"
    assert [df.PartitionUnavailable] == [type(e) for e in errors], errors
    assert "client was closed" in str(errors[0])
