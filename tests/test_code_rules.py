"""Rules for workflow code (README), and what happens when code breaks them.

Code that blocks its partition is reported while it blocks and its run marked stuck when it
returns, and the other partitions go on meanwhile; a thread started from workflow code is
refused; a query handler that changes the run's state fails and the run is rebuilt from its
history (or, for a change too deep to see cheaply, a replay forgets it: documented here);
``query(timeout=)`` frees its caller and a query still queued at its timeout is not run.
Names here start with ``cr_`` (the registry is global).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.actors.router import partition_of

from .test_workflows import query_when_ready, wait_until

THRESHOLD_S = 0.5
"""The deadlock threshold of these tests' engines (2 s by default)."""
BLOCK_S = 1.5
"""How long the code that breaks the rule blocks: well over the threshold."""

_rules = {"block": True}  # the workflow code below blocks while this says so
_slow_calls: list[int] = []
_thread_ran = threading.Event()


def id_on(partition: int, prefix: str) -> str:
    """A new workflow ID owned by ``partition`` of 2."""
    while True:
        workflow_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        if partition_of(workflow_id, 2) == partition:
            return workflow_id


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``call`` on a thread of its own (a call that waits on the blocked partition)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # reason: the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.fixture
def runtime() -> str:
    """In-process unless a test asks for Ray too (by parametrizing ``runtime``)."""
    return "local"


