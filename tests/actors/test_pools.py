"""Worker pools on Ray: activities with no options of their own run on the engine's default
pool, ``queue=`` ones on their queue's pool, and everything activities promise holds there.

As in test_ray_core, activities tell the test what they did through small files on a board;
the workers import this module by name. Names start with ``pl_`` (the registry is global).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import duraflow as df
from duraflow import serving
from duraflow.actors.router import partition_of
from duraflow.actors.worker_link import LINK_ENV
from duraflow.actors.workers import pool_names
from duraflow.cdc.events import ActivityCompleted, ActivityRetry
from tests.actors.test_ray_core import (
    history,
    new_id,
    note,
    notes,
    open_gate,
    partition_pids,
    wait_until,
)

FAST = {"initial_interval": 0.01, "backoff_coefficient": 1.0}
MB = 1 << 20


@pytest.fixture
def board(tmp_path: Path) -> str:
    path = tmp_path / "board"
    path.mkdir()
    return str(path)


def worker_statuses(engine: df.Engine, queue: str | None = None) -> list[dict[str, Any]]:
    namespace = engine.namespace
    assert namespace is not None
    handles = [ray.get_actor(n, namespace=namespace) for n in pool_names(namespace, queue)]
    return list(ray.get([h.status.remote() for h in handles], timeout=30))


# -- activities ----------------------------------------------------------------------------------


@df.activity
def pl_where(size: int) -> dict[str, Any]:
    info = df.activity_info()
    return {
        "pid": os.getpid(),
        "info": [info.activity, info.workflow_id, info.seq, info.attempt],
        "blob": b"x" * size,
    }


@df.activity
async def pl_where_async(blob: bytes) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"pid": os.getpid(), "size": len(blob)}


@df.activity(queue="pl-gadgets")
def pl_on_gadget_pool() -> dict[str, Any]:
    return {"pid": os.getpid()}


@df.activity(num_cpus=0.25)
def pl_ray_task() -> int:
    return os.getpid()


@df.activity(inline=True)
def pl_inline() -> int:
    return os.getpid()


@df.activity
def pl_flaky(board: str, fail_times: int) -> dict[str, Any]:
    info = df.activity_info()
    note(board, info.workflow_id, f"attempt {info.attempt}")
    if info.attempt <= fail_times:
        raise RuntimeError(f"flaky attempt {info.attempt}")
    return {"attempt": info.attempt}


@df.activity(
    retry=df.RetryPolicy(
        initial_interval=0.01, maximum_attempts=5, non_retryable_error_types=["ValueError"]
    )
)
def pl_bad_value(board: str) -> None:
    note(board, df.activity_info().workflow_id, "bad value")
    raise ValueError("bad value 42")


@df.activity
def pl_sleeper(board: str, key: str, seconds: float) -> str:
    note(board, key, "started")
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.02)
    except BaseException as exc:
        note(board, key, f"interrupted {type(exc).__name__}")
        raise
    note(board, key, "finished")
    return "finished"


@df.activity
async def pl_async_sleeper(board: str, key: str, seconds: float) -> str:
    note(board, key, "started")
    try:
        await asyncio.sleep(seconds)
    except BaseException as exc:
        note(board, key, f"interrupted {type(exc).__name__}")
        raise
    note(board, key, "finished")
    return "finished"


@df.activity
def pl_heartbeating(board: str, total: float, every: float) -> dict[str, Any]:
    info = df.activity_info()
    note(board, info.workflow_id, f"attempt {info.attempt}")
    beats = 0
    end = time.monotonic() + total
    while time.monotonic() < end:
        beats += 1
        df.heartbeat({"beats": beats})
        time.sleep(every)
    return {"beats": beats, "pid": os.getpid()}


@df.activity
async def pl_async_heartbeating(board: str, total: float, every: float) -> dict[str, Any]:
    info = df.activity_info()
    note(board, info.workflow_id, f"attempt {info.attempt}")
    beats = 0
    end = time.monotonic() + total
    while time.monotonic() < end:
        beats += 1
        df.heartbeat({"beats": beats})
        await asyncio.sleep(every)
    return {"beats": beats, "pid": os.getpid()}


@df.activity
def pl_resume_after_error(board: str) -> dict[str, Any]:
    info = df.activity_info()
    if info.attempt == 1:
        df.heartbeat({"done": 3})
        raise RuntimeError("crashed after item 3")
    return {"attempt": info.attempt, "resumed_from": info.heartbeat_details}


@df.activity
def pl_gate(board: str, key: str) -> str:
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


@df.activity
def pl_step(board: str, key: str, i: int, seconds: float) -> int:
    """Notes each execution of step ``i``; sleeps ``seconds`` in short naps."""
    note(board, key, f"start {i} pid {os.getpid()}")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.02)
    note(board, key, f"end {i}")
    return i


@df.activity
def pl_noop() -> int:
    return os.getpid()


ACTIVITIES = {
    fn.__name__: fn
    for fn in (
        pl_flaky,
        pl_bad_value,
        pl_sleeper,
        pl_async_sleeper,
        pl_heartbeating,
        pl_async_heartbeating,
        pl_resume_after_error,
    )
}


# -- workflows -----------------------------------------------------------------------------------


@df.workflow
async def pl_run(ctx: df.WorkflowContext, name: str, args: list, options: dict) -> dict[str, Any]:
    """Run activity ``name`` with per-call ``options``; report its ActivityError."""
    overrides = dict(options)
    if "retry" in overrides:
        overrides["retry"] = df.RetryPolicy(**overrides["retry"])
    started = ctx.time()
    try:
        result = await ctx.activity(ACTIVITIES[name], *args, **overrides)
    except df.ActivityError as exc:
        return {
            "error": [exc.activity, exc.cause_type, exc.cause_message, exc.attempts],
            "elapsed": ctx.time() - started,
        }
    return {"ok": result, "elapsed": ctx.time() - started}


@df.workflow
async def pl_where_flow(ctx: df.WorkflowContext, size: int) -> dict[str, Any]:
    where, where_async, task_pid, inline_pid = await asyncio.gather(
        ctx.activity(pl_where, size),
        ctx.activity(pl_where_async, b"y" * size),
        ctx.activity(pl_ray_task),
        ctx.activity(pl_inline),
    )
    return {
        "pool": where,
        "pool_async": where_async,
        "task_pid": task_pid,
        "inline_pid": inline_pid,
        "gadget": await ctx.activity(pl_on_gadget_pool),
    }


@df.workflow
async def pl_cancellable(ctx: df.WorkflowContext, board: str, key: str) -> str:
    return await ctx.activity(pl_gate, board, key)


@df.workflow
async def pl_steps(ctx: df.WorkflowContext, board: str, key: str, n: int, seconds: float) -> list:
    retry = df.RetryPolicy(initial_interval=0.05, backoff_coefficient=1.0)
    return list(
        await asyncio.gather(
            *(ctx.activity(pl_step, board, key, i, seconds, retry=retry) for i in range(n))
        )
    )


@df.workflow
async def pl_warm(ctx: df.WorkflowContext) -> list[int]:
    return list(await asyncio.gather(*(ctx.activity(pl_noop) for _ in range(4))))


def warm_up(client: df.Client) -> None:
    """Wait until the default pool's workers run (a new worker process takes a second or two
    to start and import this module: timeouts shorter than that would end queued attempts)."""
    client.start(pl_warm).result(timeout=60)


# -- where activities run ------------------------------------------------------------------------


NO_LINK = {"env_vars": {LINK_ENV: "off"}}
"""A pool's runtime_env whose workers offer no link: partitions send to them by Ray calls."""


