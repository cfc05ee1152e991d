"""Updates across a kill -9 of the partition actor's process (Ray restarts it from its file).

Updates whose handlers await an activity are in flight when the victim is killed; more are
sent while it restarts. What must hold: every caller gets its update's result (its client
resends with the same request ID, and re-registers its waits with the new incarnation); each
update is accepted and completed exactly once in history and appears once in the workflow's
state, even where its activity ran again after the kill.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from tests.actors import update_flows as flows
from tests.actors.test_failover import (
    actor_status,
    histories,
    kill_pid,
    wait_restarted,
    wids_of_partition,
)

RAY_ARCHIVE = False  # see tests/conftest.py: no archive consumer to start and stop
CREDITS = 12
"""Slow updates per workflow (credit ``n``'s activity takes 0.1 + 0.1 n s): the first ones
are complete when the actor is killed, the others in flight."""
NOTES = 6
"""Quick updates per workflow sent while the actor restarts."""


@pytest.mark.timeout(150)
def test_updates_in_flight_across_a_kill_9_complete_once_and_every_caller_gets_its_result(
    ray_engine: df.Engine, ray_client: df.Client, data_dir: Path
) -> None:
    log = data_dir / "attempts.log"
    host: Any = ray_client._host  # type: ignore[attr-defined]  # reason: the test needs the actors
    victim = 0
    handle = host._handles[victim]
    before = actor_status(handle)
    wids = wids_of_partition("up-crash", victim, 2)

    done_before: set[tuple[str, str]] = set()

    async def scenario() -> tuple[list[Any], list[Any], dict[str, Any]]:
        nonlocal done_before
        deadline = time.monotonic() + 120
        started = [
            await ray_client.start_async(flows.uf_ledger, str(log), workflow_id=w) for w in wids
        ]
        credits = [
            asyncio.ensure_future(
                h.update_async(
                    "credit",
                    {"id": f"c{n}", "amount": n},
                    request_id=f"{h.workflow_id}-c{n}",
                    timeout=100,
                )
            )
            for h in started
            for n in range(CREDITS)
        ]
        while sum(c.done() for c in credits) < 4:
            assert time.monotonic() < deadline, "no credit update completed"
            await asyncio.sleep(0.01)
        done_before = {
            (w, f"c{n}")
            for w in wids
            for n in range(CREDITS)
            if credits[wids.index(w) * CREDITS + n].done()
        }
        kill_pid(before["pid"])
        restarted = asyncio.ensure_future(wait_restarted(handle, before["pid"], deadline))
        notes = [
            asyncio.ensure_future(
                h.update_async(
                    "note", {"id": f"n{n}"}, request_id=f"{h.workflow_id}-n{n}", timeout=100
                )
            )
            for h in started
            for n in range(NOTES)
        ]
        status = await restarted
        credited = await asyncio.gather(*credits, return_exceptions=True)
        noted = await asyncio.gather(*notes, return_exceptions=True)
        for h in started:
            await h.signal_async("close")
        ledgers = await asyncio.gather(*(h.result_async(timeout=60) for h in started))
        return [*credited, *noted], ledgers, status

    answers, ledgers, status = asyncio.run(scenario())

    assert status["pid"] != before["pid"]
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert [] == errors, f"{len(errors)} callers got no result: {errors[0]!r}"
    expected_credits = [n * 10 for _ in wids for n in range(CREDITS)]
    expected_notes = [f"noted n{n}" for _ in wids for n in range(NOTES)]
    assert expected_credits + expected_notes == answers
    for ledger in ledgers:  # each handler's effect on the run's state: exactly once
        assert sorted([f"c{n}" for n in range(CREDITS)] + [f"n{n}" for n in range(NOTES)]) == (
            sorted(ledger)
        )
    recorded = histories(data_dir)
    for wid in wids:
        accepted = Counter(e.update_id for e in recorded[wid] if isinstance(e, ev.UpdateAccepted))
        completed = Counter(e.update_id for e in recorded[wid] if isinstance(e, ev.UpdateCompleted))
        assert {1} == set(accepted.values()) == set(completed.values())
        assert CREDITS + NOTES == len(accepted) == len(completed)
        results = Counter(e.seq for e in recorded[wid] if isinstance(e, ev.ActivityCompleted))
        assert {1} == set(results.values())
    attempts = Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())
    print(
        f"\n{sum(attempts.values())} activity attempts for {len(attempts)} credit updates "
        f"({sum(1 for c in attempts.values() if c > 1)} ran again after the kill)"
    )
    assert 2 * CREDITS == len(attempts)
    assert {1} == {attempts[key] for key in done_before}  # recorded before: never run again
    assert any(attempts[key] > 1 for key in attempts)  # the kill did catch some in flight
