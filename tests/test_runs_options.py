"""Run options (DESIGN section 5) on the stepped clock: run and execution timeouts, a
workflow-level retry policy, start delays, and search attributes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import duraflow as df
from duraflow.testing import WorkflowEnvironment


@df.workflow
async def sleeper(ctx: df.WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "woke"


@df.workflow
async def looper(ctx: df.WorkflowContext, n: int) -> int:
    """Sleeps an hour per run and continues as new: runs forever."""
    await ctx.sleep("1h")
    await ctx.continue_as_new(n + 1)
    return n


@df.workflow
async def flaky(ctx: df.WorkflowContext, succeed_on: int) -> dict[str, Any]:
    if ctx.info.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.info.attempt} fails")
    return {"attempt": ctx.info.attempt, "at": ctx.time()}


@df.workflow
async def clock(ctx: df.WorkflowContext) -> float:
    return ctx.time()


@df.workflow
async def tagged(ctx: df.WorkflowContext) -> str:
    ctx.set_search_attributes(stage="paid", amount=12.5)
    await ctx.wait_for_signal("done")
    ctx.set_search_attributes(stage=None)
    return "ok"


# -- timeouts -------------------------------------------------------------------------------------


def test_run_timeout_closes_the_run_as_timed_out(skipping_env: WorkflowEnvironment) -> None:
    client = skipping_env.client
    began = skipping_env.time()
    handle = client.start(sleeper, 3600, workflow_id="rt-1", run_timeout="10m")
    with pytest.raises(df.WorkflowTimedOutError) as caught:
        handle.result(timeout=10)
    assert isinstance(caught.value, df.WorkflowFailedError)
    assert "timed_out" == caught.value.status
    assert "run_timeout" in caught.value.cause_message
    assert skipping_env.time() - began == pytest.approx(600, abs=1)
    assert "timed_out" == handle.describe().status


def test_execution_timeout_covers_the_whole_chain(skipping_env: WorkflowEnvironment) -> None:
    client = skipping_env.client
    began = skipping_env.time()
    handle = client.start(looper, 0, workflow_id="et-1", execution_timeout="5h30m")
    with pytest.raises(df.WorkflowTimedOutError, match="execution_timeout"):
        handle.result(timeout=10)
    assert skipping_env.time() - began == pytest.approx(5.5 * 3600, abs=1)
    statuses = sorted(d.status for d in client.list(workflow_type="looper"))
    assert ["continued_as_new"] * 5 + ["timed_out"] == statuses


def test_run_timeout_is_not_hit_when_the_run_is_quick(stepped_env: WorkflowEnvironment) -> None:
    handle = stepped_env.client.start(sleeper, 60, workflow_id="rt-2", run_timeout="2m")
    stepped_env.advance("61s")
    assert "woke" == handle.result(timeout=10)
    stepped_env.advance("5m")  # the deadline of a closed run does nothing
    assert "completed" == handle.describe().status


# -- workflow retry policy -------------------------------------------------------------------------


def test_workflow_retry_starts_new_runs_with_backoff(skipping_env: WorkflowEnvironment) -> None:
    client = skipping_env.client
    began = skipping_env.time()
    policy = df.RetryPolicy(initial_interval="1m", backoff_coefficient=2, maximum_attempts=5)
    handle = client.start(flaky, 3, workflow_id="retry-1", retry=policy)
    result = handle.result(timeout=10)
    assert 3 == result["attempt"]
    assert result["at"] - began == pytest.approx(60 + 120, abs=1)  # backoffs 1m, then 2m
    runs = sorted(client.list(workflow_type="flaky"), key=lambda d: d.attempt)
    assert [(d.attempt, d.status) for d in runs] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert runs[1].continued_from == runs[0].run_id
    assert runs[0].next_run_id == runs[1].run_id


def test_workflow_retry_gives_up_after_maximum_attempts(
    skipping_env: WorkflowEnvironment,
) -> None:
    policy = df.RetryPolicy(initial_interval="1s", maximum_attempts=2)
    handle = skipping_env.client.start(flaky, 9, workflow_id="retry-2", retry=policy)
    with pytest.raises(df.WorkflowFailedError, match="attempt 2 fails"):
        handle.result(timeout=10)


def test_run_timeout_is_retried_by_the_retry_policy(skipping_env: WorkflowEnvironment) -> None:
    policy = df.RetryPolicy(initial_interval="1s", maximum_attempts=3)
    handle = skipping_env.client.start(
        sleeper, 3600, workflow_id="retry-3", run_timeout="1m", retry=policy
    )
    with pytest.raises(df.WorkflowTimedOutError):
        handle.result(timeout=10)
    runs = skipping_env.client.list(workflow_type="sleeper")
    assert [1, 2, 3] == sorted(d.attempt for d in runs)


# -- start delay ----------------------------------------------------------------------------------


def test_start_delay_starts_the_code_later(stepped_env: WorkflowEnvironment) -> None:
    began = stepped_env.time()
    handle = stepped_env.client.start(clock, workflow_id="delay-1", start_delay="10m")
    stepped_env.advance("9m")
    assert "running" == handle.describe().status
    stepped_env.advance("1m")
    assert handle.result(timeout=10) == pytest.approx(began + 600)


# -- search attributes -----------------------------------------------------------------------------


def test_search_attributes_at_start_and_from_the_code(client: df.Client) -> None:
    due = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    handle = client.start(
        tagged,
        workflow_id="sa-1",
        search_attributes={"customer": "c-9", "priority": 2, "vip": True, "due": due},
    )
    client.start(tagged, workflow_id="sa-2", search_attributes={"customer": "c-1"})
    described = handle.describe()
    assert described.search_attributes == {
        "customer": "c-9",
        "priority": 2,
        "vip": True,
        "due": due,
        "stage": "paid",
        "amount": 12.5,
    }
    found = client.list(search={"customer": "c-9"})
    assert ["sa-1"] == [d.workflow_id for d in found]
    assert ["sa-1"] == [d.workflow_id for d in client.list(search={"due": due, "vip": True})]
    assert sorted(d.workflow_id for d in client.list(search={"stage": "paid"})) == [
        "sa-1",
        "sa-2",
    ]
    assert [] == client.list(search={"priority": "2"})  # typed: 2 is not "2"
    handle.signal("done")
    assert "ok" == handle.result(timeout=10)
    assert "stage" not in handle.describe().search_attributes
    table = client.sql(
        "SELECT json_extract_string(search_attributes, '$.customer') AS c "
        "FROM live_workflows WHERE workflow_id = 'sa-1'"
    )
    assert [{"c": "c-9"}] == table.to_pylist()


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"bad key": 1}, "not an identifier"),
        ({"x": [1, 2]}, "must be str, int, float, bool or datetime"),
        ({"x": float("nan")}, "not a finite number"),
        ({"x": 2**64}, "64 bits"),
    ],
)
def test_bad_search_attributes_are_refused(
    client: df.Client, attributes: dict[str, Any], message: str
) -> None:
    with pytest.raises(df.ConfigurationError, match=message):
        client.start(clock, search_attributes=attributes)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("run_timeout", "0s", df.InvalidDuration),
        ("execution_timeout", "soon", df.InvalidDuration),
        ("start_delay", -1, df.InvalidDuration),
        ("retry", {"maximum_attempts": 3}, df.ConfigurationError),
    ],
)
def test_bad_run_options_are_refused(
    client: df.Client, option: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=option):
        client.start(clock, **{option: value})


# -- a reset run keeps the run options ---------------------------------------------------------

_STEP_CALLS = {"n": 0}


@df.activity(inline=True, retry=df.RetryPolicy(maximum_attempts=1))
def fails_the_first_time() -> str:
    _STEP_CALLS["n"] += 1
    if _STEP_CALLS["n"] == 1:
        raise RuntimeError("first time")
    return "ok"


@df.workflow
async def resettable(ctx: df.WorkflowContext) -> str:
    await ctx.activity(fails_the_first_time)
    await ctx.sleep("2h")
    return "done"


def test_a_reset_run_keeps_search_attributes_and_timeouts(
    skipping_env: WorkflowEnvironment,
) -> None:
    client = skipping_env.client
    _STEP_CALLS["n"] = 0
    handle = client.start(
        resettable, workflow_id="reset-1", run_timeout="1h", search_attributes={"team": "ops"}
    )
    with pytest.raises(df.WorkflowFailedError, match="first time"):
        handle.result(timeout=10)
    began = skipping_env.time()
    new_run = handle.reset()
    reset = client.get_handle("reset-1", new_run)
    assert {"team": "ops"} == reset.describe().search_attributes
    assert [d.run_id for d in client.list(search={"team": "ops"}, status="running")] == [new_run]
    with pytest.raises(df.WorkflowTimedOutError, match="run_timeout"):
        reset.result(timeout=10)
    assert skipping_env.time() - began == pytest.approx(3600, abs=1)