def partition_pools(client: df.Client) -> list[dict[str, Any]]:
    """Each partition's view of the pools (``status()["pools"]``)."""
    return [s["pools"] for s in client._host.statuses()]  # type: ignore[attr-defined]


def warm_up_every_partition(client: df.Client) -> None:
    """:func:`warm_up` on each partition (each finds the default pool's workers)."""
    partitions = client._host.partitions  # type: ignore[attr-defined]
    candidates = [new_id("pl-warm") for _ in range(64)]
    ids = {partition_of(wid, partitions): wid for wid in candidates}
    assert partitions == len(ids)
    handles = [client.start(pl_warm, workflow_id=wid) for wid in ids.values()]
    for handle in handles:
        handle.result(timeout=60)


def wait_linked(client: df.Client, queue: str = "default") -> None:
    """Wait until every partition reaches each worker of ``queue`` over a link."""
    warm_up_every_partition(client)
    wait_until(
        lambda: all(p[queue]["linked"] == p[queue]["workers"] > 0 for p in partition_pools(client)),
        what="links to the workers",
        seen=lambda: partition_pools(client),
    )


@pytest.fixture
def pool_engine(ray_session: None, data_dir: Path) -> Any:
    """A Ray engine with the default pool and a one-worker pool that reserves a gadget and
    offers no link (its attempts go by Ray calls)."""
    namespace = f"test-{new_id('pl')}"
    gadgets = df.WorkerPool(size=1, resources={"gadget": 1}, runtime_env=NO_LINK)
    with df.Engine(
        data_dir,
        runtime="ray",
        partitions=2,
        synchronous="NORMAL",
        namespace=namespace,
        workers={"pl-gadgets": gadgets},
    ) as engine:
        yield engine


