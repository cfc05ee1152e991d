"""A paused run across a real crash: the partition actor's process is killed with SIGKILL (by
its PID) while a run is paused with an activity held and a timer pending. Ray restarts the
actor; the run is still paused, nothing is dispatched and the timer that fell due wakes
nothing; unpause then runs each held step exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray

import duraflow as df
from duraflow.actors import ray_host
from duraflow.actors.router import partition_of
from duraflow.cdc import events as ev
from tests.actors.operator_flows import oc_paused, steps_run

RAY_ARCHIVE = False  # about partition actors only (see conftest)
WAIT_S = 60.0


def eventually(check: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def kinds(handle: df.WorkflowHandle) -> list[str]:
    return [ev.event_type(e) for e in handle.history()]


def actor_pid(actor: Any) -> int:
    return int(ray.get(actor.status.remote(), timeout=30)["pid"])


def restarted(actor: Any, old_pid: int) -> bool:
    try:
        return actor_pid(actor) != old_pid
    except Exception:  # reason: the actor is restarting (RayActorError, GetTimeoutError, ...)
        return False


@pytest.mark.timeout(120)
def test_a_paused_run_stays_paused_through_a_kill_and_unpause_runs_each_step_once(
    ray_engine: df.Engine, data_dir: Path
) -> None:
    client = ray_engine.client()
    log = str(data_dir / "steps.log")
    wid = "oc-paused-1"
    handle = client.start(oc_paused, log, workflow_id=wid)
    eventually(lambda: "workflow.activity_completed" in kinds(handle), "step a")

    handle.pause("crash test")
    handle.signal("go")  # taken: step b is scheduled (held) and the 1 s timer starts
    eventually(lambda: "workflow.timer_started" in kinds(handle), "step b and the timer")

    actor = ray.get_actor(ray_host.actor_name(partition_of(wid, 2)), namespace=ray_engine.namespace)
    pid = actor_pid(actor)
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: restarted(actor, pid), "the restarted partition actor")

    # the timer fell due during the restart; the held step was recovered: both wait
    time.sleep(0.5)  # room for a wrongly dispatched attempt to show in the log
    described = handle.describe()
    assert (True, "crash test", ["oc_step"]) == (
        described.paused,
        described.pause_reason,
        described.pending_activities,
    )
    assert ["a"] == steps_run(log)
    assert "workflow.timer_fired" not in kinds(handle)

    handle.unpause()
    assert ["A", "B", "C"] == handle.result(timeout=WAIT_S)
    assert ["a", "b", "c"] == steps_run(log)  # each step started exactly once
    events = handle.history()
    completed = Counter(e.seq for e in events if isinstance(e, ev.ActivityCompleted))
    assert {1} == set(completed.values()) and 3 == len(completed)
    assert 1 == sum(isinstance(e, ev.TimerFired) for e in events)
    assert not any(isinstance(e, ev.ActivityRetry) for e in events)  # no attempt was counted
    assert actor_pid(actor) != pid
