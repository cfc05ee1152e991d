"""Continue-as-new (DESIGN section 5): one run ends, the next run of the same ID starts in the
same turn, unconsumed signals carry over in order, handles follow the chain, the runs link."""

from __future__ import annotations

from typing import Any

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from duraflow.storage.codec import decode


@df.workflow
async def counter(ctx: df.WorkflowContext, n: int, until: int) -> dict[str, Any]:
    if n >= until:
        return {"n": n, "run": ctx.info.run_id}
    await ctx.continue_as_new(n + 1, until)
    raise AssertionError("continue_as_new returned")


@df.workflow
async def mailbox(ctx: df.WorkflowContext, seen: list[str], rounds: int) -> list[str]:
    """Takes one "msg" signal per run, then continues as new; the rest wait for later runs."""
    if rounds == 0:
        return seen
    seen = [*seen, await ctx.wait_for_signal("msg")]
    if rounds == 3:  # let more signals arrive before the first continue-as-new
        await ctx.wait_for_signal("go")
    await ctx.continue_as_new(seen, rounds - 1)
    return []


@df.workflow
async def swallow(ctx: df.WorkflowContext, first: bool) -> str:
    if not first:
        return "second run"
    try:
        await ctx.continue_as_new(False)
    except Exception:  # continue-as-new is not an Exception: this never runs
        return "caught"
    return "returned"


def test_continue_as_new_chain_result_and_links(client: df.Client) -> None:
    handle = client.start(counter, 0, 3, workflow_id="can-1")
    first = handle.run_id
    result = handle.result(timeout=10)

    assert 3 == result["n"]
    assert handle.run_id == result["run"]  # the handle followed the chain
    assert handle.first_run_id == first
    latest = client.get_handle("can-1").describe()
    assert (latest.status, latest.run_id) == ("completed", result["run"])
    old = client.get_handle("can-1", first).describe()
    assert "continued_as_new" == old.status
    assert old.next_run_id is not None
    nxt = client.get_handle("can-1", old.next_run_id).describe()
    assert nxt.continued_from == first
    history = client.get_handle("can-1", first).history()
    assert ["workflow.started", "workflow.continued_as_new"] == [ev.event_type(e) for e in history]
    started = client.get_handle("can-1").history()[0]
    assert isinstance(started, ev.WorkflowStarted) and started.continued_from is not None
    runs = client.list(workflow_type="counter")
    assert ["completed"] + ["continued_as_new"] * 3 == sorted(d.status for d in runs)


def test_unconsumed_signals_carry_over_in_order(client: df.Client) -> None:
    handle = client.start(mailbox, [], 3, workflow_id="can-signals")
    for text in ("a", "b", "c"):
        handle.signal("msg", text)
    handle.signal("go")
    assert ["a", "b", "c"] == handle.result(timeout=10)
    # "b" and "c" arrived in run 1 untaken: run 2's history starts with them, in order (it
    # takes "b" and hands "c" on to run 3 the same way)
    second = client.get_handle("can-signals", handle.first_run_id).describe().next_run_id
    history = client.get_handle("can-signals", second).history()
    carried = [decode(e.payload) for e in history if isinstance(e, ev.SignalReceived)]
    assert ["b", "c"] == carried


def test_a_handle_from_start_signals_the_newest_run(client: df.Client) -> None:
    handle = client.start(mailbox, [], 2, workflow_id="can-follow")
    handle.signal("msg", "x")  # run 1 takes it and continues as new
    client.get_handle("can-follow").describe()  # (a turn later)
    handle.signal("msg", "y")  # run 1 is closed: the handle moves to run 2
    assert ["x", "y"] == handle.result(timeout=10)
    with pytest.raises(df.WorkflowClosed):
        client.get_handle("can-follow", handle.first_run_id).signal("msg", "z")


def test_except_exception_does_not_swallow_continue_as_new(client: df.Client) -> None:
    handle = client.start(swallow, True, workflow_id="can-swallow")
    assert "second run" == handle.result(timeout=10)
    first = client.get_handle("can-swallow", handle.first_run_id).describe()
    assert "continued_as_new" == first.status


@df.workflow
async def waits_for_chain(ctx: df.WorkflowContext, target: str) -> dict[str, str]:
    return await ctx.block_until([target], timeout="1h")


def test_block_until_waits_for_the_end_of_a_chain(client: df.Client) -> None:
    chain = client.start(mailbox, [], 3, workflow_id="can-watched")
    watcher = client.start(waits_for_chain, "can-watched", workflow_id="can-watcher")
    chain.signal("msg", "a")  # run 1 takes it, then waits for "go"
    chain.signal("go")
    chain.signal("msg", "b")  # runs 2 and 3 (continued as new) take these
    assert "running" == watcher.describe().status  # not told by a run that continued as new
    chain.signal("msg", "c")
    assert ["a", "b", "c"] == chain.result(timeout=10)
    assert {"can-watched": "completed"} == watcher.result(timeout=10)


def test_use_existing_gives_a_handle_on_the_whole_chain(client: df.Client) -> None:
    first = client.start(mailbox, [], 2, workflow_id="can-existing")
    first.signal("msg", "a")  # run 1 continues as new
    again = client.start(mailbox, [], 2, workflow_id="can-existing", id_conflict="use_existing")
    assert again.first_run_id == first.first_run_id
    again.signal("msg", "b")
    assert ["a", "b"] == again.result(timeout=10)
