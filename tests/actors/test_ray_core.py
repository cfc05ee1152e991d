"""The core paths on the Ray runtime: partitions in two Ray actors, activities as Ray tasks.

What the in-process suite checks with shared Python state (counters, events) is checked here
across processes: activities write what they saw to small files in a "board" directory that
the test reads (activities run in Ray workers, inline ones in the partition actors). The
workflows and activities live in this importable module (``tests.actors.test_ray_core``), so
the partition actors and Ray workers import them by ``module:qualname``, as they would an app.

Each test starts its own two partition actors (about a second); tests therefore group several
checks on one engine. Their engines run without the archive: these tests are about partition
actors and Ray tasks, and the archive's consumer actor (which costs each engine another second
and a half to start and to stop) is tested on Ray in tests/cdc. Names start with ``rc_`` (the
registry is global).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import ray

import duraflow as df
from duraflow.cdc.events import ActivityRetry, decode_event

T = TypeVar("T")

THIS_MODULE = "tests.actors.test_ray_core"
RAY_ARCHIVE = False  # conftest's ray_engine without the archive (see the docstring)
FAST = {"initial_interval": 0.01, "backoff_coefficient": 1.0}

# -- the board: what activities in other processes tell the test -----------------------------


def note(board: str, key: str, label: str) -> None:
    """Append ``label`` to ``key``'s log (one short O_APPEND write: atomic across processes)."""
    with open(os.path.join(board, f"{key}.log"), "a") as f:
        f.write(label + "\n")


def notes(board: str | Path, key: str) -> collections.Counter[str]:
    path = Path(board, f"{key}.log")
    if not path.exists():
        return collections.Counter()
    return collections.Counter(path.read_text().splitlines())


def open_gate(board: str | Path, key: str) -> None:
    Path(board, f"{key}.gate").touch()


@contextlib.contextmanager
def locked_state(board: str, key: str) -> Iterator[dict[str, Any]]:
    """A JSON dict shared by processes, under an flock on a side file."""
    path = Path(board, f"{key}.json")
    with open(Path(board, f"{key}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(path.read_text()) if path.exists() else {}
            yield state
            path.write_text(json.dumps(state))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    what: str = "condition",
    seen: Callable[[], object] | None = None,
) -> T:
    """``predicate``'s first truthy value; on timeout, the error shows ``seen()`` (the
    board's notes, say) so that a failure says what did happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = "" if seen is None else f"; saw {seen()!r}"
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{shown}")
        time.sleep(0.02)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def history(data_dir: Path, workflow_id: str) -> list[Any]:
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


def partition_pids(client: df.Client) -> set[int]:
    return {s["pid"] for s in client._host.statuses()}  # type: ignore[attr-defined]


@pytest.fixture
def board(tmp_path: Path) -> str:
    path = tmp_path / "board"
    path.mkdir()
    return str(path)


# -- activities (Ray tasks unless inline) ------------------------------------------------------


@df.activity(num_cpus=0.25)
def rc_note(board: str, key: str, label: str) -> str:
    note(board, key, label)
    return label + "!"


@df.activity
def rc_double(x: int) -> int:
    return 2 * x


@df.activity(inline=True)
def rc_double_inline(x: int) -> int:
    return 2 * x


@df.activity(num_cpus=0.25)
def rc_flaky(board: str, fail_times: int) -> dict[str, Any]:
    info = df.activity_info()
    note(board, info.workflow_id, f"attempt {info.attempt}")
    if info.attempt <= fail_times:
        raise RuntimeError(f"flaky attempt {info.attempt}")
    return {"attempt": info.attempt, "pid": os.getpid()}


class RcOrderError(Exception):
    """A user error class from an importable module: its name is what history records."""


@df.activity(num_cpus=0.25, retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=5))
def rc_custom_error(board: str) -> None:
    note(board, df.activity_info().workflow_id, "custom")
    raise RcOrderError("order 7 has no items")


@df.activity(
    num_cpus=0.25,
    retry=df.RetryPolicy(
        initial_interval=0.01, maximum_attempts=5, non_retryable_error_types=["ValueError"]
    ),
)
def rc_bad_value(board: str) -> None:
    note(board, df.activity_info().workflow_id, "bad value")
    raise ValueError("bad value 42")


@df.activity(num_cpus=0.25)
def rc_sleeper(board: str, key: str, seconds: float) -> str:
    """Sleeps without heartbeating; notes whether it finished or was interrupted (ray.cancel).

    Also notes its process and SIGINT handler: ray.cancel interrupts a task through
    ``_thread.interrupt_main``, which does nothing where SIGINT is not Python's handler."""
    note(board, key, "started")
    handler = signal.getsignal(signal.SIGINT)
    note(board, key, f"pid {os.getpid()} sigint {getattr(handler, '__name__', handler)}")
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.02)
    except BaseException as exc:
        note(board, key, f"interrupted {type(exc).__name__}")
        raise
    note(board, key, "finished")
    return "finished"