def test_activities_run_on_pools_tasks_or_inline_as_declared(pool_engine: df.Engine) -> None:
    client = pool_engine.client()
    handle = client.start(pl_where_flow, 3 * MB, workflow_id="pl-where")

    result = handle.result(timeout=60)

    default_workers = worker_statuses(pool_engine, "default")
    default_pool = {s["pid"] for s in default_workers}
    gadget_pool = {s["pid"] for s in worker_statuses(pool_engine, "pl-gadgets")}
    assert 2 == len(default_pool)  # one worker per CPU of the 2-CPU test cluster
    assert [True, True] == [s["link"] for s in default_workers]
    assert [False] == [s["link"] for s in worker_statuses(pool_engine, "pl-gadgets")]
    assert result["pool"]["pid"] in default_pool
    assert result["pool_async"]["pid"] in default_pool
    assert result["gadget"]["pid"] in gadget_pool
    assert ["pl_where", "pl-where", 1, 1] == result["pool"]["info"]
    assert (3 * MB, 3 * MB) == (len(result["pool"]["blob"]), result["pool_async"]["size"])
    assert result["inline_pid"] in partition_pids(client)
    assert result["task_pid"] not in default_pool | gadget_pool | partition_pids(client)
    wait_linked(client)  # the default pool's workers are linked to; the gadget's is not
    gadget_views = [p["pl-gadgets"] for p in partition_pools(client) if "pl-gadgets" in p]
    assert [{"workers": 1, "linked": 0, "outstanding": 0}] == gadget_views


def pools_seen(engine: df.Engine) -> dict[str, dict[str, Any]]:
    """``duraflow status``'s pools (serving.serving_pools), by queue."""
    reports = engine.client()._host.statuses()  # type: ignore[attr-defined]
    pools = serving.serving_pools(reports, namespace=engine.namespace, timeout=10)
    return {p.pop("queue"): p for p in pools}


def test_status_shows_each_pool_its_workers_and_the_attempts_they_hold(
    pool_engine: df.Engine, board: str
) -> None:
    client = pool_engine.client()
    key = new_id("pl-status")
    handle = client.start(pl_cancellable, board, key, workflow_id=key)
    wait_until(lambda: notes(board, key)["gate started"], what="gate running")

    held = pools_seen(pool_engine)

    idle = {"size": 1, "alive": 1, "running": 0, "outstanding": 0}
    assert {"size": 2, "alive": 2, "running": 1, "outstanding": 1} == held["default"]
    assert idle == held["pl-gadgets"]
    open_gate(board, key)
    assert "opened" == handle.result(timeout=30)
    wait_until(
        lambda: 0 == pools_seen(pool_engine)["default"]["outstanding"],
        what="the attempt answered",
        seen=lambda: pools_seen(pool_engine),
    )
    assert {"size": 2, "alive": 2, "running": 0} == {
        k: v for k, v in pools_seen(pool_engine)["default"].items() if k != "outstanding"
    }


# -- retries, errors, timeouts, heartbeats, cancellation -----------------------------------------


def test_retries_and_non_retryable_errors_on_the_pool(
    ray_client: df.Client, board: str, data_dir: Path
) -> None:
    flaky = ray_client.start(pl_run, "pl_flaky", [board, 2], {"retry": FAST})
    bad = ray_client.start(pl_run, "pl_bad_value", [board], {})

    assert {"attempt": 3} == flaky.result(timeout=30)["ok"]
    assert {"attempt 1": 1, "attempt 2": 1, "attempt 3": 1} == notes(board, flaky.workflow_id)
    retried = [e for e in history(data_dir, flaky.workflow_id) if isinstance(e, ActivityRetry)]
    assert [1, 2] == [e.attempt for e in retried]
    assert ["pl_bad_value", "ValueError", "bad value 42", 1] == bad.result(timeout=30)["error"]
    assert 1 == notes(board, bad.workflow_id)["bad value"]


