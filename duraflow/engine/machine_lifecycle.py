"""The partition machine's rules for a run's lifecycle across runs of one ID.

* ``continue_as_new``: the code called ``ctx.continue_as_new(*args)``: its run closes as
  ``continued_as_new`` and the next run of the ID starts in the same turn (so atomically),
  with the signals the old run received and did not take, in their order.
* ``failed``: a run failed; under a workflow-level ``retry`` policy the next attempt starts
  as a new run after the policy's backoff (a start delay: a durable timer of the new run).
* ``deadline``: a ``run_timeout`` or ``execution_timeout`` elapsed: the run closes as
  ``timed_out`` without running code (a run timeout is retried like a failure); or a next
  run's first activation is due (its code first runs in a turn after the one that started
  it, so an ID that continues as new at once never recurses within one turn).
* ``set_search_attributes``: the code set search attributes; the run's row follows.

Every next run records the run it continued from (``workflow.started``'s ``continued_from``)
and the closed one names it (``new_run_id``, and its row's ``next_run_id``), so a handle from
``start`` follows the chain and the archive links the runs.
"""

from __future__ import annotations

import uuid

import msgspec

from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine import run_options
from duraflow.engine import search_attributes as sa
from duraflow.engine.definitions import resolve_workflow
from duraflow.engine.machine_state import (
    FIRST_ACTIVATION_SEQ,
    RUN_TIMEOUT_SEQ,
    OnClose,
    OpenRun,
    State,
)
from duraflow.engine.retry import delay_s
from duraflow.engine.run import PYTHON_VERSION
from duraflow.storage.rows import WorkflowRow

TIMEOUTS = {RUN_TIMEOUT_SEQ: "run_timeout"}
"""What a deadline's seq times out (any other negative seq: ``execution_timeout``)."""


# -- commands -------------------------------------------------------------------------------------


def continue_as_new(st: State, issued: tuple[OpenRun, ev.WorkflowContinuedAsNew]) -> None:
    open_run, cmd = issued
    started = _started(st, open_run)
    carried = _unconsumed_signals(st, open_run)
    attributes = sa.decode(open_run.row.search_attributes)
    st.close(open_run, cmd)
    _next_run(st, open_run, started, cmd.new_run_id, cmd.args, 1, 0, attributes)
    target = st.open[open_run.row.workflow_id]
    if carried:  # recorded before the new run's code first runs: it finds them buffered
        st.append(
            target,
            [
                ev.SignalReceived(**st.base(target.row), name=s.name, payload=s.payload)
                for s in carried
            ],
        )


def failed(st: State, issued: tuple[OpenRun, ev.WorkflowFailed]) -> None:
    open_run, cmd = issued
    retry = _retry(st, open_run, cmd.error_type)
    if retry is None:
        st.close(open_run, cmd)
        return
    started, delay_us = retry
    cmd.new_run_id = _new_run_id()  # recorded with the event: written after this rule
    _close_and_retry(st, open_run, cmd, started, delay_us)


def set_search_attributes(st: State, issued: tuple[OpenRun, ev.SearchAttributesSet]) -> None:
    open_run, cmd = issued
    data = sa.encode(cmd.search_attributes) or b""
    open_run.row = msgspec.structs.replace(open_run.row, search_attributes=data or None)
    st.fx.append(fx.SetSearchAttributes(open_run.row.workflow_id, open_run.row.run_id, data))


def ending_chain(hook: OnClose) -> OnClose:
    """``hook`` of a closing run, called only when no next run of its ID follows it (a run
    that continued as new, or is retried, does not close its workflow ID)."""

    def on_close(st: State, open_run: OpenRun, status: str) -> None:
        if open_run.row.next_run_id is None:
            hook(st, open_run, status)

    return on_close


# -- due times ------------------------------------------------------------------------------------