@df.activity(num_cpus=0.25)
async def rc_async_sleeper(board: str, key: str, seconds: float) -> str:
    note(board, key, "started")
    try:
        await asyncio.sleep(seconds)
    except BaseException as exc:
        note(board, key, f"interrupted {type(exc).__name__}")
        raise
    note(board, key, "finished")
    return "finished"


@df.activity(num_cpus=0.25)
def rc_gate(board: str, key: str) -> str:
    """Waits for the test to open the gate ``key``; notes an interruption."""
    note(board, key, "gate started")
    try:
        gate = Path(board, f"{key}.gate")
        deadline = time.monotonic() + 30
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    except BaseException as exc:
        note(board, key, f"gate interrupted {type(exc).__name__}")
        raise
    note(board, key, "gate finished")
    return "opened"


@df.activity(num_cpus=0.25)
def rc_heartbeating(board: str, total: float, every: float) -> dict[str, Any]:
    """Runs ``total`` seconds, heartbeating every ``every``; returns the beats and its pid."""
    info = df.activity_info()
    note(board, info.workflow_id, f"attempt {info.attempt}")
    beats = 0
    end = time.monotonic() + total
    while time.monotonic() < end:
        beats += 1
        df.heartbeat({"beats": beats})
        time.sleep(every)
    return {"beats": beats, "pid": os.getpid()}


@df.activity(num_cpus=0.25)
async def rc_async_heartbeating(board: str, total: float, every: float) -> dict[str, Any]:
    info = df.activity_info()
    note(board, info.workflow_id, f"attempt {info.attempt}")
    beats = 0
    end = time.monotonic() + total
    while time.monotonic() < end:
        beats += 1
        df.heartbeat({"beats": beats})
        await asyncio.sleep(every)
    return {"beats": beats, "pid": os.getpid()}


@df.activity(num_cpus=0.25)
def rc_resume_after_error(board: str) -> dict[str, Any]:
    """Attempt 1 reports progress, then crashes; attempt 2 starts from that progress."""
    info = df.activity_info()
    note(board, info.workflow_id, f"attempt {info.attempt}")
    if info.attempt == 1:
        df.heartbeat({"done": 3})
        raise RuntimeError("crashed after item 3")
    return {"attempt": info.attempt, "resumed_from": info.heartbeat_details}


@df.activity(num_cpus=0.25)
def rc_resume_after_silence(board: str) -> dict[str, Any]:
    """Attempt 1 reports progress, then goes silent until the heartbeat timeout ends it."""
    info = df.activity_info()
    note(board, info.workflow_id, f"attempt {info.attempt}")
    if info.attempt == 1:
        df.heartbeat({"step": 7})
        try:  # short sleeps: ray.cancel interrupts Python code, not a long blocking call
            for _ in range(1500):
                time.sleep(0.02)
        except BaseException as exc:
            note(board, info.workflow_id, f"silent attempt interrupted {type(exc).__name__}")
            raise
    return {"attempt": info.attempt, "resumed_from": info.heartbeat_details}


@df.activity(num_cpus=0.25)
async def rc_where_async() -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"pid": os.getpid(), "in_loop": asyncio.get_running_loop() is not None}


@df.activity(inline=True)
async def rc_where_inline_async() -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"pid": os.getpid(), "module": sys.modules[THIS_MODULE].__file__}


@df.activity(inline=True)
def rc_where_inline() -> dict[str, Any]:
    return {"pid": os.getpid(), "module": sys.modules[THIS_MODULE].__file__}


@df.activity(num_cpus=0.5, resources={"gadget": 1})
def rc_gadget() -> dict[str, float]:
    return dict(ray.get_runtime_context().get_assigned_resources())


GADGETS = 4
HOLD_S = 2.5
"""How long the gadget holders keep theirs once all are taken: longer than GADGET_HEARTBEAT_S,
so the one left waiting waits longer than its heartbeat timeout."""
GADGET_HEARTBEAT_S = 2.0
"""The holders heartbeat every 50 ms: a timeout 40 times that survives a loaded machine."""
STAMP_TIMEOUT_S = 1.5
HOG_S = 3.5
"""The hog holds every gadget 2 s longer than STAMP_TIMEOUT_S (the stamp waits about that
long: the 2 s cover noticing that the hog holds them on a loaded machine)."""


@df.activity(num_cpus=0.25, resources={"gadget": 1})
def rc_gadget_hold(board: str, key: str, total: int) -> dict[str, Any]:
    """Holds one gadget until all ``total`` siblings are in, or for HOLD_S once all gadgets
    are taken; records the most that were ever in at once. Five need only 1.25 CPUs, so the
    gadget units are what limits them. Heartbeats while it holds (see rc_gadgets)."""
    with locked_state(board, key) as state:
        state["now"] = state.get("now", 0) + 1
        state["entered"] = state.get("entered", 0) + 1
        state["max"] = max(state.get("max", 0), state["now"])
        if state["now"] >= GADGETS and "full_at" not in state:
            state["full_at"] = time.time()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with locked_state(board, key) as state:
            if state["entered"] >= total:
                break
            if "full_at" in state and time.time() - state["full_at"] > HOLD_S:
                break
        df.heartbeat()
        time.sleep(0.05)
    with locked_state(board, key) as state:
        state["now"] -= 1
    return dict(ray.get_runtime_context().get_assigned_resources())