@pytest.mark.parametrize(
    ("name", "interrupted"),
    [("pl_sleeper", "ActivityCancelledError"), ("pl_async_sleeper", "CancelledError")],
    ids=["sync", "async"],
)
def test_start_to_close_timeout_stops_the_running_pool_attempt(
    ray_client: df.Client, board: str, name: str, interrupted: str
) -> None:
    key = new_id(name)
    retry = {**FAST, "maximum_attempts": 2}
    warm_up(ray_client)
    handle = ray_client.start(
        pl_run, name, [board, key, 120.0], {"start_to_close_timeout": 0.5, "retry": retry}
    )

    result = handle.result(timeout=60)

    assert ["TimeoutError", 2] == [result["error"][1], result["error"][3]]
    assert result["elapsed"] < 60
    seen = wait_until(
        lambda: (n := notes(board, key))[f"interrupted {interrupted}"] == 2 and n,
        what="both attempts interrupted",
        seen=lambda: notes(board, key),
    )
    assert 0 == seen["finished"]


def test_schedule_to_close_timeout_ends_a_hanging_pool_attempt(
    ray_client: df.Client, board: str
) -> None:
    key = new_id("pl-s2c")
    warm_up(ray_client)
    handle = ray_client.start(
        pl_run, "pl_sleeper", [board, key, 120.0], {"schedule_to_close_timeout": 2.0}
    )

    result = handle.result(timeout=60)

    assert ["TimeoutError", 1] == [result["error"][1], result["error"][3]]
    assert "schedule_to_close_timeout" in result["error"][2]
    wait_until(
        lambda: notes(board, key)["interrupted ActivityCancelledError"],
        what="stopped",
        seen=lambda: notes(board, key),
    )


HEARTBEAT_TIMEOUT_S = 3.0


def test_heartbeats_from_pool_attempts_reach_the_partition(
    ray_client: df.Client, board: str
) -> None:
    options = {"heartbeat_timeout": HEARTBEAT_TIMEOUT_S, "retry": {**FAST, "maximum_attempts": 3}}
    warm_up(ray_client)
    alive = [
        ray_client.start(pl_run, name, [board, HEARTBEAT_TIMEOUT_S + 1.0, 0.1], options)
        for name in ("pl_heartbeating", "pl_async_heartbeating")
    ]
    after_error = ray_client.start(pl_run, "pl_resume_after_error", [board], options)
    silent_key = new_id("pl-silent")
    silent = ray_client.start(
        pl_run,
        "pl_sleeper",
        [board, silent_key, 20.0],
        {"heartbeat_timeout": 0.5, "retry": {"maximum_attempts": 1}},
    )

    for handle in alive:
        result = handle.result(timeout=60)
        assert result["elapsed"] > HEARTBEAT_TIMEOUT_S and 2 <= result["ok"]["beats"], result
        assert {"attempt 1": 1} == notes(board, handle.workflow_id)
    assert {"attempt": 2, "resumed_from": {"done": 3}} == after_error.result(timeout=60)["ok"]
    error = silent.result(timeout=30)["error"]
    assert ["pl_sleeper", "TimeoutError", 1] == [error[0], error[1], error[3]]
    assert "heartbeat_timeout of 0.5s" in error[2]
    wait_until(lambda: notes(board, silent_key)["interrupted ActivityCancelledError"], what="stop")


def test_cancel_reaches_the_running_pool_attempt(ray_client: df.Client, board: str) -> None:
    key = new_id("pl-cancel")
    handle = ray_client.start(pl_cancellable, board, key, workflow_id=key)
    wait_until(lambda: notes(board, key)["gate started"], what="gate running")

    handle.cancel("stop waiting")

    with pytest.raises(df.WorkflowCancelledError):
        handle.result(timeout=30)
    wait_until(
        lambda: notes(board, key)["gate interrupted ActivityCancelledError"],
        what="gate interrupted",
        seen=lambda: notes(board, key),
    )
    open_gate(board, key)
    time.sleep(0.2)
    assert 0 == notes(board, key)["gate finished"]


# -- faults --------------------------------------------------------------------------------------


def completions(data_dir: Path, workflow_id: str) -> collections.Counter[int]:
    return collections.Counter(
        e.seq for e in history(data_dir, workflow_id) if isinstance(e, ActivityCompleted)
    )


@pytest.fixture(params=["link", "ray-calls"])
def kill_engine(request: pytest.FixtureRequest, ray_session: None, data_dir: Path) -> Any:
    """A Ray engine whose default pool's workers are linked to, or reached by Ray calls."""
    pool = df.WorkerPool(runtime_env=NO_LINK if request.param == "ray-calls" else None)
    with df.Engine(
        data_dir,
        runtime="ray",
        partitions=2,
        synchronous="NORMAL",
        namespace=f"test-{new_id('pl')}",
        archive=False,
        workers={"default": pool},
    ) as engine:
        client = engine.client()
        if request.param == "link":
            wait_linked(client)
        else:
            warm_up_every_partition(client)
            assert all(0 == p["default"]["linked"] for p in partition_pools(client))
        yield engine


