"""Activities end to end: results, sync and async code, concurrency, retries, timeouts, heartbeats.

Everything goes through the public API against real SQLite partition files; assertions about
history read those files directly. Activities count their attempts in module-level state keyed
by their workflow ID (``df.activity_info().workflow_id``), and every test uses fresh IDs, so
tests cannot see each other's counts.

Retry waits, timeouts and heartbeat deadlines run on a stepped clock (``skipping_env`` and
``stepped_env``, duraflow.testing): their durations are minutes, the tests take milliseconds,
and workflow time is exact, so a deadline is shown to fire at its time and not a moment before.
Fast retries (10 ms) stay on the real clock, end to end.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.cdc.events import ActivityFailed, ActivityRetry, decode_event
from duraflow.testing import WorkflowEnvironment

# -- attempt bookkeeping shared with activity code ------------------------------------------

_lock = threading.Lock()
_seen: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
_barriers: dict[str, threading.Barrier] = {}


def _record(**extra: Any) -> df.ActivityInfo:
    """Note this attempt (number, time, heartbeat details it started with) for its workflow."""
    info = df.activity_info()
    with _lock:
        _seen[info.workflow_id].append(
            {
                "activity": info.activity,
                "attempt": info.attempt,
                "at": time.monotonic(),
                "details": info.heartbeat_details,
                **extra,
            }
        )
    return info


def seen(workflow_id: str) -> list[dict[str, Any]]:
    with _lock:
        return list(_seen[workflow_id])


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def history(data_dir: Path, workflow_id: str) -> list[Any]:
    """Every recorded event of ``workflow_id``, read from the partition SQLite files."""
    events = []
    for path in sorted((data_dir / "partitions").glob("p*.sqlite")):
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(
                "SELECT body FROM workflow_history WHERE workflow_id = ? ORDER BY run_id, event_id",
                (workflow_id,),
            ).fetchall()
        finally:
            conn.close()
        events.extend(decode_event(body) for (body,) in rows)
    return events


def retries(data_dir: Path, workflow_id: str) -> list[ActivityRetry]:
    return [e for e in history(data_dir, workflow_id) if isinstance(e, ActivityRetry)]


# -- activities -------------------------------------------------------------------------------


@df.activity
def act_shape(order: dict) -> dict:
    return {
        "id": order["id"],
        "skus": sorted(item["sku"] for item in order["items"]),
        "total": sum(item["qty"] * item["price"] for item in order["items"]),
        "nested": {"flags": [True, False, None], "bytes": b"\x00\x01"},
    }


@df.activity
def act_sync_triple(x: int) -> int:
    return 3 * x


@df.activity
async def act_async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@df.activity
def act_barrier(i: int) -> int:
    """Passes only if all of its siblings run at the same time (the barrier has one per sibling)."""
    _barriers[df.activity_info().workflow_id].wait(timeout=10)
    return 10 * i


_all_arrived: dict[str, asyncio.Event] = {}


@df.activity
async def act_async_barrier(i: int) -> int:
    """The async twin: each of 3 calls waits until all 3 have arrived (async activities share
    one event loop, so the dict and the Event need no lock)."""
    wid = df.activity_info().workflow_id
    arrived = _all_arrived.setdefault(wid, asyncio.Event())
    with _lock:
        _seen[wid].append({"arrived": i})
    if len(seen(wid)) == 3:
        arrived.set()
    await asyncio.wait_for(arrived.wait(), 10)
    return 100 * i


@df.activity
def act_flaky(fail_times: int) -> dict:
    """Fails its first ``fail_times`` attempts, then reports which attempt succeeded."""
    info = _record()
    if info.attempt <= fail_times:
        raise RuntimeError(f"flaky attempt {info.attempt}")
    return {"attempt": info.attempt}


@df.activity
def act_always_fails() -> None:
    _record()
    raise RuntimeError("boom")


@df.activity(
    retry=df.RetryPolicy(
        initial_interval=0.01, maximum_attempts=5, non_retryable_error_types=["ValueError"]
    )
)
def act_bad_value() -> None:
    _record()
    raise ValueError("bad value 42")


@df.activity(retry=df.RetryPolicy(maximum_attempts=1))
def act_strict(fail_times: int) -> dict:
    """Like act_flaky, but its own policy allows one attempt only."""
    info = _record()
    if info.attempt <= fail_times:
        raise RuntimeError(f"strict attempt {info.attempt}")
    return {"attempt": info.attempt}


@df.activity
async def act_hang() -> None:
    """Never returns on its own; a timeout cancels it."""
    _record()
    await asyncio.Event().wait()


@df.activity(start_to_close_timeout="150ms", retry=df.RetryPolicy(maximum_attempts=1))
async def act_hang_with_default_timeout() -> None:
    _record()
    await asyncio.Event().wait()


_gates: dict[str, threading.Event] = {}


@df.activity
def act_sync_silent(key: str) -> str:
    """Blocks without heartbeating until the test opens its gate (a sync attempt cannot be
    interrupted)."""
    _record()
    _gates[key].wait(30)
    return "finished late"


@df.activity
async def act_async_silent() -> None:
    _record()
    await asyncio.sleep(30)


class Lockstep:
    """An activity and a test taking turns: the activity heartbeats and says so, the test
    moves the stepped clock and lets it go on."""

    def __init__(self) -> None:
        self.beaten = threading.Semaphore(0)
        self.go = threading.Semaphore(0)

    def beat(self, n: int) -> None:
        df.heartbeat({"beats": n})  # queued at the partition before the test hears of it
        self.beaten.release()


_lockstep: dict[str, Lockstep] = {}


@df.activity
def act_heartbeating(key: str, beats: int) -> int:
    """Heartbeats ``beats`` times, each after the test moved the clock; returns the count."""
    _record()
    steps = _lockstep[key]
    for n in range(1, beats + 1):
        steps.beat(n)
        if not steps.go.acquire(timeout=30):
            raise TimeoutError("the test never let this activity go on")
    return beats


@df.activity
async def act_async_heartbeating(key: str, beats: int) -> int:
    _record()
    steps = _lockstep[key]
    for n in range(1, beats + 1):
        steps.beat(n)
        if not await asyncio.to_thread(steps.go.acquire, True, 30):
            raise TimeoutError("the test never let this activity go on")
    return beats


@df.activity
def act_resume_after_error() -> dict:
    """Attempt 1 reports progress, then crashes; later attempts resume from that progress."""
    info = _record()
    if info.attempt == 1:
        df.heartbeat({"done": 3})
        raise RuntimeError("crashed after item 3")
    return {"attempt": info.attempt, "resumed_from": info.heartbeat_details}


@df.activity
async def act_resume_after_silence() -> dict:
    """Attempt 1 reports progress, then goes silent until its heartbeat timeout."""
    info = _record()
    if info.attempt == 1:
        df.heartbeat({"step": 7})
        await asyncio.sleep(30)
    return {"attempt": info.attempt, "resumed_from": info.heartbeat_details}


@df.activity
def act_whoami(fail_times: int) -> dict:
    info = _record()
    if info.attempt <= fail_times:
        raise RuntimeError(f"not yet ({info.attempt})")
    return {
        "activity": info.activity,
        "workflow_id": info.workflow_id,
        "run_id": info.run_id,
        "seq": info.seq,
        "attempt": info.attempt,
    }


ACTIVITIES = {
    fn.__name__: fn
    for fn in (
        act_flaky,
        act_always_fails,
        act_bad_value,
        act_strict,
        act_hang,
        act_hang_with_default_timeout,
        act_sync_silent,
        act_async_silent,
        act_heartbeating,
        act_async_heartbeating,
        act_resume_after_error,
        act_resume_after_silence,
        act_whoami,
    )
}


# -- workflows --------------------------------------------------------------------------------


@df.workflow
async def act_wf_shape(ctx: df.WorkflowContext, order: dict) -> dict:
    return await ctx.activity(act_shape, order)


@df.workflow
async def act_wf_mixed(ctx: df.WorkflowContext, x: int) -> list[int]:
    tripled = await ctx.activity(act_sync_triple, x)
    doubled = await ctx.activity(act_async_double, tripled)
    return [tripled, doubled]


@df.workflow
async def act_wf_gather(ctx: df.WorkflowContext, n: int) -> list[int]:
    return list(await asyncio.gather(*(ctx.activity(act_barrier, i) for i in range(n))))


@df.workflow
async def act_wf_gather_mixed(ctx: df.WorkflowContext) -> list[int]:
    calls = [ctx.activity(act_async_barrier, i) for i in range(3)]
    calls += [ctx.activity(act_sync_triple, i) for i in range(3)]
    return list(await asyncio.gather(*calls))


@df.workflow
async def act_wf_run(
    ctx: df.WorkflowContext, name: str, args: list, options: dict, catch: bool
) -> dict:
    """Run activity ``name`` with per-call ``options``; report its ActivityError if ``catch``."""
    overrides = dict(options)
    if "retry" in overrides:
        overrides["retry"] = df.RetryPolicy(**overrides["retry"])
    started = ctx.time()
    try:
        result = await ctx.activity(ACTIVITIES[name], *args, **overrides)
    except df.ActivityError as exc:
        if not catch:
            raise
        return {
            "error": {
                "type": type(exc).__name__,
                "activity": exc.activity,
                "cause_type": exc.cause_type,
                "cause_message": exc.cause_message,
                "attempts": exc.attempts,
            },
            "elapsed": ctx.time() - started,
        }
    return {"ok": result, "elapsed": ctx.time() - started}


def start_activity(
    client: df.Client,
    name: str,
    *args: Any,
    catch: bool = True,
    workflow_id: str | None = None,
    **options: Any,
) -> df.WorkflowHandle:
    """Start act_wf_run with activity ``name``; returns its handle."""
    wid = workflow_id or new_id(name)
    return client.start(act_wf_run, name, list(args), options, catch, workflow_id=wid)


def run_activity(client: df.Client, name: str, *args: Any, **options: Any) -> tuple[str, dict]:
    """Run activity ``name`` in act_wf_run; returns (workflow ID, the workflow's result)."""
    handle = start_activity(client, name, *args, **options)
    return handle.workflow_id, handle.result(timeout=30)


def wait_for_attempts(workflow_id: str, count: int) -> None:
    """Until ``count`` attempts of the workflow's activity have started running."""
    deadline = time.monotonic() + 30
    while len(seen(workflow_id)) < count:
        assert time.monotonic() < deadline, f"attempts seen: {seen(workflow_id)}"
        time.sleep(0.005)


def pending(handle: df.WorkflowHandle) -> list[str]:
    return handle.describe().pending_activities


FAST_RETRY = {"initial_interval": 0.01, "backoff_coefficient": 1.0}


# -- results, sync and async, concurrency ------------------------------------------------------


# In-process only. Ray path: results of Ray-task activities: test_ray_core's
# test_activities_run_as_ray_tasks_with_retries_and_activity_errors and
# test_a_hundred_workflows_with_ray_task_activities.
@pytest.mark.parametrize("runtime", ["local"])
def test_activity_result_flows_back_to_workflow_and_caller(any_client: df.Client) -> None:
    order = {
        "id": "o-1",
        "items": [{"sku": "b", "qty": 2, "price": 5}, {"sku": "a", "qty": 1, "price": 7}],
    }

    result = any_client.execute(act_wf_shape, order, timeout=30)

    expected = {
        "id": "o-1",
        "skus": ["a", "b"],
        "total": 17,
        "nested": {"flags": [True, False, None], "bytes": b"\x00\x01"},
    }
    assert expected == result


# In-process only. Ray path: sync and async activities as Ray tasks: test_ray_core's
# test_activities_run_as_ray_tasks_with_retries_and_activity_errors and
# test_async_and_inline_activities_run_where_declared.
@pytest.mark.parametrize("runtime", ["local"])
def test_sync_and_async_activities_both_run(any_client: df.Client, data_dir: Path) -> None:
    handle = any_client.start(act_wf_mixed, 7, workflow_id=new_id("mixed"))

    assert [21, 42] == handle.result(timeout=30)
    events = history(data_dir, handle.workflow_id)
    completed = [e.activity for e in events if type(e).__name__ == "ActivityCompleted"]
    assert ["act_sync_triple", "act_async_double"] == completed


def test_gather_runs_activities_concurrently(client: df.Client) -> None:
    # The barrier only opens when all 4 sync activities are inside it at once, so the
    # workflow can only finish if gather dispatched them concurrently.
    wid = new_id("gather")
    _barriers[wid] = threading.Barrier(4, timeout=10)

    assert [0, 10, 20, 30] == client.execute(act_wf_gather, 4, workflow_id=wid, timeout=30)


def test_gather_of_async_and_sync_activities_keeps_argument_order(client: df.Client) -> None:
    wid = new_id("gather-mixed")

    result = client.execute(act_wf_gather_mixed, workflow_id=wid, timeout=30)

    assert [0, 100, 200, 0, 3, 6] == result
    assert 3 == len(seen(wid))


# -- retry policy -----------------------------------------------------------------------------


def test_retry_waits_follow_initial_interval_backoff_and_maximum(
    skipping_env: WorkflowEnvironment, data_dir: Path
) -> None:
    retry = {
        "initial_interval": "1m",
        "backoff_coefficient": 2.0,
        "maximum_interval": "150s",
        "maximum_attempts": 5,
    }

    wid, result = run_activity(skipping_env.client, "act_always_fails", retry=retry)

    assert {
        "type": "ActivityError",
        "activity": "act_always_fails",
        "cause_type": "RuntimeError",
        "cause_message": "boom",
        "attempts": 5,
    } == result["error"]
    attempts = seen(wid)
    assert [1, 2, 3, 4, 5] == [a["attempt"] for a in attempts]
    events = retries(data_dir, wid)
    assert [1, 2, 3, 4] == [e.attempt for e in events]
    assert {"RuntimeError"} == {e.error_type for e in events}
    planned = [(e.next_attempt_at_us - e.at_us) / 1e6 for e in events]
    assert [60.0, 120.0, 150.0, 150.0] == planned
    # each attempt ran (and failed) when its wait was over, not a moment before
    assert [e.next_attempt_at_us for e in events[:-1]] == [e.at_us for e in events[1:]]
    assert sum(planned) == result["elapsed"]


def test_maximum_interval_defaults_to_100_times_initial_interval(
    skipping_env: WorkflowEnvironment, data_dir: Path
) -> None:
    # waits: 1 s, 1*30 = 30 s, then 900 s capped at 100*1 = 100 s
    retry = {"initial_interval": "1s", "backoff_coefficient": 30.0, "maximum_attempts": 4}

    wid, result = run_activity(skipping_env.client, "act_always_fails", retry=retry)

    assert 4 == result["error"]["attempts"]
    planned = [(e.next_attempt_at_us - e.at_us) / 1e6 for e in retries(data_dir, wid)]
    assert [1.0, 30.0, 100.0] == planned
    assert 131.0 == result["elapsed"]


def test_huge_backoff_coefficient_still_stops_at_maximum_attempts(
    client: df.Client, data_dir: Path
) -> None:
    # 0.001 * 1e300 ** 2 overflowed a float in the partition's turn: from the fourth attempt
    # on the activity retried without end (or hung), ignoring maximum_attempts.
    retry = {
        "initial_interval": 0.001,
        "backoff_coefficient": 1e300,
        "maximum_interval": 0.01,
        "maximum_attempts": 5,
    }

    wid, result = run_activity(client, "act_always_fails", retry=retry)

    assert ("RuntimeError", 5) == (result["error"]["cause_type"], result["error"]["attempts"])
    assert [1, 2, 3, 4, 5] == [a["attempt"] for a in seen(wid)]
    planned = [(e.next_attempt_at_us - e.at_us) / 1e6 for e in retries(data_dir, wid)]
    assert [0.001, 0.01, 0.01, 0.01] == pytest.approx(planned, abs=0.002)


def test_flaky_activity_succeeds_on_the_attempt_after_its_failures(
    client: df.Client, data_dir: Path
) -> None:
    wid, result = run_activity(client, "act_flaky", 2, retry={**FAST_RETRY, "maximum_attempts": 5})

    assert {"attempt": 3} == result["ok"]
    assert [1, 2, 3] == [a["attempt"] for a in seen(wid)]
    events = retries(data_dir, wid)
    assert [(1, "flaky attempt 1"), (2, "flaky attempt 2")] == [
        (e.attempt, e.error_message) for e in events
    ]
    assert "act_flaky" == events[0].activity


def test_maximum_attempts_one_means_no_retry(client: df.Client, data_dir: Path) -> None:
    wid, result = run_activity(client, "act_flaky", 1, retry={**FAST_RETRY, "maximum_attempts": 1})

    assert 1 == result["error"]["attempts"]
    assert "flaky attempt 1" == result["error"]["cause_message"]
    assert 1 == len(seen(wid))
    assert [] == retries(data_dir, wid)


def test_non_retryable_error_type_fails_at_once(client: df.Client, data_dir: Path) -> None:
    # act_bad_value's own policy allows 5 attempts but lists ValueError as non-retryable.
    wid, result = run_activity(client, "act_bad_value")

    assert {
        "type": "ActivityError",
        "activity": "act_bad_value",
        "cause_type": "ValueError",
        "cause_message": "bad value 42",
        "attempts": 1,
    } == result["error"]
    assert 1 == len(seen(wid))
    assert [] == retries(data_dir, wid)
    failed = [e for e in history(data_dir, wid) if isinstance(e, ActivityFailed)]
    assert [("act_bad_value", "ValueError", 1)] == [
        (e.activity, e.error_type, e.attempt) for e in failed
    ]


def test_non_retryable_type_given_as_a_bare_string_is_one_name(client: df.Client) -> None:
    # "ValueError" must mean ValueError, not the letters V, a, l, ...
    policy = df.RetryPolicy(non_retryable_error_types="ValueError")
    assert ("ValueError",) == policy.non_retryable_error_types

    retry = {**FAST_RETRY, "maximum_attempts": 3, "non_retryable_error_types": "ValueError"}
    _, result = run_activity(client, "act_bad_value", retry=retry)

    assert ("ValueError", 1) == (result["error"]["cause_type"], result["error"]["attempts"])


def test_non_retryable_types_only_stop_the_named_types(client: df.Client) -> None:
    retry = {**FAST_RETRY, "maximum_attempts": 3, "non_retryable_error_types": ["ValueError"]}

    wid, result = run_activity(client, "act_always_fails", retry=retry)

    assert ("RuntimeError", 3) == (result["error"]["cause_type"], result["error"]["attempts"])
    assert 3 == len(seen(wid))


# -- ActivityError inside and outside the workflow -------------------------------------------


def test_workflow_that_catches_activity_error_sees_its_attributes(client: df.Client) -> None:
    wid, result = run_activity(
        client, "act_always_fails", retry={**FAST_RETRY, "maximum_attempts": 3}
    )

    assert {
        "type": "ActivityError",
        "activity": "act_always_fails",
        "cause_type": "RuntimeError",
        "cause_message": "boom",
        "attempts": 3,
    } == result["error"]
    handle = client.get_handle(wid)
    assert "completed" == handle.describe().status


def test_uncaught_activity_error_fails_the_workflow(client: df.Client) -> None:
    wid = new_id("uncaught")
    handle = client.start(
        act_wf_run,
        "act_always_fails",
        [],
        {"retry": {**FAST_RETRY, "maximum_attempts": 2}},
        False,
        workflow_id=wid,
    )

    with pytest.raises(df.WorkflowFailedError) as caught:
        handle.result(timeout=30)

    error = caught.value
    assert (wid, handle.run_id, "failed", "ActivityError") == (
        error.workflow_id,
        error.run_id,
        error.status,
        error.cause_type,
    )
    assert "'act_always_fails' failed after 2 attempt(s): RuntimeError: boom" in error.cause_message
    description = handle.describe()
    assert ("failed", "ActivityError") == (description.status, description.error_type)
    assert [] == description.pending_activities


# -- timeouts (stepped clock: a hanging attempt times out when the test moves time past it) -------


def test_start_to_close_timeout_fails_each_attempt_with_timeout_error(
    stepped_env: WorkflowEnvironment, data_dir: Path
) -> None:
    env = stepped_env
    handle = start_activity(
        env.client,
        "act_hang",
        start_to_close_timeout="10m",
        retry={"initial_interval": "1m", "maximum_attempts": 2},
    )
    wid = handle.workflow_id
    wait_for_attempts(wid, 1)
    env.advance("9m")
    assert (["act_hang"], []) == (pending(handle), retries(data_dir, wid))  # not early

    env.advance("2m")  # attempt 1 times out at 10 m; attempt 2 starts at 11 m
    wait_for_attempts(wid, 2)
    env.advance("10m")
    result = handle.result(timeout=30)

    error = result["error"]
    assert ("TimeoutError", 2) == (error["cause_type"], error["attempts"])
    assert "start_to_close_timeout of 600.0s elapsed" == error["cause_message"]
    assert [1, 2] == [a["attempt"] for a in seen(wid)]
    assert ["TimeoutError"] == [e.error_type for e in retries(data_dir, wid)]
    assert 21 * 60.0 == result["elapsed"]


def test_activity_default_start_to_close_timeout_applies(stepped_env: WorkflowEnvironment) -> None:
    handle = start_activity(stepped_env.client, "act_hang_with_default_timeout")
    stepped_env.advance("149ms")
    assert ["act_hang_with_default_timeout"] == pending(handle)
    stepped_env.advance("1ms")
    result = handle.result(timeout=30)

    error = result["error"]
    assert ("TimeoutError", 1) == (error["cause_type"], error["attempts"])
    assert "start_to_close_timeout of 0.15s" in error["cause_message"]
    assert 0.15 == pytest.approx(result["elapsed"], abs=1e-6)


def test_schedule_to_close_timeout_ends_a_single_hanging_attempt(
    stepped_env: WorkflowEnvironment,
) -> None:
    handle = start_activity(
        stepped_env.client,
        "act_hang",
        schedule_to_close_timeout="1h",
        retry={**FAST_RETRY, "maximum_attempts": 0},
    )
    stepped_env.advance("59m")
    assert ["act_hang"] == pending(handle)
    stepped_env.advance("1m")
    result = handle.result(timeout=30)

    error = result["error"]
    assert ("TimeoutError", 1) == (error["cause_type"], error["attempts"])
    assert "schedule_to_close_timeout of 3600.0s elapsed" == error["cause_message"]
    assert 3600.0 == result["elapsed"]


def test_schedule_to_close_timeout_bounds_all_retries(
    stepped_env: WorkflowEnvironment, data_dir: Path
) -> None:
    # Unlimited attempts of 10 m each, 1 m apart; only schedule_to_close_timeout can end this:
    # attempts start at 0, 11, 22 and 33 m; the fourth is cut at 35 m.
    handle = start_activity(
        stepped_env.client,
        "act_hang",
        start_to_close_timeout="10m",
        schedule_to_close_timeout="35m",
        retry={"initial_interval": "1m", "backoff_coefficient": 1.0, "maximum_attempts": 0},
    )
    stepped_env.advance("35m")
    result = handle.result(timeout=30)

    error = result["error"]
    assert ("TimeoutError", 4) == (error["cause_type"], error["attempts"])
    assert "schedule_to_close_timeout of 2100.0s elapsed" == error["cause_message"]
    assert 3 * ["TimeoutError"] == [e.error_type for e in retries(data_dir, handle.workflow_id)]
    assert 35 * 60.0 == result["elapsed"]


def test_schedule_to_close_timeout_stops_retries_of_fast_failures(
    skipping_env: WorkflowEnvironment,
) -> None:
    # attempts at 0, 1, ... 5 m; a seventh would start at 6 m, past the 5.5 m deadline
    _, result = run_activity(
        skipping_env.client,
        "act_always_fails",
        schedule_to_close_timeout="5m30s",
        retry={"initial_interval": "1m", "backoff_coefficient": 1.0, "maximum_attempts": 0},
    )

    error = result["error"]
    assert ("RuntimeError", 6) == (error["cause_type"], error["attempts"])
    assert 300.0 == result["elapsed"]


# -- heartbeats (stepped clock) ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["act_heartbeating", "act_async_heartbeating"])
def test_heartbeats_keep_a_long_activity_alive(stepped_env: WorkflowEnvironment, name: str) -> None:
    # 20 minutes under a 5 minute heartbeat timeout: it lives only because it heartbeats.
    wid = new_id(name)
    steps = _lockstep[wid] = Lockstep()
    handle = start_activity(
        stepped_env.client,
        name,
        wid,
        5,
        workflow_id=wid,
        heartbeat_timeout="5m",
        retry={"maximum_attempts": 1},
    )
    for _ in range(5):
        assert steps.beaten.acquire(timeout=30), "the activity did not heartbeat"
        stepped_env.advance("4m")
        steps.go.release()

    assert {"ok": 5, "elapsed": 20 * 60.0} == handle.result(timeout=30)
    assert 1 == len(seen(wid))


def test_silent_activity_fails_with_heartbeat_timeout(
    stepped_env: WorkflowEnvironment, data_dir: Path
) -> None:
    handle = start_activity(
        stepped_env.client,
        "act_async_silent",
        heartbeat_timeout="5m",
        retry={"initial_interval": "1m", "maximum_attempts": 2},
    )
    wait_for_attempts(handle.workflow_id, 1)
    stepped_env.advance("11m")  # silent 5 m, a 1 m wait, silent 5 m again
    result = handle.result(timeout=30)

    error = result["error"]
    assert ("TimeoutError", 2) == (error["cause_type"], error["attempts"])
    assert "no heartbeat within heartbeat_timeout of 300.0s" == error["cause_message"]
    assert 2 == len(seen(handle.workflow_id))
    assert 1 == len(retries(data_dir, handle.workflow_id))
    assert 11 * 60.0 == result["elapsed"]


def test_silent_sync_activity_fails_with_heartbeat_timeout(
    stepped_env: WorkflowEnvironment,
) -> None:
    key = new_id("sync-silent")
    _gates[key] = threading.Event()
    handle = start_activity(
        stepped_env.client,
        "act_sync_silent",
        key,
        heartbeat_timeout="5m",
        retry={"maximum_attempts": 1},
    )
    wait_for_attempts(handle.workflow_id, 1)
    stepped_env.advance("5m")
    try:
        result = handle.result(timeout=30)  # while the attempt still blocks in its thread
    finally:
        _gates[key].set()

    error = result["error"]
    assert ("TimeoutError", 1) == (error["cause_type"], error["attempts"])
    assert "heartbeat_timeout" in error["cause_message"]
    assert 300.0 == result["elapsed"]


def test_heartbeat_details_reach_the_attempt_after_an_error(client: df.Client) -> None:
    wid, result = run_activity(
        client, "act_resume_after_error", retry={**FAST_RETRY, "maximum_attempts": 3}
    )

    assert {"attempt": 2, "resumed_from": {"done": 3}} == result["ok"]
    assert [None, {"done": 3}] == [a["details"] for a in seen(wid)]


def test_heartbeat_details_reach_the_attempt_after_a_heartbeat_timeout(
    stepped_env: WorkflowEnvironment,
) -> None:
    handle = start_activity(
        stepped_env.client,
        "act_resume_after_silence",
        heartbeat_timeout="5m",
        retry={"initial_interval": "1m", "maximum_attempts": 3},
    )
    wait_for_attempts(handle.workflow_id, 1)  # it heartbeat its progress, then went silent
    stepped_env.advance("6m")

    assert {"attempt": 2, "resumed_from": {"step": 7}} == handle.result(timeout=30)["ok"]


def test_heartbeat_and_activity_info_outside_an_activity_raise() -> None:
    with pytest.raises(RuntimeError, match="inside an activity"):
        df.heartbeat({"x": 1})
    with pytest.raises(RuntimeError, match="inside an activity"):
        df.activity_info()


# -- activity_info and per-call overrides ----------------------------------------------------


def test_activity_info_reports_attempt_numbers_and_identity(client: df.Client) -> None:
    wid = new_id("whoami")
    handle = client.start(
        act_wf_run,
        "act_whoami",
        [2],
        {"retry": {**FAST_RETRY, "maximum_attempts": 5}},
        True,
        workflow_id=wid,
    )

    result = handle.result(timeout=30)

    assert {
        "activity": "act_whoami",
        "workflow_id": wid,
        "run_id": handle.run_id,
        "seq": 1,
        "attempt": 3,
    } == result["ok"]
    assert [1, 2, 3] == [a["attempt"] for a in seen(wid)]


def test_per_call_retry_overrides_the_activity_policy(client: df.Client) -> None:
    # act_strict's own policy: 1 attempt.
    wid_default, with_default = run_activity(client, "act_strict", 2)
    wid_override, with_override = run_activity(
        client, "act_strict", 2, retry={**FAST_RETRY, "maximum_attempts": 3}
    )

    assert 1 == with_default["error"]["attempts"]
    assert 1 == len(seen(wid_default))
    assert {"attempt": 3} == with_override["ok"]
    assert 3 == len(seen(wid_override))


def test_per_call_start_to_close_timeout_accepts_duration_strings(
    stepped_env: WorkflowEnvironment,
) -> None:
    handle = start_activity(
        stepped_env.client,
        "act_hang",
        start_to_close_timeout="100ms",
        retry={"maximum_attempts": 1},
    )
    stepped_env.advance("100ms")

    assert (
        "start_to_close_timeout of 0.1s elapsed"
        == handle.result(timeout=30)["error"]["cause_message"]
    )


def test_per_call_timeout_overrides_the_activity_default(stepped_env: WorkflowEnvironment) -> None:
    # act_hang_with_default_timeout has 150ms of its own; the call asks for 50ms.
    handle = start_activity(
        stepped_env.client, "act_hang_with_default_timeout", start_to_close_timeout=0.05
    )
    stepped_env.advance("50ms")
    result = handle.result(timeout=30)

    assert "start_to_close_timeout of 0.05s elapsed" == result["error"]["cause_message"]
    assert 0.05 == pytest.approx(result["elapsed"], abs=1e-6)


# -- history -----------------------------------------------------------------------------------


def test_history_records_each_retry_and_describe_counts_the_events(
    client: df.Client, data_dir: Path
) -> None:
    wid, result = run_activity(client, "act_flaky", 3, retry={**FAST_RETRY, "maximum_attempts": 5})

    assert {"attempt": 4} == result["ok"]
    events = history(data_dir, wid)
    types = [type(e).__name__ for e in events]
    assert [
        "WorkflowStarted",
        "ActivityScheduled",
        "ActivityRetry",
        "ActivityRetry",
        "ActivityRetry",
        "ActivityCompleted",
        "WorkflowCompleted",
    ] == types
    assert list(range(1, len(events) + 1)) == [e.event_id for e in events]
    assert len(events) == client.get_handle(wid).describe().history_length
    # the event type column says what the body says
    for path in (data_dir / "partitions").glob("p*.sqlite"):
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(
                "SELECT event_type FROM workflow_history WHERE workflow_id = ? "
                "AND event_type = 'workflow.step.retry'",
                (wid,),
            ).fetchall()
        finally:
            conn.close()
        if rows:
            assert 3 == len(rows)
            break
    else:
        pytest.fail("no workflow.step.retry rows found in any partition file")