@df.activity(num_cpus=0.25, resources={"gadget": GADGETS})
def rc_gadget_hog(board: str, key: str, seconds: float) -> float:
    """Holds every gadget for ``seconds``; returns when it let go (wall clock)."""
    note(board, key, "hog holds every gadget")
    time.sleep(seconds)
    return time.time()


@df.activity(inline=True)
def rc_wait_for_note(board: str, key: str, label: str) -> None:
    """Returns once ``label`` is on the board (what another activity has done)."""
    wait_until(lambda: notes(board, key)[label], timeout=60, what=label)


@df.activity(num_cpus=0.25, resources={"gadget": 1})
def rc_gadget_stamp() -> float:
    """Returns when it started (wall clock)."""
    return time.time()


ACTIVITIES = {
    fn.__name__: fn
    for fn in (
        rc_flaky,
        rc_custom_error,
        rc_bad_value,
        rc_sleeper,
        rc_async_sleeper,
        rc_heartbeating,
        rc_async_heartbeating,
        rc_resume_after_error,
        rc_resume_after_silence,
    )
}

# -- workflows -----------------------------------------------------------------------------------


@df.workflow
async def rc_run(
    ctx: df.WorkflowContext, name: str, args: list, options: dict, catch: bool
) -> dict[str, Any]:
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
            "error": [exc.activity, exc.cause_type, exc.cause_message, exc.attempts],
            "elapsed": ctx.time() - started,
        }
    return {"ok": result, "elapsed": ctx.time() - started}


@df.workflow
async def rc_cancellable(ctx: df.WorkflowContext, board: str, key: str) -> str:
    try:
        return await ctx.activity(rc_gate, board, key)
    except asyncio.CancelledError:
        await ctx.activity(rc_note, board, key, "cleanup")
        raise


@df.workflow
async def rc_terminable(ctx: df.WorkflowContext, board: str, key: str) -> str:
    try:
        await ctx.activity(rc_note, board, key, "before")
        await ctx.activity(rc_gate, board, key)
        await ctx.activity(rc_note, board, key, "after")
    except asyncio.CancelledError:
        await ctx.activity(rc_note, board, key, "cleanup")
        raise
    finally:
        await ctx.activity(rc_note, board, key, "finally")
    return "finished"


@df.workflow
async def rc_signals_and_queries(ctx: df.WorkflowContext) -> dict[str, Any]:
    state: dict[str, Any] = {"items": [], "total": 0}
    ctx.set_query_handler("state", lambda: dict(state))
    ctx.set_query_handler("plus", lambda n: state["total"] + n)
    while True:
        value = await ctx.wait_for_signal("add")
        if value is None:
            return state
        state["items"].append(value)
        state["total"] += value


@df.workflow
async def rc_midway(ctx: df.WorkflowContext, board: str, key: str) -> dict[str, Any]:
    """Activities, a gather, a signal wait, a durable timer and deterministic values, with a
    "phase" query to see where it is parked."""
    phase = "starting"
    ctx.set_query_handler("phase", lambda: phase)
    drawn = {"random": ctx.random(), "uuid": str(ctx.uuid4()), "now": ctx.now().isoformat()}
    ctx.set_query_handler("drawn", lambda: drawn)
    a = await ctx.activity(rc_note, board, key, "a")
    gathered = await asyncio.gather(
        ctx.activity(rc_note, board, key, "g1"), ctx.activity(rc_note, board, key, "g2")
    )
    phase = "waiting"
    go = await ctx.wait_for_signal("go")
    phase = "sleeping"
    await asyncio.sleep(go)
    b = await ctx.activity(rc_note, board, key, "b")
    phase = "done"
    return {"steps": [a, *gathered, b], "drawn": drawn, "after": str(ctx.uuid4())}


@df.workflow
async def rc_child_waits(ctx: df.WorkflowContext, board: str, key: str) -> str:
    await ctx.activity(rc_note, board, key, "child")
    return "child got " + await ctx.wait_for_signal("go")


@df.workflow
async def rc_parent(ctx: df.WorkflowContext, board: str, key: str) -> list[str]:
    phase = "starting"
    ctx.set_query_handler("phase", lambda: phase)
    first = await ctx.activity(rc_note, board, key, "parent")
    child = await ctx.start_child(rc_child_waits, board, key, workflow_id=f"{key}-child")
    phase = "waiting for child"
    return [first, await child.result()]