def test_a_worker_killed_mid_batch_has_its_attempts_retried_and_is_replaced(
    kill_engine: df.Engine, board: str, data_dir: Path
) -> None:
    ray_engine = kill_engine
    client = ray_engine.client()
    key = new_id("pl-kill")
    steps = 6
    handle = client.start(pl_steps, board, key, steps, 1.0, workflow_id=key)
    wait_until(
        lambda: sum(label.startswith("start") for label in notes(board, key)) >= 2,
        what="both workers running a step",
    )
    victim = worker_statuses(ray_engine, "default")[0]

    os.kill(victim["pid"], signal.SIGKILL)

    assert list(range(steps)) == handle.result(timeout=60)
    seen = notes(board, key)
    assert all(seen[f"end {i}"] >= 1 for i in range(steps)), seen
    assert [1] * steps == [
        completions(data_dir, key)[seq] for seq in sorted(completions(data_dir, key))
    ]
    assert steps == len(completions(data_dir, key))
    lost = [
        e
        for e in history(data_dir, key)
        if isinstance(e, ActivityRetry) and e.error_type == "WorkerLost"
    ]
    assert lost, "the killed worker's attempts were retried as WorkerLost"
    replaced = wait_until(
        lambda: [
            s for s in worker_statuses(ray_engine, "default") if s["index"] == victim["index"]
        ],
        what="the worker restarted",
    )
    assert victim["pid"] != replaced[0]["pid"]


def test_a_partition_killed_while_workers_hold_its_attempts(
    ray_engine: df.Engine, board: str, data_dir: Path
) -> None:
    client = ray_engine.client()
    key = new_id("pl-part")
    steps = 4
    handle = client.start(pl_steps, board, key, steps, 1.0, workflow_id=key)
    wait_until(
        lambda: sum(label.startswith("start") for label in notes(board, key)) >= 2,
        what="workers running steps",
    )
    index = next(
        s["index"]
        for s in client._host.statuses()
        if s["open"]  # type: ignore[attr-defined]
    )
    pid = client._host.statuses()[index]["pid"]  # type: ignore[attr-defined]

    os.kill(pid, signal.SIGKILL)

    assert list(range(steps)) == handle.result(timeout=60)
    assert steps == len(completions(data_dir, key))
    assert {1} == set(completions(data_dir, key).values())


# -- a pool started on a cluster ------------------------------------------------------------------


@df.activity(queue="pl-cli")
def pl_on_cli_pool() -> int:
    return os.getpid()


@df.workflow
async def pl_cli_flow(ctx: df.WorkflowContext) -> int:
    return await ctx.activity(pl_on_cli_pool, retry=df.RetryPolicy(initial_interval=0.05))


def test_a_pool_started_for_a_served_deployment_takes_its_queue(ray_engine: df.Engine) -> None:
    namespace = ray_engine.namespace
    assert namespace is not None
    try:
        statuses = serving.serve_workers("pl-cli", df.WorkerPool(size=1), namespace=namespace)
        assert ["pl-cli"] == [s["queue"] for s in statuses]

        client = ray_engine.client()
        partitions = client._host.partitions  # type: ignore[attr-defined]
        ids = [new_id("pl-cli") for _ in range(64)]
        one_per_partition = {partition_of(w, partitions): w for w in ids}
        for workflow_id in one_per_partition.values():  # every partition knows the queue
            pid = client.start(pl_cli_flow, workflow_id=workflow_id).result(timeout=30)
            assert statuses[0]["pid"] == pid

        # A larger --size adds a worker; partitions that know the queue take it on.
        grown = serving.serve_workers("pl-cli", df.WorkerPool(size=2), namespace=namespace)
        assert 2 == len(grown)
        pids: set[int] = set()

        async def sixteen() -> list[int]:  # one turn per partition: spread over the workers
            handles = await asyncio.gather(*(client.start_async(pl_cli_flow) for _ in range(16)))
            return await asyncio.gather(*(h.result_async(timeout=30) for h in handles))

        def both_work() -> bool:
            pids.update(asyncio.run(sixteen()))
            return pids == {s["pid"] for s in grown}

        wait_until(both_work, timeout=30, what="attempts on the added worker too")
    finally:
        from duraflow.actors.ray_deployment import stop_workers

        stop_workers(namespace, "pl-cli")
