"""Runs dropped from memory (the resident-run cap) are rebuilt by replay and finish the same."""

from __future__ import annotations

import asyncio
import collections
import threading
from pathlib import Path

import pytest

import duraflow as df

_executions: collections.Counter[tuple[str, int]] = collections.Counter()
_lock = threading.Lock()


@df.activity
def evict_step(workflow_id: str, n: int) -> int:
    with _lock:
        _executions[(workflow_id, n)] += 1
    return n * 10


@df.workflow
async def evict_flow(ctx: df.WorkflowContext, rounds: int) -> dict[str, object]:
    wid = ctx.info.workflow_id
    total = 0
    seen = []
    ctx.set_query_handler("total", lambda: total)
    for n in range(rounds):
        parallel = await asyncio.gather(
            ctx.activity(evict_step, wid, 2 * n), ctx.activity(evict_step, wid, 2 * n + 1)
        )
        total += sum(parallel)
        seen.append(await ctx.wait_for_signal("tick", timeout=5, default="none"))
        await asyncio.sleep(0.01)
    return {"total": total, "seen": seen, "token": str(ctx.uuid4()), "rand": ctx.random()}


def _run_all(data_dir: Path, cap: int | None) -> dict[str, object]:
    results = {}
    with df.Engine(
        data_dir, runtime="local", partitions=2, synchronous="NORMAL", max_resident_runs=cap
    ) as eng:
        client = eng.client()
        handles = [client.start(evict_flow, 3, workflow_id=f"ev-{i}") for i in range(6)]
        for round_ in range(3):
            for h in handles:
                h.signal("tick", f"{h.workflow_id}:{round_}")
        for h in handles:
            results[h.workflow_id] = h.result(timeout=30)
        if cap == 0:
            assert [0, 0] == [p["resident"] for p in eng.stats()]
    return results


@pytest.mark.parametrize("cap", [0, 1])
def test_evicted_runs_replay_to_the_same_results(tmp_path: Path, cap: int) -> None:
    _executions.clear()
    resident = _run_all(tmp_path / "resident", None)
    _executions.clear()
    evicted = _run_all(tmp_path / "evicted", cap)
    assert {k: {**v, "token": None, "rand": None} for k, v in resident.items()} == {
        k: {**v, "token": None, "rand": None} for k, v in evicted.items()
    }
    assert {1} == set(_executions.values())
    assert 6 * 6 == len(_executions)


def test_query_rebuilds_an_evicted_run(tmp_path: Path) -> None:
    with df.Engine(tmp_path, runtime="local", partitions=1, max_resident_runs=0) as eng:
        handle = eng.client().start(evict_flow, 2, workflow_id="ev-query")
        for _ in range(200):
            if handle.query("total") == 10:
                break
            threading.Event().wait(0.01)
        assert 10 == handle.query("total")
        assert 0 == eng.stats()[0]["resident"]
        handle.terminate("done")
