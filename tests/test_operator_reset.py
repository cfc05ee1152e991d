"""``handle.reset()``, end to end on the in-process engine: a new run of the ID that keeps the
results of the steps completed before the failure and runs the failed step and what follows
again; it records where it came from; and every bad case is a ResetError naming its cause.
"""

from __future__ import annotations

import threading

import pytest

import duraflow as df
from duraflow.cdc import events as ev

WAIT_S = 20.0

_ran: list[str] = []
_broken = {"step2": True}
_lock = threading.Lock()


@df.activity(retry=df.RetryPolicy(maximum_attempts=1))
def rs_step(name: str) -> str:
    with _lock:
        _ran.append(name)
        if name == "2" and _broken["step2"]:
            raise RuntimeError("step 2 is broken")
    return f"done {name}"


@df.workflow
async def rs_three(ctx: df.WorkflowContext, order: int) -> list[str]:
    first = await ctx.activity(rs_step, "1")
    got = await ctx.wait_for_signal("more")
    second = await ctx.activity(rs_step, "2")
    third = await ctx.activity(rs_step, "3")
    return [first, second, third, str(got), str(order), str(ctx.randint(0, 10**9))]


@df.workflow
async def rs_waits(ctx: df.WorkflowContext) -> str:
    return str(await ctx.wait_for_signal("go"))


@pytest.fixture(autouse=True)
def _fresh() -> None:
    with _lock:
        _ran.clear()
        _broken["step2"] = True


def ran() -> list[str]:
    with _lock:
        return list(_ran)


def test_reset_to_the_last_failure_reruns_the_failed_step_and_keeps_earlier_results(
    client: df.Client,
) -> None:
    handle = client.start(rs_three, 42, workflow_id="rs-order")
    handle.signal("more", "x")
    with pytest.raises(df.WorkflowFailedError, match="step 2 is broken"):
        handle.result(timeout=WAIT_S)
    failed = handle.run_id
    old_events = handle.history()

    _broken["step2"] = False  # the fix is deployed
    new_run = handle.reset(reason="step 2 fixed")

    assert new_run != failed
    latest = client.get_handle("rs-order")
    result = latest.result(timeout=WAIT_S)
    assert ["done 1", "done 2", "done 3", "x", "42"] == result[:5]
    assert ["1", "2", "2", "3"] == ran()  # step 1 ran once; the failed step again
    assert new_run == latest.describe().run_id
    assert "failed" == client.get_handle("rs-order", failed).describe().status

    events = latest.history()
    started = events[0]
    assert isinstance(started, ev.WorkflowStarted)
    scheduled_2 = next(e for e in old_events if isinstance(e, ev.ActivityScheduled) and e.seq == 2)
    assert (failed, scheduled_2.event_id - 1, "step 2 fixed") == (
        started.reset_from_run_id,
        started.reset_from_event_id,
        started.reset_reason,
    )
    # the copy: step 1's result and the signal replay from history, then step 2 runs anew
    copied = [ev.event_type(e) for e in events[: scheduled_2.event_id - 1]]
    assert copied == [ev.event_type(e) for e in old_events[: scheduled_2.event_id - 1]]
    assert (3, 1) == (
        sum(isinstance(e, ev.ActivityCompleted) for e in events),
        sum(isinstance(e, ev.SignalReceived) for e in events),
    )
    # randomness replays as the source run drew it (same seed)
    again = handle.reset(to=scheduled_2.event_id - 1)
    assert result[5] == client.get_handle("rs-order", again).result(timeout=WAIT_S)[5]


def test_reset_to_an_event_id_reruns_what_follows_it(client: df.Client) -> None:
    _broken["step2"] = False
    handle = client.start(rs_three, 1, workflow_id="rs-event")
    handle.signal("more", "y")
    handle.result(timeout=WAIT_S)
    events = handle.history()
    completed_1 = next(e for e in events if isinstance(e, ev.ActivityCompleted))

    new_run = handle.reset(to=completed_1.event_id)

    assert "done 3" == client.get_handle("rs-event", new_run).result(timeout=WAIT_S)[2]
    assert ["1", "2", "3", "2", "3"] == ran()


@df.workflow
async def rs_asks(ctx: df.WorkflowContext, target: str) -> str:
    answer = await ctx.external_workflow(target).query("name")
    await ctx.wait_for_signal("go")
    return str(answer)


@df.workflow
async def rs_answers(ctx: df.WorkflowContext) -> None:
    ctx.set_query_handler("name", lambda: "the target")
    await ctx.wait_for_signal("stop")


def test_a_reset_inside_a_query_to_another_workflow_asks_it_again(client: df.Client) -> None:
    """A reset to the event that sent a query (its answer after the cut) copies the history
    from before the query: the new run asks again and gets the answer (the old run's answer
    never reaches it)."""
    target = client.start(rs_answers, workflow_id="rs-target")
    handle = client.start(rs_asks, "rs-target", workflow_id="rs-asks")
    events = client.get_handle("rs-asks")
    asked = None
    for _ in range(400):
        asked = next(
            (e for e in events.history() if isinstance(e, ev.ExternalQueryRequested)), None
        )
        answered = any(isinstance(e, ev.ExternalCompleted) for e in events.history())
        if asked is not None and answered:
            break
        threading.Event().wait(0.025)
    assert asked is not None
    handle.terminate(reason="to reset it")

    new_run = handle.reset(to=asked.event_id)

    new = client.get_handle("rs-asks", new_run)
    new.signal("go")
    assert "the target" == new.result(timeout=WAIT_S)
    copied = new.history()
    requests = [e for e in copied if isinstance(e, ev.ExternalQueryRequested)]
    answers = [e for e in copied if isinstance(e, ev.ExternalCompleted)]
    assert len(requests) == len(answers) == 1  # asked again, by the new run, and answered
    target.signal("stop")


def test_reset_refuses_a_running_run_one_that_never_failed_and_events_out_of_range(
    client: df.Client,
) -> None:
    running = client.start(rs_waits, workflow_id="rs-running")
    with pytest.raises(df.ResetError, match=r"run \w+ is still running"):
        running.reset()

    running.signal("go", 1)
    running.result(timeout=WAIT_S)
    with pytest.raises(df.ResetError, match=r"never failed \(its status is 'completed'\)"):
        running.reset()
    last = len(running.history()) - 1
    for bad in (0, last + 1, 10**6, -3):
        with pytest.raises(df.ResetError, match=f"has events 1 to {last} before it closed"):
            running.reset(to=bad)
    with pytest.raises(df.ResetError, match="'last_failure' or an event ID"):
        running.reset(to="yesterday")
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("rs-nobody").reset()
    assert 1 == len(client.list(workflow_type="rs_waits"))  # nothing was started