@df.workflow
async def rc_square_child(ctx: df.WorkflowContext, i: int) -> dict[str, int]:
    return {"value": await ctx.activity(rc_double, i) * i // 2, "pid": os.getpid()}


@df.workflow
async def rc_fanout(ctx: df.WorkflowContext, n: int) -> dict[str, Any]:
    handles = [await ctx.start_child(rc_square_child, i) for i in range(n)]
    results = await asyncio.gather(*(h.result() for h in handles))
    return {
        "sum": sum(r["value"] for r in results),
        "ids": [h.workflow_id for h in handles],
        "child_pids": sorted({r["pid"] for r in results}),
        "parent_pid": os.getpid(),
    }


@df.workflow
async def rc_many_inline(ctx: df.WorkflowContext, i: int) -> int:
    return await ctx.activity(rc_double_inline, i)


@df.workflow
async def rc_many_tasks(ctx: df.WorkflowContext, i: int) -> int:
    return await ctx.activity(rc_double, i)


@df.workflow
async def rc_where(ctx: df.WorkflowContext) -> dict[str, Any]:
    task, inline_async, inline_sync = await asyncio.gather(
        ctx.activity(rc_where_async),
        ctx.activity(rc_where_inline_async),
        ctx.activity(rc_where_inline),
    )
    return {
        "task": task,
        "inline_async": inline_async,
        "inline_sync": inline_sync,
        "workflow_pid": os.getpid(),
    }


@df.workflow
async def rc_gadgets(ctx: df.WorkflowContext, board: str, key: str, n: int) -> dict[str, Any]:
    # The one that waits for a gadget waits longer than its heartbeat timeout: waiting to run
    # does not count, only silence once it runs (a single attempt, so a timeout would show).
    options = {
        "heartbeat_timeout": GADGET_HEARTBEAT_S,
        "retry": df.RetryPolicy(maximum_attempts=1),
    }
    held = await asyncio.gather(
        *(ctx.activity(rc_gadget_hold, board, key, n, **options) for _ in range(n))
    )
    single = await ctx.activity(rc_gadget)
    # start_to_close counts from the start too: an attempt that waits for the hog to let go
    # of every gadget, longer than its start_to_close_timeout, still gets its full time to run
    hog = asyncio.ensure_future(ctx.activity(rc_gadget_hog, board, key, HOG_S))
    await ctx.activity(rc_wait_for_note, board, key, "hog holds every gadget")
    submitted = ctx.time()
    stamp = ctx.activity(
        rc_gadget_stamp,
        start_to_close_timeout=STAMP_TIMEOUT_S,
        retry=df.RetryPolicy(maximum_attempts=1),
    )
    released, started = await asyncio.gather(hog, stamp)
    return {
        "held": list(held),
        "single": single,
        "waited": started - submitted,
        "after_release": started - released,
    }


@df.workflow
async def rc_keeper(ctx: df.WorkflowContext) -> list[Any]:
    items: list[Any] = []
    ctx.set_query_handler("items", lambda: list(items))
    ctx.set_query_handler("fails", lambda: 1 / 0)
    ctx.set_query_handler("unencodable", lambda: object())
    while True:
        item = await ctx.wait_for_signal("item")
        if item is None:
            return items
        items.append(item)


@df.workflow
async def rc_echo(ctx: df.WorkflowContext, value: Any) -> Any:
    return value


@df.workflow
async def rc_returns_object(ctx: df.WorkflowContext) -> Any:
    return object()


@df.workflow
async def rc_raises(ctx: df.WorkflowContext) -> None:
    raise RcOrderError("workflow says no")


@df.activity(num_cpus=0.25, retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=5))
def rc_returns_object_activity() -> Any:
    return object()


@df.workflow
async def rc_bad_children_and_activities(ctx: df.WorkflowContext) -> dict[str, Any]:
    """Errors raised inside a partition actor, caught by workflow code."""
    out: dict[str, Any] = {}
    try:
        await ctx.start_child(rc_echo, 1, workflow_id="a\x00b")
    except df.InvalidWorkflowId as exc:
        out["child_id"] = f"{type(exc).__name__}: {exc}"
    try:
        await ctx.start_child("rc_no_such_child_type")
    except df.UnknownWorkflowType as exc:
        out["child_type"] = f"{type(exc).__name__}: {exc}"
    try:
        await ctx.activity(rc_note, object(), "k", "l")
    except df.PayloadError as exc:
        out["activity_arg"] = f"{type(exc).__name__}: {exc}"
    try:
        await ctx.activity(rc_returns_object_activity)
    except df.ActivityError as exc:
        out["activity_result"] = [exc.cause_type, exc.attempts, exc.cause_message]
    try:
        await ctx.activity(rc_double, 1, start_to_close_timeout="soon")
    except df.InvalidDuration as exc:
        out["duration"] = f"{type(exc).__name__}: {exc}"
    return out


# -- start, results, activities: retries, errors, timeouts ---------------------------------------


