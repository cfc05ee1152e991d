"""Updates end to end on the in-process engine: results, refusals, failures, closed runs,
timeouts, races with the run's completion, exactly once per request ID (across resends and
restarts), signal/update-with-start under many racing callers, and replay. Every workflow
and activity name starts with ``up_``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from duraflow.testing import Replayer, WorkflowEnvironment
from tests.conftest import STEPPED_START

PATIENCE_S = 30.0


@df.activity
def up_price(sku: str) -> int:
    return len(sku)


@df.workflow
async def up_cart(ctx: df.WorkflowContext) -> list[Any]:
    items: list[Any] = []

    def add(item: str) -> int:
        items.append(item)
        return len(items)

    def known_item(item: str) -> None:
        if item == "unicorn":
            raise ValueError("no such item: 'unicorn'")

    async def add_priced(sku: str) -> int:
        price = int(await ctx.activity(up_price, sku))
        items.append([sku, price])
        return price

    async def hold(_: Any = None) -> str:
        await ctx.wait_for_signal("release")  # never sent: the handler never returns
        return "released"

    def remove(item: str) -> int:
        items.remove(item)  # ValueError when absent: the update fails, not the run
        return len(items)

    ctx.set_update_handler("add", add, validator=known_item)
    ctx.set_update_handler("add_priced", add_priced)
    ctx.set_update_handler("hold", hold)
    ctx.set_update_handler("remove", remove)
    ctx.set_update_handler("count", lambda: len(items))
    await ctx.wait_for_signal("checkout")
    return items


@df.workflow
async def up_nap(ctx: df.WorkflowContext) -> str:
    async def later(hours: int) -> float:
        began = ctx.time()
        await ctx.sleep(hours * 3600)
        return ctx.time() - began

    ctx.set_update_handler("later", later)
    await ctx.wait_for_signal("done")
    return "ok"


def update_events(handle: df.WorkflowHandle) -> list[str]:
    return [
        ev.event_type(e).removeprefix("workflow.update_")
        for e in handle.history()
        if isinstance(e, (ev.UpdateAccepted, ev.UpdateCompleted, ev.UpdateFailed))
    ]


def test_an_update_returns_its_handlers_result_sync_or_awaiting_an_activity(
    client: df.Client,
) -> None:
    handle = client.start(up_cart, workflow_id="up-basic")
    assert 1 == handle.update("add", "apple", timeout=PATIENCE_S)
    assert 4 == handle.update("add_priced", "pear", timeout=PATIENCE_S)
    assert 2 == handle.update("count")  # no payload: the handler takes no argument
    handle.signal("checkout")
    assert ["apple", ["pear", 4]] == handle.result(timeout=PATIENCE_S)
    accepted = [e for e in handle.history() if isinstance(e, ev.UpdateAccepted)]
    assert ["add", "add_priced", "count"] == [e.name for e in accepted]


def test_a_refused_update_says_why_and_records_nothing(client: df.Client) -> None:
    handle = client.start(up_cart, workflow_id="up-refused")
    with pytest.raises(df.UpdateRejected, match="no such item: 'unicorn'"):
        handle.update("add", "unicorn")
    with pytest.raises(df.UpdateRejected, match=r"no update handler 'steal' \(it has: \["):
        handle.update("steal", "x")
    assert [] == update_events(handle)
    assert "running" == handle.describe().status


def test_a_handler_that_raises_fails_the_update_and_the_run_goes_on(client: df.Client) -> None:
    handle = client.start(up_cart, workflow_id="up-failed")
    with pytest.raises(df.UpdateFailed) as failed:
        handle.update("remove", "ghost")
    assert ("remove", "ValueError") == (failed.value.name, failed.value.cause_type)
    assert 1 == handle.update("add", "apple")
    handle.signal("checkout")
    assert ["apple"] == handle.result(timeout=PATIENCE_S)
    assert ["accepted", "failed", "accepted", "completed"] == update_events(handle)


def test_an_update_to_a_closed_run_or_no_run_raises(client: df.Client) -> None:
    handle = client.start(up_cart, workflow_id="up-closed")
    handle.signal("checkout")
    handle.result(timeout=PATIENCE_S)
    with pytest.raises(df.WorkflowClosed, match="already completed"):
        handle.update("add", "apple")
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("up-nobody").update("add", "apple")


def test_a_handler_that_never_returns_times_out_the_caller_and_the_run_goes_on(
    client: df.Client,
) -> None:
    handle = client.start(up_cart, workflow_id="up-hold")
    with pytest.raises(df.UpdateTimeout, match="request_id='h1'") as timed_out:
        handle.update("hold", timeout=0.3, request_id="h1")
    assert isinstance(timed_out.value, TimeoutError)
    assert "running" == handle.describe().status
    assert 1 == handle.update("add", "apple", timeout=PATIENCE_S)
    handle.signal("checkout")
    assert ["apple"] == handle.result(timeout=PATIENCE_S)
    with pytest.raises(df.WorkflowClosed, match="before the handler of update 'hold'"):
        handle.update("hold", request_id="h1")  # the resend learns how it ended


def test_a_waiting_update_is_answered_when_the_run_completes_first(client: df.Client) -> None:
    handle = client.start(up_cart, workflow_id="up-race")

    async def race() -> BaseException | None:
        waiting = asyncio.ensure_future(handle.update_async("hold"))
        await asyncio.sleep(0.2)  # the update is accepted and its handler waits
        await handle.signal_async("checkout")
        try:
            await asyncio.wait_for(waiting, PATIENCE_S)
        except df.DuraflowError as exc:
            return exc
        return None

    error = client._block(race())
    assert isinstance(error, df.WorkflowClosed)
    assert "completed before the handler of update 'hold'" in str(error)


def test_updates_racing_the_completion_each_get_a_result_or_workflow_closed(
    client: df.Client,
) -> None:
    handle = client.start(up_cart, workflow_id="up-race-many")

    async def race() -> list[Any]:
        updates = [handle.update_async("add", f"item-{n}") for n in range(40)]
        closing = handle.signal_async("checkout")
        return await asyncio.gather(*updates[:20], closing, *updates[20:], return_exceptions=True)

    answers = client._block(race())
    del answers[20]  # the signal's
    cart = handle.result(timeout=PATIENCE_S)
    taken = [n for n, a in enumerate(answers) if isinstance(a, int)]
    refused = [a for a in answers if not isinstance(a, int)]
    assert all(isinstance(a, df.WorkflowClosed) for a in refused), refused
    assert [f"item-{n}" for n in taken] == cart  # a result means it is in the cart
    assert 40 == len(taken) + len(refused)


def test_a_request_id_runs_once_across_resends_and_restarts(
    data_dir: Path,
) -> None:
    def open_engine() -> df.Engine:
        return df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL")

    with open_engine() as engine:
        handle = engine.client().start(up_cart, workflow_id="up-once")
        assert 1 == handle.update("add", "apple", request_id="same")
        assert 1 == handle.update("add", "apple", request_id="same")
    with open_engine() as engine:
        handle = engine.client().get_handle("up-once")
        assert 1 == handle.update("add", "apple", request_id="same")
        assert 2 == handle.update("add", "pear", request_id="other")
        handle.signal("checkout")
        assert ["apple", "pear"] == handle.result(timeout=PATIENCE_S)
        assert 1 == handle.update("add", "apple", request_id="same")  # after the close too
        assert ["accepted", "completed"] * 2 == update_events(handle)


def test_update_with_start_under_racing_callers_starts_exactly_one_run(client: df.Client) -> None:
    async def race() -> list[Any]:
        return await asyncio.gather(
            *(
                client.update_with_start_async(
                    up_cart, workflow_id="up-uws", update="add", payload=f"i{n}"
                )
                for n in range(50)
            )
        )

    counts = client._block(race())
    assert list(range(1, 51)) == sorted(counts)
    handle = client.get_handle("up-uws")
    assert 1 == sum(isinstance(e, ev.WorkflowStarted) for e in handle.history())
    assert 1 == len(client.list(workflow_type="up_cart"))
    handle.signal("checkout")
    assert 50 == len(handle.result(timeout=PATIENCE_S))


def test_signal_with_start_under_racing_callers_starts_exactly_one_run(client: df.Client) -> None:
    async def race() -> list[df.WorkflowHandle]:
        return await asyncio.gather(
            *(
                client.signal_with_start_async(up_cart, workflow_id="up-sws", signal="note")
                for _ in range(50)
            )
        )

    handles = client._block(race())
    assert 1 == len({h.run_id for h in handles})
    handle = handles[0]
    history = handle.history()
    assert 1 == sum(isinstance(e, ev.WorkflowStarted) for e in history)
    assert 50 == sum(isinstance(e, ev.SignalReceived) for e in history)
    handle.terminate("done")


def test_signal_with_start_signals_a_running_run_and_starts_after_a_closed_one(
    client: df.Client,
) -> None:
    first = client.signal_with_start(up_cart, workflow_id="up-sws2", signal="checkout")
    assert [] == first.result(timeout=PATIENCE_S)
    second = client.signal_with_start(up_cart, workflow_id="up-sws2", signal="note")
    assert first.run_id != second.run_id
    assert "running" == second.describe().status
    with pytest.raises(df.UnknownWorkflowType):
        client.signal_with_start("up_nothing", workflow_id="up-sws3", signal="x")


def test_a_run_with_updates_replays_and_a_missing_handler_is_caught(client: df.Client) -> None:
    handle = client.start(up_cart, workflow_id="up-replay")
    handle.update("add", "apple")
    handle.update("add_priced", "fig")
    with pytest.raises(df.UpdateFailed):
        handle.update("remove", "ghost")
    handle.signal("checkout")
    handle.result(timeout=PATIENCE_S)

    assert 1 == Replayer(workflows=[up_cart]).replay(handle.history())

    async def without_handlers(ctx: df.WorkflowContext) -> list[Any]:
        await ctx.wait_for_signal("checkout")
        return []

    replayer = Replayer(workflows={"up_cart": without_handlers})
    with pytest.raises(df.NonDeterminismError, match="no handler of that name"):
        replayer.replay(handle.history())


def test_an_update_handler_sleeping_an_hour_takes_no_wall_time_when_skipping(
    tmp_path: Path,
) -> None:
    with WorkflowEnvironment.start_time_skipping(
        data_dir=tmp_path / "env", start_time=STEPPED_START
    ) as env:
        handle = env.client.start(up_nap, workflow_id="up-nap")
        began = time.monotonic()
        assert 3600.0 == handle.update("later", 1, timeout=PATIENCE_S)
        assert time.monotonic() - began < PATIENCE_S / 2
        handle.signal("done")
        assert "ok" == handle.result(timeout=PATIENCE_S)


def test_bad_update_arguments_are_refused_before_they_travel(client: df.Client) -> None:
    handle = client.get_handle("up-bad")
    with pytest.raises(df.PayloadError, match="update name"):
        handle.update(7)  # type: ignore[arg-type]
    with pytest.raises(df.PayloadError, match="payload of update 'add'"):
        handle.update("add", object())
    with pytest.raises(df.InvalidDuration):
        handle.update("add", 1, timeout="soon")
    with pytest.raises(df.PayloadError, match="update name"):
        client.update_with_start(up_cart, workflow_id="up-bad", update="")


def test_update_events_reach_the_archive_with_their_fields(engine: df.Engine) -> None:
    client = engine.client()
    handle = client.start(up_cart, workflow_id="up-archived")
    handle.update("add", "apple", request_id="a-1")
    with pytest.raises(df.UpdateFailed):
        handle.update("remove", "ghost", request_id="a-2")
    handle.signal("checkout")
    handle.result(timeout=PATIENCE_S)
    assert engine.sync_archive(20)
    engine.commit_archive()
    rows = client.sql(
        "SELECT event_type, data ->> '$.update_id' AS id, data ->> '$.name' AS name "
        "FROM history WHERE workflow_id = ? AND event_type LIKE 'workflow.update%' "
        "ORDER BY event_id",
        ["up-archived"],
    ).to_pylist()
    assert [
        ("workflow.update_accepted", "a-1", "add"),
        ("workflow.update_completed", "a-1", "add"),
        ("workflow.update_accepted", "a-2", "remove"),
        ("workflow.update_failed", "a-2", "remove"),
    ] == [(r["event_type"], r["id"], r["name"]) for r in rows]
