"""Partitions hosted by Ray actors, activities as Ray tasks: the core paths end to end."""

from __future__ import annotations

import asyncio
import os

import ray

import duraflow as df


@df.activity
def rh_where(x: int) -> dict[str, object]:
    ctx = ray.get_runtime_context()
    return {"x": x, "pid": os.getpid(), "resources": ctx.get_assigned_resources()}


@df.activity(num_cpus=0.5, resources={"gadget": 1})
def rh_gadget() -> dict[str, float]:
    return dict(ray.get_runtime_context().get_assigned_resources())


@df.activity(inline=True)
def rh_inline() -> int:
    return os.getpid()


@df.workflow
async def rh_flow(ctx: df.WorkflowContext, n: int) -> dict[str, object]:
    ctx.set_query_handler("n", lambda: n)
    where = await asyncio.gather(*(ctx.activity(rh_where, i) for i in range(n)))
    inline_pid = await ctx.activity(rh_inline)
    gadget = await ctx.activity(rh_gadget)
    signal = await ctx.wait_for_signal("go", timeout=10, default=None)
    return {"where": where, "inline_pid": inline_pid, "gadget": gadget, "signal": signal}


def test_ray_hosted_workflow_runs_activities_as_ray_tasks(ray_client: df.Client) -> None:
    handle = ray_client.start(rh_flow, 3, workflow_id="rh-1")
    assert 3 == handle.query("n")
    handle.signal("go", "now")
    result = handle.result(timeout=60)
    assert "now" == result["signal"]
    assert [0, 1, 2] == [w["x"] for w in result["where"]]
    partition_pids = {s["pid"] for s in ray_client._host.statuses()}  # type: ignore[attr-defined]
    assert result["inline_pid"] in partition_pids
    assert not partition_pids & {w["pid"] for w in result["where"]}
    assert {"CPU": 0.5, "gadget": 1.0} == result["gadget"]