def deadline(st: State, due: fx.TimerDue) -> None:
    """A run's ``run_timeout`` or its chain's ``execution_timeout`` elapsed."""
    wid, rid, seq = due.key
    open_run = st.open.get(wid)
    if open_run is None or open_run.row.run_id != rid or seq not in open_run.timer_seqs:
        return  # its run closed
    open_run.timer_seqs.discard(seq)
    if seq == FIRST_ACTIVATION_SEQ:
        st.fx.append(fx.DropTimer(due.key))
        st.resident_run(open_run)  # rebuilt from its history: its code runs (if not already)
        return
    timeout = TIMEOUTS.get(seq, "execution_timeout")
    duration_ms = max(0, (st.now_us - open_run.row.started_at_us) // 1000)
    event = ev.WorkflowTimedOut(**st.base(open_run.row), timeout=timeout, duration_ms=duration_ms)
    retry = _retry(st, open_run, "TimedOut") if seq == RUN_TIMEOUT_SEQ else None
    if retry is not None:
        event.new_run_id = _new_run_id()
    st.append(open_run, [event])
    if retry is None:
        st.close(open_run, event)
    else:
        _close_and_retry(st, open_run, event, *retry)


# -- the next run ---------------------------------------------------------------------------------


def _retry(st: State, open_run: OpenRun, error_type: str) -> tuple[ev.WorkflowStarted, int] | None:
    """(the run's start, the backoff in µs) when its retry policy starts another attempt."""
    started = _started(st, open_run)
    if started.retry is None:
        return None
    policy = run_options.policy(started.retry)
    following = started.attempt + 1
    if not policy.allows(following, error_type):
        return None
    delay_us = round(delay_s(policy, following) * 1e6)
    ends = started.execution_deadline_us
    if ends is not None and st.now_us + delay_us >= ends:
        return None  # the next attempt could not start before the whole execution times out
    return started, delay_us


def _close_and_retry(
    st: State, open_run: OpenRun, closing: ev.Event, started: ev.WorkflowStarted, delay_us: int
) -> None:
    attributes = sa.decode(open_run.row.search_attributes)
    new_run_id = ev.next_run(closing)
    assert new_run_id is not None
    st.close(open_run, closing)
    _next_run(
        st, open_run, started, new_run_id, started.args, started.attempt + 1, delay_us, attributes
    )


def _next_run(
    st: State,
    before: OpenRun,
    started: ev.WorkflowStarted,
    run_id: str,
    args: bytes,
    attempt: int,
    delay_us: int,
    attributes: dict[str, object],
) -> None:
    old = before.row
    first_run_id = old.first_run_id or old.run_id
    definition = resolve_workflow(old.workflow_type, old.code_ref)
    row = WorkflowRow(
        old.workflow_id,
        run_id,
        definition.name,
        definition.code_ref,
        "running",
        old.parent_id,
        old.parent_run_id,
        old.parent_seq,
        st.now_us,
        None,
        None,
        None,
        None,
        continued_from=old.run_id,
        attempt=attempt,
        search_attributes=sa.encode(attributes),
        first_run_id=first_run_id,
    )
    event = ev.WorkflowStarted(
        **st.base(row),
        args=args,
        code_ref=definition.code_ref,
        python=PYTHON_VERSION,
        code_hash=definition.code_hash,
        attempt=attempt,
        continued_from=old.run_id,
        first_run_id=first_run_id,
        start_delay_us=delay_us,
        **run_options.carried(started, attributes),
    )
    st.begin_run(row, event, definition, later=True)


def _started(st: State, open_run: OpenRun) -> ev.WorkflowStarted:
    run = open_run.run
    if run is not None:
        return run.started
    first = st.history(open_run.key)[0]
    assert isinstance(first, ev.WorkflowStarted)
    return first


def _unconsumed_signals(st: State, open_run: OpenRun) -> list[ev.SignalReceived]:
    """The signals the run received and its code did not take, in the order they came.

    Signals of one name are taken in order, so those left are the last ``n`` received of
    that name (``n``: how many the code still holds).
    """
    run = open_run.run
    left = {name: len(queue) for name, queue in run.signals.items() if queue} if run else {}
    if not left:
        return []
    received = [e for e in st.history(open_run.key) if isinstance(e, ev.SignalReceived)]
    carried: list[ev.SignalReceived] = []
    for event in reversed(received):
        if left.get(event.name, 0) > 0:
            left[event.name] -= 1
            carried.append(event)
    carried.reverse()
    return carried


def _new_run_id() -> str:
    return uuid.uuid4().hex