@pytest.fixture
def open_engine(runtime: str, data_dir: Path) -> Iterator[Callable[..., df.Engine]]:
    """Opens engines over ``data_dir`` with a 0.5 s deadlock threshold (by default) on
    ``runtime``; the ones still open are closed at the end."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    opened: list[df.Engine] = []

    def open_one(deadlock_threshold: float | None = THRESHOLD_S) -> df.Engine:
        extra: dict[str, Any] = {} if runtime == "local" else {"namespace": namespace}
        engine = df.Engine(
            data_dir,
            runtime=runtime,
            partitions=2,
            synchronous="NORMAL",
            deadlock_threshold=deadlock_threshold,
            **extra,
        )
        opened.append(engine)
        return engine

    yield open_one
    for engine in opened:
        engine.close()


# -- workflows that break the rules ---------------------------------------------------------------


@df.workflow
async def cr_blocks_on_signal(ctx: df.WorkflowContext) -> str:
    await ctx.wait_for_signal("go")
    if _rules["block"]:
        time.sleep(BLOCK_S)  # noqa: ASYNC251  # reason: the rule this test breaks
    return "done"


@df.workflow
async def cr_quick(ctx: df.WorkflowContext) -> str:
    await ctx.wait_for_signal("go")
    return "quick"


@df.workflow
async def cr_slow_query(ctx: df.WorkflowContext) -> str:
    ctx.set_query_handler("slow", lambda: time.sleep(BLOCK_S))
    await ctx.wait_for_signal("go")
    return "done"


@df.workflow
async def cr_sleepy_query(ctx: df.WorkflowContext) -> str:
    def sleepy() -> int:
        _slow_calls.append(1)  # a module global, not the run's state
        time.sleep(BLOCK_S)
        return len(_slow_calls)

    ctx.set_query_handler("sleepy", sleepy)
    ctx.set_query_handler("calls", lambda: len(_slow_calls))
    await ctx.wait_for_signal("go")
    return "done"


@df.workflow
async def cr_starts_thread(ctx: df.WorkflowContext) -> str:
    threading.Thread(target=_thread_ran.set).start()
    return "started"


@df.workflow
async def cr_uses_a_pool(ctx: df.WorkflowContext) -> int:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_thread_ran.set).result() or 1


@df.workflow
async def cr_thread_in_query(ctx: df.WorkflowContext) -> str:
    ctx.set_query_handler("spawn", lambda: threading.Thread(target=_thread_ran.set).start())
    await ctx.wait_for_signal("go")
    return "done"


@df.workflow
async def cr_query_wakes(ctx: df.WorkflowContext) -> str:
    approved = asyncio.Event()
    ctx.set_query_handler("approve", lambda: approved.set())  # a query used as a signal
    ctx.set_query_handler("ping", lambda: "pong")
    await approved.wait()
    return "approved"


@df.workflow
async def cr_query_appends(ctx: df.WorkflowContext) -> list[str]:
    items: list[str] = []
    ctx.set_query_handler("add", lambda item: items.append(item))
    ctx.set_query_handler("items", lambda: list(items))
    items.append(await ctx.wait_for_signal("item"))
    await ctx.wait_for_signal("done")
    return items


@df.workflow
async def cr_query_bumps(ctx: df.WorkflowContext) -> int:
    state = {"count": 0}

    def bump() -> int:
        state["count"] += 1  # deep in a dict: not caught
        return state["count"]

    ctx.set_query_handler("bump", bump)
    ctx.set_query_handler("count", lambda: state["count"])
    await ctx.wait_for_signal("done")
    return state["count"]


@df.workflow
async def cr_query_sets(ctx: df.WorkflowContext) -> None:
    ctx.set_query_handler("add_handler", lambda: ctx.set_query_handler("added", lambda: 1))
    await ctx.wait_for_signal("done")


# -- code that blocks -----------------------------------------------------------------------------


def assert_other_partition_goes_on(client: df.Client, blocked: threading.Thread) -> None:
    """A workflow on partition 1 starts and completes while partition 0 is blocked."""
    other = client.start(cr_quick, workflow_id=id_on(1, "other"))
    other.signal("go")
    assert "quick" == other.result(timeout=BLOCK_S / 2)
    assert blocked.is_alive()  # partition 0 was still blocked all along


def blocked_reports(caplog: pytest.LogCaptureFixture, workflow_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "duraflow.guard" and repr(workflow_id) in r.getMessage()
    ]


@pytest.mark.parametrize("runtime", ["local", pytest.param("ray", id="ray")])
def test_workflow_code_that_blocks_is_reported_and_marked_stuck_and_other_partitions_go_on(
    runtime: str,
    open_engine: Callable[..., df.Engine],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    if runtime == "ray":
        request.getfixturevalue("ray_session")
    caplog.set_level(logging.ERROR, logger="duraflow.guard")
    _rules["block"] = True
    client = open_engine().client()
    blocked_id = id_on(0, "blocks")
    handle = client.start(cr_blocks_on_signal, workflow_id=blocked_id)

    signalling, _ = in_thread(lambda: handle.signal("go"))  # replies after the blocked turn
    if runtime == "local":  # the watchdog of this process reports it while it blocks
        wait_until(lambda: blocked_reports(caplog, blocked_id), timeout=BLOCK_S, what="report")
        [report] = blocked_reports(caplog, blocked_id)
        assert "partition 0" in report and "time.sleep" in report
    assert_other_partition_goes_on(client, signalling)
    signalling.join()

    stuck = handle.describe().stuck
    assert stuck is not None and stuck.startswith("WorkflowBlocked: ")
    assert repr(blocked_id) in stuck and "time.sleep" in stuck and "signal_received" in stuck
    with pytest.raises(df.QueryFailed, match="cannot answer queries: WorkflowBlocked"):
        handle.query("anything")
    with pytest.raises(df.ResultTimeout):
        handle.result(timeout=0.2)


def test_a_stuck_blocking_run_goes_on_once_its_code_is_fixed_and_the_engine_reopened(
    open_engine: Callable[..., df.Engine],
) -> None:
    _rules["block"] = True
    engine = open_engine()
    handle = engine.client().start(cr_blocks_on_signal, workflow_id=id_on(0, "fixed"))
    handle.signal("go")  # returns after the blocked activation
    assert "WorkflowBlocked" in (handle.describe().stuck or "")
    engine.close()

    _rules["block"] = False  # the code is fixed
    try:
        reopened = open_engine().client().get_handle(handle.workflow_id)
        assert "done" == reopened.result(timeout=10)
    finally:
        _rules["block"] = True


def test_a_query_handler_that_blocks_fails_and_is_reported_and_marks_the_run_stuck(
    open_engine: Callable[..., df.Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="duraflow.guard")
    client = open_engine().client()
    handle = client.start(cr_slow_query, workflow_id=id_on(0, "slow-query"))
    wait_until(lambda: handle.describe().history_length >= 1, what="started")

    querying, outcome = in_thread(lambda: handle.query("slow"))
    wait_until(lambda: blocked_reports(caplog, handle.workflow_id), timeout=BLOCK_S, what="report")
    assert "query handler 'slow'" in blocked_reports(caplog, handle.workflow_id)[0]
    assert_other_partition_goes_on(client, querying)
    querying.join()

    [error] = outcome
    assert isinstance(error, df.QueryFailed)
    assert "held partition 0" in str(error) and "query handler 'slow'" in str(error)
    stuck = handle.describe().stuck
    assert stuck is not None and stuck.startswith("WorkflowBlocked: ")
    assert "query handler 'slow'" in stuck


def test_query_timeout_frees_the_caller_and_queries_queued_past_it_are_not_run(
    open_engine: Callable[..., df.Engine],
) -> None:
    _slow_calls.clear()
    client = open_engine(deadlock_threshold=None).client()  # no detector: the handler may take
    handle = client.start(cr_sleepy_query, workflow_id=id_on(0, "sleepy"))
    query_when_ready(handle, "calls")

    began = time.monotonic()
    with pytest.raises(df.QueryTimeout, match=r"no answer within 0\.2s") as caught:
        handle.query("sleepy", timeout=0.2)
    assert time.monotonic() - began < BLOCK_S / 2
    assert isinstance(caught.value, TimeoutError)

    async def two_more() -> list[Any]:  # sent while the partition is held by the first
        return await asyncio.gather(
            handle.query_async("sleepy", timeout=0.2),
            handle.query_async("sleepy", timeout="200ms"),
            return_exceptions=True,
        )

    assert [df.QueryTimeout, df.QueryTimeout] == [type(e) for e in asyncio.run(two_more())]
    assert 1 == handle.query("calls")  # once the partition is free: the handler ran once only
    assert handle.describe().stuck is None


def test_deadlock_threshold_must_be_positive(data_dir: Path) -> None:
    with pytest.raises(df.ConfigurationError, match="deadlock_threshold must be more than 0"):
        df.Engine(data_dir, runtime="local", deadlock_threshold=0)


# -- threads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("workflow", [cr_starts_thread, cr_uses_a_pool])
def test_workflow_code_cannot_start_a_thread(
    workflow: Any, open_engine: Callable[..., df.Engine]
) -> None:
    _thread_ran.clear()
    handle = open_engine().client().start(workflow, workflow_id=id_on(0, "thread"))
    with pytest.raises(df.WorkflowFailedError) as failed:
        handle.result(timeout=10)
    assert "WorkflowCodeError" == failed.value.cause_type
    assert "may not start threads" in failed.value.cause_message
    assert "@activity" in failed.value.cause_message
    assert not _thread_ran.is_set()


def test_a_query_handler_cannot_start_a_thread(open_engine: Callable[..., df.Engine]) -> None:
    _thread_ran.clear()
    handle = open_engine().client().start(cr_thread_in_query, workflow_id=id_on(0, "q-thread"))
    wait_until(lambda: handle.describe().history_length >= 1, what="started")
    with pytest.raises(df.QueryFailed, match=r"WorkflowCodeError: .*may not start threads"):
        query_when_ready(handle, "spawn")
    assert not _thread_ran.is_set()
    handle.signal("go")
    assert "done" == handle.result(timeout=10)  # a refused thread is the query's failure only


def test_threads_outside_workflow_code_still_start(open_engine: Callable[..., df.Engine]) -> None:
    open_engine()
    ran = threading.Event()
    thread = threading.Thread(target=ran.set)
    thread.start()
    thread.join()
    assert ran.is_set()


# -- query handlers are read-only -----------------------------------------------------------------


def test_a_query_handler_that_wakes_workflow_code_fails_and_the_run_is_rebuilt(
    open_engine: Callable[..., df.Engine],
) -> None:
    handle = open_engine().client().start(cr_query_wakes, workflow_id=id_on(0, "wakes"))
    assert "pong" == query_when_ready(handle, "ping")

    with pytest.raises(df.QueryFailed, match=r"changed the run's state .*woke workflow code"):
        handle.query("approve")

    # The wake-up never happened for the run: it was rebuilt from its history.
    with pytest.raises(df.ResultTimeout):
        handle.result(timeout=0.3)
    assert "pong" == handle.query("ping")
    description = handle.describe()
    assert ("running", None) == (description.status, description.stuck)


def test_a_query_handler_that_resizes_shared_state_fails_and_the_change_is_undone(
    open_engine: Callable[..., df.Engine],
) -> None:
    handle = open_engine().client().start(cr_query_appends, workflow_id=id_on(0, "appends"))
    assert [] == query_when_ready(handle, "items")

    with pytest.raises(df.QueryFailed, match="rebound or resized a variable"):
        handle.query("add", "from-a-query")

    assert [] == handle.query("items")
    handle.signal("item", "from-a-signal")
    handle.signal("done")
    assert ["from-a-signal"] == handle.result(timeout=10)  # what a replay gives too


def test_a_deep_change_by_a_query_handler_is_not_caught_and_a_replay_forgets_it(
    open_engine: Callable[..., df.Engine],
) -> None:
    """Documents the limit of the cheap check (README "Rules for workflow code"): a value
    changed inside a shared dict is not seen. The live run keeps the change; a replay (after a
    restart, or hibernation) does not, so the run's result depends on whether it was evicted."""
    engine = open_engine()
    handle = engine.client().start(cr_query_bumps, workflow_id=id_on(0, "bumps"))
    assert 0 == query_when_ready(handle, "count")
    assert 1 == handle.query("bump")
    assert 1 == handle.query("count")  # the live run changed
    engine.close()

    handle = open_engine().client().get_handle(handle.workflow_id)
    assert 0 == handle.query("count")  # the replay of the same history did not
    handle.signal("done")
    assert 0 == handle.result(timeout=10)