def test_activities_run_as_ray_tasks_with_retries_and_activity_errors(
    ray_client: df.Client, board: str, data_dir: Path
) -> None:
    client = ray_client
    flaky = client.start(rc_run, "rc_flaky", [board, 2], {"retry": FAST}, True)
    custom = client.start(rc_run, "rc_custom_error", [board], {}, True)
    bad_value = client.start(rc_run, "rc_bad_value", [board], {}, True)
    uncaught = client.start(
        rc_run, "rc_flaky", [board, 5], {"retry": {**FAST, "maximum_attempts": 2}}, False
    )

    result = flaky.result(timeout=30)
    assert 3 == result["ok"]["attempt"]
    assert result["ok"]["pid"] not in partition_pids(client)  # a Ray worker, not the actor
    assert {"attempt 1": 1, "attempt 2": 1, "attempt 3": 1} == notes(board, flaky.workflow_id)
    retried = [e for e in history(data_dir, flaky.workflow_id) if isinstance(e, ActivityRetry)]
    assert [1, 2] == [e.attempt for e in retried]  # the attempts that failed

    assert ["rc_custom_error", "RcOrderError", "order 7 has no items", 5] == custom.result(
        timeout=30
    )["error"]
    assert 5 == notes(board, custom.workflow_id)["custom"]

    assert ["rc_bad_value", "ValueError", "bad value 42", 1] == bad_value.result(timeout=30)[
        "error"
    ]
    assert 1 == notes(board, bad_value.workflow_id)["bad value"]  # non-retryable: no retry

    with pytest.raises(df.WorkflowFailedError) as caught:
        uncaught.result(timeout=30)
    assert ("failed", "ActivityError") == (caught.value.status, caught.value.cause_type)
    assert "after 2 attempt(s): RuntimeError: flaky attempt 2" in caught.value.cause_message
    assert "failed" == uncaught.describe().status


@pytest.mark.parametrize("name", ["rc_sleeper", "rc_async_sleeper"], ids=["sync", "async"])
def test_start_to_close_timeout_cancels_the_ray_task(
    ray_client: df.Client, board: str, name: str
) -> None:
    key = new_id(name)
    retry = {**FAST, "maximum_attempts": 2}
    handle = ray_client.start(
        rc_run,
        name,
        [board, key, 120.0],
        {"start_to_close_timeout": 0.5, "retry": retry},
        True,
        workflow_id=key,
    )

    result = handle.result(timeout=60)

    assert ["TimeoutError", 2] == [result["error"][1], result["error"][3]]
    assert "start_to_close_timeout of 0.5s elapsed" in result["error"][2]
    assert result["elapsed"] < 60  # cut short: each attempt would run 120 s
    # ray.cancel reached both attempts: each noted its interruption, neither finished
    seen = wait_until(
        lambda: (
            (n := notes(board, key))["started"] == 2
            and sum(c for label, c in n.items() if label.startswith("interrupted")) == 2
            and n
        ),
        what="both attempts interrupted",
        seen=lambda: notes(board, key),
    )
    assert 0 == seen["finished"]


# -- heartbeats ----------------------------------------------------------------------------------


RAY_HEARTBEAT_TIMEOUT_S = 3.0
"""Heartbeats every 0.1 s under a 3 s timeout: only a 3 s stall on a loaded machine could
time them out (how heartbeats keep an activity alive is tested exactly on a stepped clock,
in tests/test_activities.py; here, that they travel from Ray tasks)."""


def test_heartbeats_from_ray_tasks_reach_the_partition(ray_client: df.Client, board: str) -> None:
    client = ray_client
    options = {
        "heartbeat_timeout": RAY_HEARTBEAT_TIMEOUT_S,
        "retry": {**FAST, "maximum_attempts": 3},
    }
    # heartbeats keep activities running longer than their heartbeat timeout alive
    alive = [
        client.start(rc_run, name, [board, RAY_HEARTBEAT_TIMEOUT_S + 1.0, 0.1], options, True)
        for name in ("rc_heartbeating", "rc_async_heartbeating")
    ]
    # details of attempt 1 reach attempt 2, after an error and after a heartbeat timeout
    after_error = client.start(rc_run, "rc_resume_after_error", [board], options, True)
    after_silence = client.start(rc_run, "rc_resume_after_silence", [board], options, True)

    for handle in alive:
        result = handle.result(timeout=60)
        # it ran longer than its heartbeat timeout, beating all along (how often depends on
        # the machine's load: a heartbeat from a Ray task is a call to the partition actor)
        assert result["elapsed"] > RAY_HEARTBEAT_TIMEOUT_S and 2 <= result["ok"]["beats"], result
        assert result["ok"]["pid"] not in partition_pids(client)
        assert {"attempt 1": 1} == notes(board, handle.workflow_id)
    assert {"attempt": 2, "resumed_from": {"done": 3}} == after_error.result(timeout=60)["ok"]
    assert {"attempt": 2, "resumed_from": {"step": 7}} == after_silence.result(timeout=60)["ok"]
    # the silent attempt was cancelled (ray.cancel), not left sleeping
    wait_until(
        lambda: any(
            label.startswith("silent attempt interrupted")
            for label in notes(board, after_silence.workflow_id)
        ),
        what="the silent attempt interrupted",
        seen=lambda: notes(board, after_silence.workflow_id),
    )

    silent = client.start(
        rc_run,
        "rc_sleeper",
        [board, new_id("silent"), 20.0],
        {"heartbeat_timeout": 0.5, "retry": {"maximum_attempts": 1}},
        True,
    )
    error = silent.result(timeout=30)["error"]
    assert ["rc_sleeper", "TimeoutError", 1] == [error[0], error[1], error[3]]
    assert "heartbeat_timeout of 0.5s" in error[2]


# -- cancel and terminate ------------------------------------------------------------------------


