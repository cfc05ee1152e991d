"""duraflow.testing: the stepped-clock WorkflowEnvironment and the Replayer.

Workflow and activity names start with ``tt_`` (the registry is global to the session).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from duraflow.testing import Replayer, WorkflowEnvironment, load_history, save_history

START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
DAY_S = 86_400.0
PATIENCE_S = 60  # wall-clock patience for a result; never reached when things work


def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.005)
    return value


_gates: dict[str, threading.Event] = {}
_started: dict[str, int] = {}


@df.activity(retry=df.RetryPolicy(initial_interval="1h", backoff_coefficient=2.0))
def tt_flaky(fail_times: int) -> int:
    info = df.activity_info()
    if info.attempt <= fail_times:
        raise RuntimeError(f"attempt {info.attempt} failed")
    return info.attempt


@df.activity
def tt_gate(key: str) -> str:
    _started[key] = _started.get(key, 0) + 1
    _gates[key].wait(PATIENCE_S)
    return "opened"


@df.workflow
async def tt_month(ctx: df.WorkflowContext) -> dict:
    begun = ctx.now()
    await ctx.sleep("30d")
    return {"begun": begun.isoformat(), "slept_s": (ctx.now() - begun).total_seconds()}


@df.workflow
async def tt_sleeps(ctx: df.WorkflowContext) -> list[float]:
    t0 = ctx.time()
    await ctx.sleep("10m")
    t1 = ctx.time()
    await asyncio.sleep(15 * 60)
    return [t1 - t0, ctx.time() - t0]


@df.workflow
async def tt_retried(ctx: df.WorkflowContext, fail_times: int) -> dict:
    t0 = ctx.time()
    attempt = await ctx.activity(tt_flaky, fail_times)
    return {"attempt": attempt, "elapsed_s": ctx.time() - t0}


@df.workflow
async def tt_gated(ctx: df.WorkflowContext, key: str) -> dict:
    t0 = ctx.time()
    opened = await ctx.activity(tt_gate, key, start_to_close_timeout="1h")
    await ctx.sleep("1d")
    return {"opened": opened, "elapsed_s": ctx.time() - t0}


@df.workflow
async def tt_signal_or_timeout(ctx: df.WorkflowContext) -> object:
    return await ctx.wait_for_signal("go", timeout="2h", default="timed out")


# -- time skipping -----------------------------------------------------------------------------


def test_a_thirty_day_sleep_takes_no_wall_time_when_skipping() -> None:
    with WorkflowEnvironment.start_time_skipping(start_time=START) as env:
        began = time.monotonic()
        result = env.client.execute(tt_month, timeout=PATIENCE_S)
        wall_s = time.monotonic() - began

        assert {"begun": START.isoformat(), "slept_s": 30 * DAY_S} == result
        assert START + dt.timedelta(days=30) == env.now()
    assert wall_s < PATIENCE_S / 2  # milliseconds in practice; generous on a loaded machine


def test_retry_backoff_follows_the_stepped_clock() -> None:
    # waits 1 h then 2 h: three attempts, three hours of workflow time, no wall time
    with WorkflowEnvironment.start_time_skipping(start_time=START) as env:
        handle = env.client.start(tt_retried, 2)
        assert {"attempt": 3, "elapsed_s": 3 * 3600.0} == handle.result(timeout=PATIENCE_S)
        retries = [e for e in handle.history() if isinstance(e, ev.ActivityRetry)]

    planned = [(e.next_attempt_at_us - e.at_us) / 1e6 for e in retries]
    assert [3600.0, 7200.0] == planned


def test_a_running_activity_holds_the_clock() -> None:
    key = uuid.uuid4().hex
    _gates[key] = threading.Event()
    with WorkflowEnvironment.start_time_skipping(start_time=START) as env:
        handle = env.client.start(tt_gated, key)
        waiting = threading.Thread(target=handle.result, kwargs={"timeout": PATIENCE_S})
        waiting.start()
        wait_until(lambda: _started.get(key), what="the activity to start")
        time.sleep(0.05)  # the skipper looks every few ms: it must leave the clock alone
        assert START == env.now()  # its start_to_close_timeout of 1 h did not fire

        _gates[key].set()
        result = handle.result(timeout=PATIENCE_S)
        waiting.join()
    assert {"opened": "opened", "elapsed_s": DAY_S} == result


@df.workflow
async def tt_two_signals(ctx: df.WorkflowContext) -> dict:
    t0 = ctx.time()
    first = await ctx.wait_for_signal("first", timeout="1d")  # the signal beats the timer
    await ctx.activity(tt_flaky, 0, start_to_close_timeout="1h")  # done at once
    second = await ctx.wait_for_signal("second")  # no timer at all
    return {"got": [first, second], "elapsed_s": ctx.time() - t0}


def test_time_does_not_skip_to_cancelled_timers_or_finished_attempts_deadlines() -> None:
    with WorkflowEnvironment.start_time_skipping(start_time=START) as env:
        handle = env.client.start(tt_two_signals)
        handle.signal("first", 1)
        wait_until(lambda: handle.describe().history_length >= 6, what="waiting for 'second'")
        waiting = threading.Thread(target=handle.result, kwargs={"timeout": PATIENCE_S})
        waiting.start()
        time.sleep(0.05)  # the skipper looks every few ms: nothing live is due, ever
        assert START == env.now()
        handle.signal("second", 2)
        waiting.join()

        assert {"got": [1, 2], "elapsed_s": 0.0} == handle.result(timeout=PATIENCE_S)


def test_time_skips_only_while_a_client_waits_for_a_result() -> None:
    with WorkflowEnvironment.start_time_skipping(start_time=START) as env:
        handle = env.client.start(tt_month)
        time.sleep(0.05)  # nobody waits on a result: no skipping
        assert ("running", START) == (handle.describe().status, env.now())
        assert 30 * DAY_S == handle.result(timeout=PATIENCE_S)["slept_s"]


def test_advance_moves_the_clock_of_a_skipping_environment_too() -> None:
    with WorkflowEnvironment.start_time_skipping(start_time=START) as env:
        handle = env.client.start(tt_signal_or_timeout)
        env.advance("2h")
        assert "timed out" == handle.result(timeout=PATIENCE_S)
        assert START + dt.timedelta(hours=2) == env.now()


# -- a clock moved by hand -----------------------------------------------------------------------


def test_start_local_moves_only_by_advance_and_stops_at_each_due_time() -> None:
    with WorkflowEnvironment.start_local(start_time=START) as env:
        handle = env.client.start(tt_sleeps)
        with pytest.raises(df.ResultTimeout):
            handle.result(timeout=0.05)
        env.advance("9m")
        assert ("running", START + dt.timedelta(minutes=9)) == (
            handle.describe().status,
            env.now(),
        )

        env.advance("51m")  # the second timer is armed on the way, at 10 m, and fires at 25 m

        assert [600.0, 1500.0] == handle.result(timeout=PATIENCE_S)
        assert START + dt.timedelta(hours=1) == env.now()


def test_signal_timeout_fires_when_advanced_past_it() -> None:
    with WorkflowEnvironment.start_local(start_time=START) as env:
        early = env.client.start(tt_signal_or_timeout)
        late = env.client.start(tt_signal_or_timeout)
        env.advance("1h")
        early.signal("go", "went")
        env.advance("1h")

        assert ("went", "timed out") == (
            early.result(timeout=PATIENCE_S),
            late.result(timeout=PATIENCE_S),
        )


def test_the_environment_removes_its_temporary_data_dir_and_keeps_a_given_one(
    tmp_path: Path,
) -> None:
    with WorkflowEnvironment.start_local() as made:
        own = made.data_dir
        assert own.exists()
    given = tmp_path / "env"
    with WorkflowEnvironment.start_local(data_dir=given, partitions=3) as env:
        env.client.start(tt_month, workflow_id="kept")
    assert (False, True) == (own.exists(), (given / "partitions").exists())
    with WorkflowEnvironment.start_local(data_dir=given) as again:  # its recorded 3 partitions
        assert ("running", 3) == (
            again.client.get_handle("kept").describe().status,
            len(again.engine.stats()),
        )


def test_bad_environment_options_are_refused() -> None:
    with pytest.raises(df.ConfigurationError, match="timezone-aware"):
        WorkflowEnvironment.start_local(start_time=dt.datetime(2026, 1, 1))
    with WorkflowEnvironment.start_local() as env, pytest.raises(df.InvalidDuration):
        env.advance("soon")


# -- replay ----------------------------------------------------------------------------------


@df.workflow(name="tt_retried_v2")
async def tt_retried_with_a_sleep(ctx: df.WorkflowContext, fail_times: int) -> dict:
    await ctx.sleep("1m")  # new: a timer where history holds the activity
    return {"attempt": await ctx.activity(tt_flaky, fail_times), "elapsed_s": 0.0}


def test_replayer_replays_handle_history_and_files(tmp_path: Path) -> None:
    with WorkflowEnvironment.start_time_skipping(start_time=START) as env:
        handle = env.client.start(tt_retried, 1)
        handle.result(timeout=PATIENCE_S)
        events = handle.history()
    replayer = Replayer(workflows=[tt_retried])
    msgpack_file = save_history(events, tmp_path / "retried.msgpack")
    json_file = save_history(events, tmp_path / "retried.json")

    assert (1, 1, 1) == (
        replayer.replay(events),
        replayer.replay(msgpack_file),
        replayer.replay(str(json_file)),
    )
    assert events == load_history(json_file)


def test_replayer_names_the_first_divergence() -> None:
    with WorkflowEnvironment.start_time_skipping() as env:
        handle = env.client.start(tt_retried, 0, workflow_id="tt-diverge")
        handle.result(timeout=PATIENCE_S)
        events = handle.history()

    with pytest.raises(df.NonDeterminismError) as caught:
        Replayer(workflows={"tt_retried": tt_retried_with_a_sleep}).replay(events)

    assert (
        f"workflow 'tt-diverge' run {handle.run_id} (tt_retried): event 2: history recorded "
        "activity_scheduled 'tt_flaky' (seq 1), replayed code issued timer_started (seq 1)"
    ) == str(caught.value)


@df.workflow(name="tt_retried_v3")
async def tt_retried_then_sleeps(ctx: df.WorkflowContext, fail_times: int) -> dict:
    attempt = await ctx.activity(tt_flaky, fail_times)
    await ctx.sleep("1m")  # new: a timer where history holds the close
    return {"attempt": attempt, "elapsed_s": 0.0}


def test_replayer_names_a_new_command_where_history_closed() -> None:
    with WorkflowEnvironment.start_time_skipping() as env:
        handle = env.client.start(tt_retried, 0)
        handle.result(timeout=PATIENCE_S)
        events = handle.history()

    with pytest.raises(df.NonDeterminismError) as caught:
        Replayer(workflows={"tt_retried": tt_retried_then_sleeps}).replay(events)

    closed = events[-1].event_id
    assert str(caught.value).endswith(
        f"event {closed}: history recorded completed, replayed code issued timer_started "
        "(seq 2) instead"
    )


def test_replayer_replays_every_run_selected_from_the_archive() -> None:
    with WorkflowEnvironment.start_time_skipping(archive=True) as env:
        handles = [env.client.start(tt_retried, n) for n in (0, 1, 2)]
        for handle in handles:
            handle.result(timeout=PATIENCE_S)
        assert env.engine.sync_archive(timeout=PATIENCE_S)
        table = env.client.sql(
            "SELECT raw FROM history WHERE workflow_type = 'tt_retried' ORDER BY lsn DESC"
        )

        assert 3 == Replayer(workflows=[tt_retried]).replay(table)
        with pytest.raises(df.NonDeterminismError, match="event 2: history recorded"):
            Replayer(workflows={"tt_retried": tt_retried_with_a_sleep}).replay(table)


def test_replayer_refuses_what_it_cannot_replay(tmp_path: Path) -> None:
    with WorkflowEnvironment.start_time_skipping() as env:
        handle = env.client.start(tt_retried, 0)
        handle.result(timeout=PATIENCE_S)
        events = handle.history()
    replayer = Replayer(workflows=[tt_month])
    bad_file = tmp_path / "bad.msgpack"
    bad_file.write_bytes(b"\x93not a history")

    with pytest.raises(df.UnknownWorkflowType, match=r"of type 'tt_retried'.*'tt_month'"):
        replayer.replay(events)
    with pytest.raises(df.PayloadError, match="starts at event 2"):
        Replayer(workflows=[tt_retried]).replay(events[1:])
    with pytest.raises(df.PayloadError, match="holds no events"):
        replayer.replay([])
    with pytest.raises(df.PayloadError, match="not a duraflow history file"):
        replayer.replay(bad_file)
    with pytest.raises(df.PayloadError, match="cannot replay int"):
        replayer.replay(42)
    with pytest.raises(df.UnknownWorkflowType):
        Replayer(workflows=[tt_flaky])