def test_a_query_handler_cannot_set_query_handlers(open_engine: Callable[..., df.Engine]) -> None:
    handle = open_engine().client().start(cr_query_sets, workflow_id=id_on(0, "sets"))
    with pytest.raises(df.QueryFailed, match="read-only: they cannot set query handlers"):
        query_when_ready(handle, "add_handler")
    with pytest.raises(df.UnknownQuery):
        handle.query("added")


EMBEDDER = """
import threading, duraflow as df
seen = []
original = threading.Thread.start
def counted(self):
    seen.append(self.name)
    original(self)
threading.Thread.start = counted  # the embedding application's own hook, set first

@df.workflow
async def spawns(ctx):
    threading.Thread(target=print, name="from-workflow").start()

with df.Engine({data_dir!r}, runtime="local", partitions=1, archive=False) as engine:
    try:
        engine.client().start(spawns, workflow_id="w").result(timeout=10)
    except df.WorkflowFailedError as exc:
        assert exc.cause_type == "WorkflowCodeError", exc
    t = threading.Thread(target=lambda: None, name="from-app")
    t.start(); t.join()
assert "from-app" in seen and "from-workflow" not in seen, seen
print("ok")
"""


def test_an_embedders_own_thread_start_hook_is_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = EMBEDDER.format(data_dir=str(tmp_path / "data"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert "ok" in done.stdout, done.stderr[-2000:]