def test_cancel_and_terminate_stop_the_running_ray_task(ray_client: df.Client, board: str) -> None:
    client = ray_client
    cancelled_key, terminated_key = new_id("rc-cancel"), new_id("rc-terminate")
    cancelled = client.start(rc_cancellable, board, cancelled_key, workflow_id=cancelled_key)
    terminated = client.start(rc_terminable, board, terminated_key, workflow_id=terminated_key)
    for key in (cancelled_key, terminated_key):
        wait_until(lambda k=key: notes(board, k)["gate started"], what=f"{key} gate running")
    assert ["rc_gate"] == cancelled.describe().pending_activities

    cancelled.cancel("stop waiting")
    terminated.terminate("operator said stop")

    with pytest.raises(df.WorkflowCancelledError) as on_cancel:
        cancelled.result(timeout=30)
    assert ("cancelled", "stop waiting") == (on_cancel.value.status, on_cancel.value.cause_message)
    with pytest.raises(df.WorkflowTerminatedError) as on_terminate:
        terminated.result(timeout=30)
    assert "operator said stop" == on_terminate.value.cause_message
    with pytest.raises(df.WorkflowClosed):
        terminated.signal("go")
    # both gate tasks were interrupted by ray.cancel; cancel ran the cleanup, terminate nothing
    for key in (cancelled_key, terminated_key):
        wait_until(
            lambda k=key: notes(board, k)["gate interrupted KeyboardInterrupt"],
            what=f"{key} gate interrupted",
            seen=lambda k=key: notes(board, k),
        )
    time.sleep(0.2)  # time for a (wrongly) scheduled activity to show up
    assert {
        "gate started": 1,
        "gate interrupted KeyboardInterrupt": 1,
        "cleanup": 1,
    } == notes(board, cancelled_key)
    assert {
        "before": 1,
        "gate started": 1,
        "gate interrupted KeyboardInterrupt": 1,
    } == notes(board, terminated_key)
    assert ("cancelled", "terminated") == (
        cancelled.describe().status,
        terminated.describe().status,
    )


# -- signals, queries, describe, list ---------------------------------------------------------


def test_signals_queries_describe_and_list_through_ray(
    ray_client: df.Client, board: str, data_dir: Path
) -> None:
    client = ray_client
    counter = client.start(rc_signals_and_queries, workflow_id=new_id("rc-signals"))
    for value in (1, 2, 3):
        counter.signal("add", value)  # buffered in order, maybe before the code waits
    wait_until(lambda: counter.query("state")["items"] == [1, 2, 3], what="signals applied")
    assert 16 == counter.query("plus", 10)
    length = counter.describe().history_length
    for _ in range(10):
        counter.query("state")
    assert length == counter.describe().history_length  # queries write no history
    with pytest.raises(df.QueryFailed):
        counter.query("plus", "not a number")

    key = new_id("rc-describe")
    gated = client.start(rc_cancellable, board, key, workflow_id=key)
    running = wait_until(
        lambda: (d := gated.describe()).pending_activities and d, what="activity in flight"
    )
    assert (key, gated.run_id, "rc_cancellable", "running") == (
        running.workflow_id,
        running.run_id,
        running.workflow_type,
        running.status,
    )
    assert (["rc_gate"], 2, None) == (
        running.pending_activities,
        running.history_length,
        running.close_time,
    )
    done = [client.start(rc_echo, i, workflow_id=new_id("rc-listed")) for i in range(4)]
    assert [0, 1, 2, 3] == [h.result(timeout=30) for h in done]

    def ids(**filters: Any) -> set[str]:
        return {d.workflow_id for d in client.list(**filters)}

    assert {h.workflow_id for h in done} == ids(status="completed", workflow_type="rc_echo")
    assert {counter.workflow_id, key} == ids(status="running")
    assert {0, 1} == {d.partition for d in client.list()}  # both partition actors answered
    everything = client.list()
    assert sorted((d.start_time for d in everything), reverse=True) == [
        d.start_time for d in everything
    ]

    open_gate(board, key)
    counter.signal("add", None)
    assert "opened" == gated.result(timeout=30)
    assert {"items": [1, 2, 3], "total": 6} == counter.result(timeout=30)
    described = gated.describe()
    assert ("completed", [], 4) == (
        described.status,
        described.pending_activities,
        described.history_length,
    )
    assert set() == ids(status="running")


# -- child workflows across the two partition actors ---------------------------------------------


def test_twenty_children_fan_out_over_both_partition_actors(ray_client: df.Client) -> None:
    client = ray_client
    out = client.execute(rc_fanout, 20, workflow_id=new_id("rc-fanout"), timeout=60)

    assert sum(i * i for i in range(20)) == out["sum"]
    assert 20 == len(set(out["ids"]))
    # the children's workflow code ran in both partition actors, the parent in one of them
    assert partition_pids(client) == set(out["child_pids"])
    assert out["parent_pid"] in partition_pids(client)
    descriptions = [client.get_handle(cid).describe() for cid in out["ids"]]
    assert {"completed"} == {d.status for d in descriptions}
    assert {0, 1} == {d.partition for d in descriptions}


# -- close the engine (kill the actors), reopen the data directory, continue ------------------


