"""Run options on ``ctx.start_child`` (DESIGN section 5): a child's timeouts, retry policy,
start delay and search attributes, and a parent that waits for the last run of its child's
chain (continue-as-new, retries)."""

from __future__ import annotations

from typing import Any

import pytest

import duraflow as df
from duraflow.testing import WorkflowEnvironment


@df.workflow
async def kid_sleeps(ctx: df.WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "woke"


@df.workflow
async def kid_flaky(ctx: df.WorkflowContext, succeed_on: int) -> int:
    if ctx.info.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.info.attempt} fails")
    return ctx.info.attempt


@df.workflow
async def kid_counts(ctx: df.WorkflowContext, n: int) -> int:
    if n < 3:
        await ctx.continue_as_new(n + 1)
    return n


@df.workflow
async def kid_tagged(ctx: df.WorkflowContext) -> dict[str, Any]:
    return ctx.search_attributes


@df.workflow
async def parent(ctx: df.WorkflowContext, kind: str) -> Any:
    if kind == "timeout":
        child = await ctx.start_child(kid_sleeps, 3600, workflow_id="kid-t", run_timeout="5m")
        try:
            return await child.result()
        except df.ChildWorkflowError as exc:
            return [exc.status, exc.cause_message, ctx.time()]
    if kind == "retry":
        policy = df.RetryPolicy(initial_interval="30s", maximum_attempts=4)
        return await (
            await ctx.start_child(kid_flaky, 3, workflow_id="kid-r", retry=policy)
        ).result()
    if kind == "chain":
        return await ctx.execute_child(kid_counts, 0, workflow_id="kid-c")
    if kind == "delay":
        child = await ctx.start_child(kid_sleeps, 0, workflow_id="kid-d", start_delay="2h")
        await child.result()
        return ctx.time()
    child = await ctx.start_child(
        kid_tagged, workflow_id="kid-s", search_attributes={"team": "ops", "level": 3}
    )
    return await child.result()


def test_a_child_run_timeout(skipping_env: WorkflowEnvironment) -> None:
    began = skipping_env.time()
    status, message, at = skipping_env.client.execute(parent, "timeout")
    assert ("timed_out", "run_timeout") == (status, message)
    assert at - began == pytest.approx(300, abs=1)
    assert "timed_out" == skipping_env.client.get_handle("kid-t").describe().status


def test_a_childs_retries_and_chain_end_in_its_last_run(skipping_env: WorkflowEnvironment) -> None:
    client = skipping_env.client
    assert 3 == client.execute(parent, "retry")
    assert 3 == client.execute(parent, "chain")
    runs = client.list(workflow_type="kid_counts")
    assert ["completed"] + ["continued_as_new"] * 3 == sorted(d.status for d in runs)


def test_a_child_start_delay(skipping_env: WorkflowEnvironment) -> None:
    began = skipping_env.time()
    assert skipping_env.client.execute(parent, "delay") - began == pytest.approx(7200, abs=1)


def test_a_childs_search_attributes(client: df.Client) -> None:
    assert {"team": "ops", "level": 3} == client.execute(parent, "tags")
    assert ["kid-s"] == [d.workflow_id for d in client.list(search={"team": "ops"})]


@df.workflow
async def bad_parent(ctx: df.WorkflowContext) -> str:
    try:
        await ctx.start_child(kid_tagged, search_attributes={"no good": 1})
    except df.ConfigurationError as exc:
        return str(exc)
    return "started"


def test_bad_child_options_are_refused_in_the_parent(client: df.Client) -> None:
    assert "not an identifier" in client.execute(bad_parent)
