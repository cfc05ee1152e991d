"""Replay: a run rebuilt from its history reaches the same state, and divergence is refused.

(a) pure: histories recorded by driving WorkflowRun by hand, or read back from a real
    engine's SQLite file, are rebuilt with ``rebuild(definition, history)``;
(b) through the engine: runs parked mid-way survive a close and reopen of the data directory
    and finish with the result of an uninterrupted run, with no activity run twice;
(c) changed workflow code is caught at the first differing command, naming both;
(d) the Python minor version is recorded, and a history from another version is refused.

Every workflow and activity name here starts with ``rp_`` (the registry is global).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

import duraflow as df
from duraflow.actors.local_host import partition_path
from duraflow.actors.router import partition_of
from duraflow.cdc import events as ev
from duraflow.engine.definitions import WorkflowDefinition, workflow_definition
from duraflow.engine.replay import rebuild
from duraflow.engine.run import PYTHON_VERSION, WorkflowRun
from duraflow.storage.codec import decode, encode
from duraflow.storage.sqlite_store import PartitionStore
from duraflow.testing import WorkflowEnvironment

T = TypeVar("T")

PARTITIONS = 2

# -- helpers --------------------------------------------------------------------------------------

_calls: collections.Counter[tuple[str, str]] = collections.Counter()
_calls_lock = threading.Lock()


def calls_of(key: str) -> dict[str, int]:
    with _calls_lock:
        return {label: n for (k, label), n in _calls.items() if k == key}


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def open_engine(data_dir: Path) -> df.Engine:
    return df.Engine(data_dir, runtime="local", partitions=PARTITIONS, synchronous="NORMAL")


def phase(handle: df.WorkflowHandle) -> str | None:
    try:
        return handle.query("phase")  # type: ignore[no-any-return]
    except df.UnknownQuery:
        return None


def wait_phase(handle: df.WorkflowHandle, expected: str) -> None:
    wait_until(lambda: phase(handle) == expected, what=f"{handle.workflow_id} {expected}")


def stored_history(data_dir: Path, workflow_id: str, run_id: str) -> list[ev.AnyEvent]:
    """A run's history read back from its partition's SQLite file (engine closed)."""
    store = PartitionStore(partition_path(data_dir, partition_of(workflow_id, PARTITIONS)))
    try:
        return store.history(workflow_id, run_id)
    finally:
        store.close()


class Recorder:
    """Drives a WorkflowRun by hand, the way a partition does, and keeps the history it makes."""

    def __init__(self, definition: WorkflowDefinition, *args: Any, python: str = PYTHON_VERSION):
        self.at_us = 1_700_000_000_000_000
        self.history: list[ev.Event] = []
        started = ev.WorkflowStarted(
            **self._base(definition.name), args=encode(list(args)), python=python
        )
        self.base = {k: getattr(started, k) for k in ("workflow_id", "run_id", "workflow_type")}
        self.run = WorkflowRun(definition, started)
        self.commands = self.feed(started)

    def _base(self, name: str) -> dict[str, Any]:
        return {"workflow_id": "rp-hand", "run_id": uuid.uuid4().hex, "workflow_type": name}

    def _stamp(self, event: ev.Event) -> None:
        event.event_id = len(self.history) + 1
        event.lsn = event.event_id
        self.history.append(event)

    def feed(self, event: ev.Event) -> list[ev.Event]:
        self._stamp(event)
        commands = self.run.activate(event)
        for command in commands:
            self._stamp(command)
        self.commands = commands
        return commands

    def resolve(self, cls: type[ev.Event], **fields: Any) -> list[ev.Event]:
        self.at_us += 1_000_000
        return self.feed(cls(**self.base, at_us=self.at_us, **fields))


def summary(events: list[ev.Event]) -> list[tuple[Any, ...]]:
    """Type, seq and activity of events (the parts replay matches on)."""
    return [
        (ev.event_type(e), getattr(e, "seq", None), getattr(e, "activity", None)) for e in events
    ]


# -- activities and workflows ----------------------------------------------------------------------


@df.activity
def rp_step(key: str, label: str) -> str:
    with _calls_lock:
        _calls[(key, label)] += 1
    return f"{label}!"


@df.activity
def rp_add_one(x: int) -> int:
    return x + 1


@df.workflow
async def rp_pure(ctx: df.WorkflowContext, n: int) -> dict[str, Any]:
    state: dict[str, Any] = {"total": 0, "random": ctx.random()}
    ctx.set_query_handler("state", lambda: dict(state))
    for i in range(n):
        state["total"] += await ctx.activity(rp_add_one, i)
    await ctx.sleep(10)
    state["bonus"] = await ctx.wait_for_signal("bonus")
    state["uuid"] = str(ctx.uuid4())
    state["now"] = ctx.time()
    return state


@df.workflow
async def rp_midway(ctx: df.WorkflowContext, key: str) -> list[Any]:
    a = await ctx.activity(rp_step, key, "a")
    b = await ctx.activity(rp_step, key, "b")
    g1, g2 = await asyncio.gather(
        ctx.activity(rp_step, key, "g1"), ctx.activity(rp_step, key, "g2")
    )
    items: list[Any] = [] if (g1, g2) == ("g1!", "g2!") else ["gather went wrong"]
    ctx.set_query_handler("phase", lambda: "waiting")
    ctx.set_query_handler("items", lambda: list(items))
    go = await ctx.wait_for_signal("go", timeout=60)  # a durable timer, cancelled by the signal
    while len(items) < go:
        items.append(await ctx.wait_for_signal("item"))
    c = await ctx.activity(rp_step, key, "c")
    await ctx.sleep(0.05)
    d = await ctx.activity(rp_step, key, "d")
    return [a, b, items, c, d]


@df.activity
async def rp_slow(key: str, label: str, seconds: float) -> str:
    await asyncio.sleep(seconds)
    with _calls_lock:
        _calls[(key, label)] += 1
    return f"{label}!"


@df.workflow
async def rp_timeouts(ctx: df.WorkflowContext, key: str) -> list[Any]:
    out: list[Any] = []
    try:
        await asyncio.wait_for(ctx.activity(rp_slow, key, "too-slow", 5.0), 0.02)
    except asyncio.TimeoutError:
        out.append("timed out")
    out.append(await asyncio.wait_for(ctx.activity(rp_slow, key, "quick", 0.0), 30))
    try:
        async with asyncio.timeout(0.02):
            await ctx.wait_for_signal("never")
    except TimeoutError:
        out.append("no signal")
    ctx.set_query_handler("phase", lambda: "waiting")
    async with asyncio.timeout(60):
        out.append(await ctx.wait_for_signal("go"))
    out.append(await ctx.activity(rp_step, key, "after"))
    return out


@df.workflow
async def rp_timer_parked(ctx: df.WorkflowContext, key: str, seconds: float) -> list[Any]:
    a = await ctx.activity(rp_step, key, "a")
    ctx.set_query_handler("phase", lambda: "sleeping")
    await ctx.sleep(seconds)
    b = await ctx.activity(rp_step, key, "b")
    timed_out = await ctx.wait_for_signal("never", timeout=seconds, default="default")
    return [a, b, timed_out]


@df.workflow
async def rp_child(ctx: df.WorkflowContext, key: str) -> str:
    await ctx.activity(rp_step, key, "child-a")
    got = await ctx.wait_for_signal("go")
    return f"child got {got}"


@df.workflow
async def rp_parent(ctx: df.WorkflowContext, key: str) -> list[Any]:
    first = await ctx.activity(rp_step, key, "parent-a")
    child = await ctx.start_child(rp_child, key, workflow_id=f"{key}-child")
    ctx.set_query_handler("phase", lambda: "waiting for child")
    out = await child.result()
    last = await ctx.activity(rp_step, key, "parent-b")
    return [first, out, last]


@df.workflow(name="rp_same_name")
async def rp_div_v1(ctx: df.WorkflowContext, key: str) -> str:
    await ctx.activity(rp_step, key, "v1-a")
    ctx.set_query_handler("phase", lambda: "waiting")
    await ctx.wait_for_signal("go")
    return await ctx.activity(rp_step, key, "v1-b")


@df.workflow(name="rp_version_parked")
async def rp_version_parked(ctx: df.WorkflowContext, key: str) -> str:
    await ctx.activity(rp_step, key, "a")
    ctx.set_query_handler("phase", lambda: "waiting")
    return await ctx.wait_for_signal("go")  # type: ignore[no-any-return]


# A second body for the name "rp_same_name", kept out of the registry (for pure rebuilds).
async def _rp_div_v2(ctx: df.WorkflowContext, key: str) -> str:
    await ctx.activity(rp_add_one, 1)
    await ctx.wait_for_signal("go")
    return "v2"


async def _rp_div_timer_first(ctx: df.WorkflowContext, key: str) -> str:
    await ctx.sleep(1)
    return "slept"


async def _rp_div_short(ctx: df.WorkflowContext, key: str) -> str:
    return "did nothing"


def unregistered(fn: Callable[..., Any], name: str = "rp_same_name") -> WorkflowDefinition:
    return WorkflowDefinition(name, fn, f"{fn.__module__}:{fn.__qualname__}", "0")


@pytest.fixture
def restore_same_name() -> Iterator[None]:
    """Tests that re-register 'rp_same_name' put the original body back afterwards."""
    yield
    df.workflow(name="rp_same_name")(rp_div_v1)


# -- (a) pure replay -------------------------------------------------------------------------------


def drive_pure(n: int) -> Recorder:
    rec = Recorder(workflow_definition(rp_pure), n)
    for i in range(n):
        assert [("workflow.activity_scheduled", i + 1, "rp_add_one")] == summary(rec.commands)
        rec.resolve(ev.ActivityCompleted, seq=i + 1, activity="rp_add_one", result=encode(i + 1))
    assert [("workflow.timer_started", n + 1, None)] == summary(rec.commands)
    return rec


def test_rebuild_of_a_hand_recorded_history_reaches_the_same_state() -> None:
    rec = drive_pure(3)
    rec.resolve(ev.TimerFired, seq=4)
    assert [] == rec.commands
    live_state = rec.run.query("state", [])
    assert {"total": 6, "random": live_state["random"]} == live_state

    rebuilt, new = rebuild(rec.run.definition, list(rec.history))
    assert [] == new
    assert live_state == rebuilt.query("state", [])
    assert rebuilt.closed is None
    assert not rebuilt.replaying

    rec.resolve(ev.SignalReceived, name="bonus", payload=encode(100))
    assert ["workflow.completed"] == [ev.event_type(e) for e in rec.commands]
    result = decode(rec.commands[0].result)  # type: ignore[attr-defined]
    assert 106 == result["total"] + result["bonus"]

    # The rebuilt run continues like the original one when fed the same next event.
    signal = rec.history[-2]
    assert isinstance(signal, ev.SignalReceived)
    more = rebuilt.activate(signal)
    assert ["workflow.completed"] == [ev.event_type(e) for e in more]
    assert result == decode(more[0].result)  # type: ignore[attr-defined]

    # And the full history rebuilds to a closed run with the same result.
    closed_run, new = rebuild(rec.run.definition, list(rec.history))
    assert [] == new
    assert isinstance(closed_run.closed, ev.WorkflowCompleted)
    assert result == decode(closed_run.closed.result)


def test_rebuild_returns_commands_history_does_not_hold_yet() -> None:
    rec = drive_pure(2)
    # Cut the history right after the first activity's completion: its follow-up command
    # (scheduling the second activity) was never written.
    cut = next(i for i, e in enumerate(rec.history) if isinstance(e, ev.ActivityCompleted))
    run, new = rebuild(rec.run.definition, rec.history[: cut + 1])
    assert [("workflow.activity_scheduled", 2, "rp_add_one")] == summary(new)
    assert {"total": 1} == {"total": run.query("state", [])["total"]}


def test_rebuild_of_a_history_read_from_a_real_engine(data_dir: Path) -> None:
    key = f"rp-file-{uuid.uuid4().hex[:8]}"
    with open_engine(data_dir) as engine:
        client = engine.client()
        handle = client.start(rp_midway, key, workflow_id=key)
        wait_until(lambda: phase(handle) == "waiting", what="parked")
        handle.signal("item", "x")
        handle.signal("go", 1)
        result = handle.result(timeout=10)
        parked = client.start(rp_midway, key + "-p", workflow_id=key + "-p")
        wait_until(lambda: phase(parked) == "waiting", what="parked")
        parked.signal("go", 2)
        parked.signal("item", "first")
        wait_until(lambda: ["first"] == parked.query("items"), what="signal taken")

    history = stored_history(data_dir, key, handle.run_id or "")
    assert "workflow.started" == ev.event_type(history[0])
    assert "workflow.completed" == ev.event_type(history[-1])
    assert list(range(1, len(history) + 1)) == [e.event_id for e in history]
    run, new = rebuild(workflow_definition(rp_midway), history)
    assert [] == new
    assert isinstance(run.closed, ev.WorkflowCompleted)
    assert result == decode(run.closed.result)
    run.discard()

    # The same through plain sqlite3 and decode_event, for a run still parked mid-way.
    path = partition_path(data_dir, partition_of(key + "-p", PARTITIONS))
    conn = sqlite3.connect(path)
    try:
        bodies = conn.execute(
            "SELECT body FROM workflow_history WHERE workflow_id = ? ORDER BY event_id",
            (key + "-p",),
        ).fetchall()
    finally:
        conn.close()
    parked_history = [ev.decode_event(b) for (b,) in bodies]
    run, new = rebuild(workflow_definition(rp_midway), parked_history)
    assert [] == new
    assert run.closed is None
    assert ["first"] == run.query("items", [])
    run.discard()


# -- (b) through the engine: close, reopen, continue ---------------------------------------------


def test_parked_runs_finish_after_reopen_with_the_uninterrupted_result(data_dir: Path) -> None:
    keys = [f"rp-mid-{i}-{uuid.uuid4().hex[:8]}" for i in range(4)]
    with open_engine(data_dir) as engine:
        client = engine.client()
        # The reference: one run that is never interrupted.
        ref = client.start(rp_midway, keys[0], workflow_id=keys[0])
        wait_until(lambda: phase(ref) == "waiting", what="reference parked")
        for item in ("i1", "i2"):
            ref.signal("item", item)
        ref.signal("go", 2)
        expected = ref.result(timeout=10)
        assert ["a!", "b!", ["i1", "i2"], "c!", "d!"] == expected
        assert 0 == engine_timers(data_dir, keys[0])

        handles = [client.start(rp_midway, k, workflow_id=k) for k in keys[1:]]
        for h in handles:
            wait_phase(h, "waiting")
            h.signal("item", "i1")  # buffered, before the restart
        assert {"running"} == {h.describe().status for h in handles}

    with open_engine(data_dir) as engine:
        client = engine.client()
        for h in handles:
            again = client.get_handle(h.workflow_id)
            assert [] == again.query("items")  # rebuilt by replay; items are taken after "go"
            again.signal("item", "i2")
            again.signal("go", 2)
        for h in handles:
            assert expected == client.get_handle(h.workflow_id).result(timeout=10)
            assert h.run_id == client.get_handle(h.workflow_id).describe().run_id

    for k in keys:
        assert {"a": 1, "b": 1, "g1": 1, "g2": 1, "c": 1, "d": 1} == calls_of(k)
        assert 0 == engine_timers(data_dir, k)


def engine_timers(data_dir: Path, workflow_id: str) -> int:
    """Durable timer rows of a workflow (readable while the engine is open: WAL)."""
    conn = sqlite3.connect(partition_path(data_dir, partition_of(workflow_id, PARTITIONS)))
    try:
        (n,) = conn.execute(
            "SELECT count(*) FROM workflow_timers WHERE workflow_id = ?", (workflow_id,)
        ).fetchone()
    finally:
        conn.close()
    return int(n)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_asyncio_timeouts_replay_after_reopen(data_dir: Path) -> None:
    keys = [f"rp-timeouts-{i}-{uuid.uuid4().hex[:8]}" for i in range(2)]
    expected = ["timed out", "quick!", "no signal", "go!", "after!"]
    with open_engine(data_dir) as engine:
        client = engine.client()
        ref = client.start(rp_timeouts, keys[0], workflow_id=keys[0])
        wait_until(lambda: phase(ref) == "waiting", what="reference parked")
        ref.signal("go", "go!")
        assert expected == ref.result(timeout=10)
        parked = client.start(rp_timeouts, keys[1], workflow_id=keys[1])
        wait_until(lambda: phase(parked) == "waiting", what="parked")
        assert 1 == engine_timers(data_dir, keys[1])  # the asyncio.timeout(60) deadline

    with open_engine(data_dir) as engine:
        again = engine.client().get_handle(keys[1])
        again.signal("go", "go!")
        assert expected == again.result(timeout=10)
        assert again.describe().stuck is None
    assert 0 == engine_timers(data_dir, keys[1])
    for k in keys:
        assert {"quick": 1, "after": 1} == calls_of(k)  # "too-slow" was cancelled in time


def test_runs_parked_on_timers_fire_overdue_timers_after_reopen(data_dir: Path) -> None:
    # On a stepped clock: the engine closes at START and opens again a day later, so the hour
    # long sleeps fell due while no engine was open. They fire as the partitions open; the
    # signal timeout that follows fires an hour after that.
    start = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    keys = [f"rp-timer-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    with WorkflowEnvironment.start_local(
        data_dir=data_dir, partitions=PARTITIONS, start_time=start
    ) as env:
        handles = [env.client.start(rp_timer_parked, k, 3600, workflow_id=k) for k in keys]
        for h in handles:
            wait_phase(h, "sleeping")

    reopened = start + dt.timedelta(days=1)
    with WorkflowEnvironment.start_time_skipping(
        data_dir=data_dir, partitions=PARTITIONS, start_time=reopened
    ) as env:
        for h in handles:
            handle = env.client.get_handle(h.workflow_id)
            assert ["a!", "b!", "default"] == handle.result(timeout=30)
            fired = [e.at_us for e in handle.history() if isinstance(e, ev.TimerFired)]
            assert [reopened, reopened + dt.timedelta(hours=1)] == [
                dt.datetime.fromtimestamp(us / 1e6, tz=dt.timezone.utc) for us in fired
            ]
    for k in keys:
        assert {"a": 1, "b": 1} == calls_of(k)


def test_parent_waiting_on_a_child_continues_after_reopen(data_dir: Path) -> None:
    key = f"rp-family-{uuid.uuid4().hex[:8]}"
    with open_engine(data_dir) as engine:
        client = engine.client()
        parent = client.start(rp_parent, key, workflow_id=key)
        wait_until(lambda: phase(parent) == "waiting for child", what="parent parked")
        child = client.get_handle(f"{key}-child")
        wait_until(lambda: calls_of(key).get("child-a") == 1, what="child ran its activity")
        wait_until(lambda: not child.describe().pending_activities, what="child parked")

    with open_engine(data_dir) as engine:
        client = engine.client()
        client.get_handle(f"{key}-child").signal("go", "late")
        assert ["parent-a!", "child got late", "parent-b!"] == client.get_handle(key).result(
            timeout=10
        )
        assert key == client.get_handle(f"{key}-child").describe().parent_workflow_id
    assert {"parent-a": 1, "child-a": 1, "parent-b": 1} == calls_of(key)


def test_query_after_reopen_replays_without_running_activities(data_dir: Path) -> None:
    key = f"rp-query-{uuid.uuid4().hex[:8]}"
    with open_engine(data_dir) as engine:
        handle = engine.client().start(rp_midway, key, workflow_id=key)
        wait_until(lambda: phase(handle) == "waiting", what="parked")
        length = handle.describe().history_length
    with open_engine(data_dir) as engine:
        again = engine.client().get_handle(key)
        assert "waiting" == again.query("phase")
        assert length == again.describe().history_length
        again.terminate("done")
    assert {"a": 1, "b": 1, "g1": 1, "g2": 1} == calls_of(key)


# -- (c) divergence --------------------------------------------------------------------------------


def test_changed_code_is_refused_on_replay_naming_both_commands(
    data_dir: Path, restore_same_name: None
) -> None:
    key = f"rp-diverge-{uuid.uuid4().hex[:8]}"
    with open_engine(data_dir) as engine:
        handle = engine.client().start("rp_same_name", key, workflow_id=key)
        wait_until(lambda: phase(handle) == "waiting", what="parked")

    @df.workflow(name="rp_same_name")
    async def rp_div_changed(ctx: df.WorkflowContext, key: str) -> str:
        await ctx.sleep(0.01)  # a timer where history holds an activity
        ctx.set_query_handler("phase", lambda: "waiting")
        await ctx.wait_for_signal("go")
        return "changed"

    with open_engine(data_dir) as engine:
        client = engine.client()
        again = client.get_handle(key)
        again.signal("go")
        described = again.describe()
        assert "running" == described.status
        assert described.stuck is not None
        assert described.stuck.startswith("NonDeterminismError")
        assert "history recorded activity_scheduled 'rp_step' (seq 1)" in described.stuck
        assert "replayed code issued timer_started (seq 1)" in described.stuck
        with pytest.raises(df.ResultTimeout):
            again.result(timeout=0.2)
        with pytest.raises(df.QueryFailed):
            again.query("phase")
    assert {"v1-a": 1} == calls_of(key)  # neither the old nor the new code ran on


def test_divergence_names_the_recorded_and_the_issued_activity(
    data_dir: Path, restore_same_name: None
) -> None:
    from duraflow.engine.definitions import activity

    @activity(name="rp_div_other_activity")
    def rp_div_other_activity(key: str) -> str:
        return key

    key = f"rp-diverge-names-{uuid.uuid4().hex[:8]}"
    with open_engine(data_dir) as engine:
        handle = engine.client().start("rp_same_name", key, workflow_id=key)
        wait_until(lambda: phase(handle) == "waiting", what="parked")

    @df.workflow(name="rp_same_name")
    async def rp_div_renamed(ctx: df.WorkflowContext, key: str) -> str:
        await ctx.activity(rp_div_other_activity, key)
        await ctx.wait_for_signal("go")
        return "renamed"

    with open_engine(data_dir) as engine:
        again = engine.client().get_handle(key)
        again.signal("go")
        stuck = again.describe().stuck
        assert stuck is not None
        assert "NonDeterminismError" in stuck
        assert "'rp_step'" in stuck
        assert "'rp_div_other_activity'" in stuck
    assert {"v1-a": 1} == calls_of(key)


def test_fixed_code_continues_a_stuck_run_after_reopen(
    data_dir: Path, restore_same_name: None
) -> None:
    key = f"rp-diverge-fixed-{uuid.uuid4().hex[:8]}"
    with open_engine(data_dir) as engine:
        handle = engine.client().start("rp_same_name", key, workflow_id=key)
        wait_until(lambda: phase(handle) == "waiting", what="parked")

    @df.workflow(name="rp_same_name")
    async def rp_div_broken(ctx: df.WorkflowContext, key: str) -> str:
        await ctx.activity(rp_add_one, 1)
        await ctx.wait_for_signal("go")
        return "broken"

    with open_engine(data_dir) as engine:
        again = engine.client().get_handle(key)
        again.signal("go")  # recorded, but the run is stuck
        assert again.describe().stuck is not None

    # With the original code back, the run continues, with the signal that arrived meanwhile.
    df.workflow(name="rp_same_name")(rp_div_v1)
    with open_engine(data_dir) as engine:
        again = engine.client().get_handle(key)
        assert "v1-b!" == again.result(timeout=0.5)
    assert {"v1-a": 1, "v1-b": 1} == calls_of(key)


def test_pure_rebuild_with_changed_code_raises_non_determinism_error() -> None:
    rec = Recorder(workflow_definition(rp_div_v1), "k")
    rec.resolve(ev.ActivityCompleted, seq=1, activity="rp_step", result=encode("v1-a!"))
    history = list(rec.history)

    with pytest.raises(df.NonDeterminismError) as caught:
        rebuild(unregistered(_rp_div_v2), history)
    assert (
        "event 2: history recorded activity_scheduled 'rp_step' (seq 1), "
        "replayed code issued activity_scheduled 'rp_add_one' (seq 1)"
    ) == str(caught.value)

    with pytest.raises(df.NonDeterminismError, match=r"'rp_step'.*issued timer_started"):
        rebuild(unregistered(_rp_div_timer_first), history)

    with pytest.raises(df.NonDeterminismError) as caught:
        rebuild(unregistered(_rp_div_short), history)
    assert (
        "event 2: history recorded activity_scheduled 'rp_step' (seq 1), "
        "replayed code issued completed"
    ) == str(caught.value)

    # The original code rebuilds the same history without complaint.
    run, new = rebuild(workflow_definition(rp_div_v1), history)
    assert [] == new
    assert "waiting" == run.query("phase", [])


def test_pure_rebuild_refuses_a_history_the_code_never_reaches() -> None:
    rec = drive_pure(2)

    async def stops_early(ctx: df.WorkflowContext, n: int) -> str:
        await ctx.activity(rp_add_one, 0)
        await ctx.wait_for_signal("bonus")
        return "early"

    # The code waits for a signal where history scheduled a second activity: the completion
    # of that activity finds nothing waiting for it.
    with pytest.raises(df.NonDeterminismError, match="activity_completed for seq 2"):
        rebuild(unregistered(stops_early, "rp_pure"), list(rec.history))


def test_pure_rebuild_refuses_a_different_close() -> None:
    async def returns(ctx: df.WorkflowContext) -> str:
        return "ok"

    async def raises(ctx: df.WorkflowContext) -> str:
        raise ValueError("changed")

    rec = Recorder(unregistered(returns, "rp_close"))
    assert ["workflow.completed"] == [ev.event_type(e) for e in rec.history[1:]]
    with pytest.raises(df.NonDeterminismError) as caught:
        rebuild(unregistered(raises, "rp_close"), list(rec.history))
    assert "event 2: history recorded completed, replayed code issued failed" == str(caught.value)


# -- (d) Python version ----------------------------------------------------------------------------


def test_python_minor_version_is_recorded_in_workflow_started(data_dir: Path) -> None:
    key = f"rp-python-{uuid.uuid4().hex[:8]}"
    with open_engine(data_dir) as engine:
        handle = engine.client().start(rp_midway, key, workflow_id=key)
        wait_until(lambda: phase(handle) == "waiting", what="parked")
        handle.terminate("done")
    started = stored_history(data_dir, key, handle.run_id or "")[0]
    assert isinstance(started, ev.WorkflowStarted)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == started.python
    assert PYTHON_VERSION == started.python


def test_pure_rebuild_refuses_a_history_from_another_python_version() -> None:
    rec = Recorder(workflow_definition(rp_div_v1), "k", python="3.99")
    with pytest.raises(df.NonDeterminismError) as caught:
        rebuild(rec.run.definition, list(rec.history))
    message = str(caught.value)
    assert "recorded on Python 3.99" in message
    assert f"cannot be replayed on Python {PYTHON_VERSION}" in message


def test_engine_refuses_a_history_claiming_another_python_version(data_dir: Path) -> None:
    key = f"rp-python-other-{uuid.uuid4().hex[:8]}"
    with open_engine(data_dir) as engine:
        handle = engine.client().start(rp_version_parked, key, workflow_id=key)
        wait_until(lambda: phase(handle) == "waiting", what="parked")

    # Rewrite the recorded workflow.started as if another Python had made it.
    path = partition_path(data_dir, partition_of(key, PARTITIONS))
    conn = sqlite3.connect(path)
    try:
        (body,) = conn.execute(
            "SELECT body FROM workflow_history WHERE workflow_id = ? AND event_id = 1", (key,)
        ).fetchone()
        started = ev.decode_event(body)
        assert isinstance(started, ev.WorkflowStarted)
        other = msgspec.structs.replace(started, python="3.99")
        with conn:
            conn.execute(
                "UPDATE workflow_history SET body = ? WHERE workflow_id = ? AND event_id = 1",
                (ev.encode_event(other), key),
            )
    finally:
        conn.close()

    with open_engine(data_dir) as engine:
        again = engine.client().get_handle(key)
        again.signal("go", "x")
        stuck = again.describe().stuck
        assert stuck is not None
        assert stuck.startswith("NonDeterminismError")
        assert "Python 3.99" in stuck
        assert f"Python {PYTHON_VERSION}" in stuck
        assert "running" == again.describe().status
        with pytest.raises(df.ResultTimeout):
            again.result(timeout=0.1)