SLEEP_ACROSS_CLOSE_S = 2.0
"""A durable timer meant to fall due while the engine is closed; if it fell due before, the
activity after it would be in flight at the close and rightly run again after the reopen
(activities are at least once), which is not what this test is about."""


def test_runs_continue_by_replay_after_the_ray_engine_is_closed_and_reopened(
    ray_session: None, data_dir: Path, board: str
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:12]}"

    def open_engine() -> df.Engine:
        return df.Engine(
            data_dir,
            runtime="ray",
            partitions=2,
            synchronous="NORMAL",
            namespace=namespace,
            archive=False,
        )

    keys = [new_id(f"rc-mid{i}") for i in range(3)]
    family = new_id("rc-family")
    with open_engine() as engine:
        client = engine.client()
        old_pids = partition_pids(client)
        ref = client.start(rc_midway, board, keys[0], workflow_id=keys[0])  # never interrupted
        wait_until(lambda: ref.query("phase") == "waiting", what="reference parked")
        ref.signal("go", 0.01)
        expected = ref.result(timeout=30)
        assert ["a!", "g1!", "g2!", "b!"] == expected["steps"]
        parked = [client.start(rc_midway, board, k, workflow_id=k) for k in keys[1:]]
        for handle in parked:
            wait_until(lambda h=handle: h.query("phase") == "waiting", what="parked")
        drawn = {h.workflow_id: h.query("drawn") for h in parked}
        # parks it on a durable timer that falls due while the engine is closed: long enough
        # that the steps below and the close come first even on a loaded machine
        parked[0].signal("go", SLEEP_ACROSS_CLOSE_S)
        due = time.monotonic() + SLEEP_ACROSS_CLOSE_S
        wait_until(lambda: parked[0].query("phase") == "sleeping", what="sleeping")
        parent = client.start(rc_parent, board, family, workflow_id=family)
        wait_until(lambda: parent.query("phase") == "waiting for child", what="parent parked")
        child = client.get_handle(f"{family}-child")
        wait_until(lambda: notes(board, family)["child"], what="child ran its activity")
        wait_until(lambda: not child.describe().pending_activities, what="child parked")
        assert "sleeping" == parked[0].query("phase"), "the timer fell due before the close"
    time.sleep(max(0.0, due - time.monotonic()) + 0.1)

    with open_engine() as engine:  # new actors, same namespace: they recover from the files
        client = engine.client()
        assert not old_pids & partition_pids(client)
        again = [client.get_handle(k) for k in keys[1:]]
        # rebuilt by replay: same phase and the same "random" values, no activity run again
        # (again[0]'s overdue timer fires at once, so it may have finished already)
        assert "waiting" == again[1].query("phase")
        assert drawn[keys[2]] == again[1].query("drawn")
        again[1].signal("go", 0.01)
        for handle in again:
            result = handle.result(timeout=30)
            assert expected["steps"] == result["steps"]
            assert drawn[handle.workflow_id] == result["drawn"]
        client.get_handle(f"{family}-child").signal("go", "late")
        assert ["parent!", "child got late"] == client.get_handle(family).result(timeout=30)
        assert family == client.get_handle(f"{family}-child").describe().parent_workflow_id
    for key in keys:
        assert {"a": 1, "g1": 1, "g2": 1, "b": 1} == notes(board, key)
    assert {"parent": 1, "child": 1} == notes(board, family)


# -- errors keep their duraflow class through Ray ----------------------------------------------


