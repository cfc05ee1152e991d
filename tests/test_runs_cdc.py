"""The runs family's events and statuses in CDC and the archive (issue 14 item 11):
``workflow.continued_as_new``, ``workflow.timed_out`` and ``workflow.search_attributes_set``
reach subscribers; the archive's ``workflows`` table has statuses ``continued_as_new`` and
``timed_out``, links the runs of a chain, and shows attempts and search attributes, as
``live_workflows`` does for runs still in the partitions."""

from __future__ import annotations

import json

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from duraflow.testing import WorkflowEnvironment


@df.workflow
async def hop(ctx: df.WorkflowContext, n: int) -> int:
    ctx.set_search_attributes(hop=n)
    if n < 2:
        await ctx.continue_as_new(n + 1)
    return n


@df.workflow
async def stalls(ctx: df.WorkflowContext) -> None:
    await ctx.sleep("1d")


@df.workflow
async def fails_once(ctx: df.WorkflowContext) -> int:
    if ctx.info.attempt == 1:
        raise ValueError("first attempt")
    return ctx.info.attempt


def test_new_events_reach_subscribers_and_the_archive() -> None:
    with WorkflowEnvironment.start_time_skipping(archive=True) as env:
        client = env.client
        with client.subscribe(from_="earliest") as sub:
            hops = client.start(hop, 0, workflow_id="cdc-hop", search_attributes={"team": "a"})
            assert 2 == hops.result(timeout=10)
            stalled = client.start(stalls, workflow_id="cdc-stall", run_timeout="1h")
            with pytest.raises(df.WorkflowTimedOutError):
                stalled.result(timeout=10)
            retried = client.start(
                fails_once,
                workflow_id="cdc-retry",
                retry=df.RetryPolicy(initial_interval="1s", maximum_attempts=2),
            )
            assert 2 == retried.result(timeout=10)
            seen: list[ev.Event] = []
            while not any(
                isinstance(e, ev.WorkflowCompleted) and e.workflow_id == "cdc-retry" for e in seen
            ):
                event = sub.get(timeout=10)
                assert event is not None, [ev.event_type(e) for e in seen]
                seen.append(event)
        kinds = {type(e) for e in seen}
        assert {ev.WorkflowContinuedAsNew, ev.WorkflowTimedOut, ev.SearchAttributesSet} <= kinds
        timed_out = next(e for e in seen if isinstance(e, ev.WorkflowTimedOut))
        assert ("cdc-stall", "run_timeout") == (timed_out.workflow_id, timed_out.timeout)
        failed = next(e for e in seen if isinstance(e, ev.WorkflowFailed))
        assert failed.new_run_id == retried.run_id

        assert env.engine.sync_archive(timeout=30)
        rows = client.sql(
            "SELECT workflow_id, run_id, status, attempt, continued_from, next_run_id, "
            "search_attributes FROM workflows ORDER BY workflow_id, attempt, close_time"
        ).to_pylist()
        by_status: dict[str, list[str]] = {}
        for row in rows:
            by_status.setdefault(row["status"], []).append(row["workflow_id"])
        assert by_status == {
            "completed": ["cdc-hop", "cdc-retry"],
            "continued_as_new": ["cdc-hop", "cdc-hop"],
            "failed": ["cdc-retry"],
            "timed_out": ["cdc-stall"],
        }
        hop_runs = {row["run_id"]: row for row in rows if row["workflow_id"] == "cdc-hop"}
        links = {row["continued_from"]: row["run_id"] for row in hop_runs.values()}
        assert {r["run_id"]: r["next_run_id"] for r in hop_runs.values() if r["next_run_id"]} == {
            k: v for k, v in links.items() if k is not None
        }
        last = hop_runs[hops.run_id]
        assert {"team": "a", "hop": 2} == json.loads(last["search_attributes"])
        retry_runs = [r for r in rows if r["workflow_id"] == "cdc-retry"]
        assert [(r["attempt"], r["status"]) for r in retry_runs] == [
            (1, "failed"),
            (2, "completed"),
        ]
        assert retry_runs[0]["next_run_id"] == retry_runs[1]["run_id"]

        live = client.sql(
            "SELECT workflow_id, status, attempt, continued_from, next_run_id, "
            "json_extract(search_attributes, '$.hop') AS hop FROM live_workflows "
            "WHERE workflow_id = 'cdc-hop' AND next_run_id IS NULL"
        ).to_pylist()
        assert live == [
            {
                "workflow_id": "cdc-hop",
                "status": "completed",
                "attempt": 1,
                "continued_from": last["continued_from"],
                "next_run_id": None,
                "hop": "2",
            }
        ]