def test_bad_input_errors_arrive_with_their_duraflow_class(ray_client: df.Client) -> None:
    client = ray_client
    keeper = client.start(rc_keeper, workflow_id="rc-keeper")
    keeper.signal("item", "before")
    wait_until(lambda: keeper.query("items") == ["before"], what="keeper took the signal")

    nobody = client.get_handle("rc-nobody-home")
    for call in (
        lambda: nobody.result(timeout=5),
        nobody.describe,
        lambda: nobody.signal("item", 1),
        lambda: nobody.query("items"),
        nobody.cancel,
        nobody.terminate,
    ):
        with pytest.raises(df.WorkflowNotFound, match="'rc-nobody-home'"):
            call()
    with pytest.raises(df.WorkflowNotFound, match="0" * 32):
        client.get_handle("rc-keeper", run_id="0" * 32).describe()

    with pytest.raises(df.UnknownQuery) as unknown:
        keeper.query("nope")
    assert "['fails', 'items', 'unencodable']" in str(unknown.value)
    with pytest.raises(df.QueryFailed, match="ZeroDivisionError"):
        keeper.query("fails")
    with pytest.raises(df.PayloadError, match="result of query 'unencodable'"):
        keeper.query("unencodable")  # raised in the partition actor
    with pytest.raises(df.PayloadError, match="payload of signal 'item'"):
        keeper.signal("item", object())
    with pytest.raises(df.InvalidWorkflowId, match="control character"):
        client.start(rc_echo, 1, workflow_id="a\nb")
    with pytest.raises(df.UnknownWorkflowType):
        client.start("rc_no_such_type")
    with pytest.raises(df.WorkflowAlreadyRunning):
        client.start(rc_keeper, workflow_id="rc-keeper")
    with pytest.raises(df.ResultTimeout):
        keeper.result(timeout=0.05)

    closed = client.start(rc_echo, {"kept": True}, workflow_id="rc-closed")
    assert {"kept": True} == closed.result(timeout=30)
    for call in (
        lambda: closed.signal("item", 1),
        lambda: closed.query("items"),
        closed.cancel,
        closed.terminate,
    ):
        with pytest.raises(df.WorkflowClosed, match=f"run {closed.run_id} already completed"):
            call()

    with pytest.raises(df.WorkflowFailedError) as returned_object:
        client.execute(rc_returns_object, timeout=30)
    assert ("failed", "PayloadError") == (
        returned_object.value.status,
        returned_object.value.cause_type,
    )
    with pytest.raises(df.WorkflowFailedError) as raised:
        client.execute(rc_raises, timeout=30)
    assert ("RcOrderError", "workflow says no") == (
        raised.value.cause_type,
        raised.value.cause_message,
    )

    caught = client.execute(rc_bad_children_and_activities, timeout=30)
    assert caught["child_id"].startswith("InvalidWorkflowId: workflow ID 'a\\x00b'")
    assert caught["child_type"].startswith(
        "UnknownWorkflowType: unknown workflow type 'rc_no_such_child_type'"
    )
    assert caught["activity_arg"].startswith(
        "PayloadError: cannot encode argument 'board' of activity 'rc_note'"
    )
    cause_type, attempts, message = caught["activity_result"]
    assert ("PayloadError", 1) == (cause_type, attempts)  # from the Ray task, not retried
    assert "result of activity 'rc_returns_object_activity'" in message
    assert caught["duration"].startswith("InvalidDuration:")

    assert ["before"] == keeper.query("items")  # nothing durable was disturbed
    keeper.signal("item", "after")
    keeper.signal("item", None)
    assert ["before", "after"] == keeper.result(timeout=30)


# -- many workflows ------------------------------------------------------------------------------


def run_many(client: df.Client, workflow: Callable[..., Any], n: int) -> tuple[list[int], float]:
    async def main() -> list[int]:
        handles = await asyncio.gather(
            *(
                client.start_async(workflow, i, workflow_id=f"{workflow.__name__}-{i}")
                for i in range(n)
            )
        )
        return list(await asyncio.gather(*(h.result_async(timeout=120) for h in handles)))

    started = time.monotonic()
    results = asyncio.run(main())
    return results, time.monotonic() - started


def test_a_thousand_workflows_with_inline_activities(ray_client: df.Client) -> None:
    results, elapsed = run_many(ray_client, rc_many_inline, 1000)

    assert [2 * i for i in range(1000)] == results
    listed = ray_client.list(status="completed", workflow_type="rc_many_inline", limit=5000)
    assert 1000 == len(listed)
    assert {0, 1} == {d.partition for d in listed}
    assert elapsed < 60


def test_a_hundred_workflows_with_ray_task_activities(ray_client: df.Client) -> None:
    results, elapsed = run_many(ray_client, rc_many_tasks, 100)

    assert [2 * i for i in range(100)] == results
    assert 100 == len(ray_client.list(status="completed", workflow_type="rc_many_tasks"))
    assert elapsed < 60


# -- where activities run, and with what ---------------------------------------------------------


def test_async_and_inline_activities_run_where_declared(ray_client: df.Client) -> None:
    out = ray_client.execute(rc_where, timeout=30)

    actors = partition_pids(ray_client)
    assert out["workflow_pid"] in actors
    assert out["task"]["pid"] not in actors  # an async activity as a Ray task: a worker's loop
    assert out["task"]["in_loop"]
    # inline ones (async on the actor's loop, sync on its threads) run beside the workflow, from
    # this module imported by module:qualname in the actor (nothing was shipped by value)
    assert out["workflow_pid"] == out["inline_async"]["pid"] == out["inline_sync"]["pid"]
    assert __file__ == out["inline_async"]["module"] == out["inline_sync"]["module"]


def test_declared_resources_are_what_ray_assigns_and_what_limits_concurrency(
    ray_client: df.Client, board: str
) -> None:
    key = new_id("rc-gadgets")
    started = time.monotonic()

    out = ray_client.execute(rc_gadgets, board, key, GADGETS + 1, workflow_id=key, timeout=60)

    with locked_state(board, key) as state:
        final = dict(state)
    # 5 activities wanting 1.25 CPUs of 2, but 5 gadgets of 4: one waited for a gadget (for
    # longer than its heartbeat timeout, which counts only once it runs)
    assert (GADGETS, GADGETS + 1, 0) == (final["max"], final["entered"], final["now"])
    assert time.monotonic() - started >= HOLD_S
    assert [{"CPU": 0.25, "gadget": 1.0}] * (GADGETS + 1) == out["held"]
    assert {"CPU": 0.5, "gadget": 1.0} == out["single"]
    assert out["waited"] > STAMP_TIMEOUT_S  # queued longer than its start_to_close_timeout
    assert out["after_release"] > -0.1  # (it ran once the hog let go)
