"""The partition machine's update rules: updates, their outcomes, and signal/update-with-start.

An update is a request that a run answers with its handler's result. The rule for
:class:`~duraflow.actors.messages.Update` runs the handler's validator (read-only; a refusal
records nothing), records ``workflow.update_accepted`` and applies it, which starts the
handler; the reply is the update's outcome as an ``Outcome`` keyed by
``messages.update_key(request_id)``: ``completed`` or ``failed`` when the handler finished in
that same turn (the reply goes out after the commit, so the result is durable), else
``accepted``. The caller then waits with ``AwaitResult`` on that key (held, or through its
mailbox); the rule for the handler's outcome command answers it, and so does the run's
closing (``closed``) when the run closes first.

Exactly once per request ID: a run's updates are known by their request IDs (in memory for a
resident run, rebuilt on replay; from history otherwise), so a retried request (the reply was
lost, the partition restarted) gets the recorded outcome, or waits for the same handler,
and never runs it again.

Signal-with-start and update-with-start are one request each: applied in one turn by the
single writer, so however many callers race, one of them starts the run and the others find
it open.
"""

from __future__ import annotations

from typing import Any

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.machine_state import DEFERRED, OpenRun, State
from duraflow.engine.run import QueryChangedState
from duraflow.errors import (
    ConfigurationError,
    UpdateRejected,
    WorkflowBlocked,
    WorkflowClosed,
    WorkflowNotFound,
)
from duraflow.storage.codec import decode

UpdateDone = ev.UpdateCompleted | ev.UpdateFailed

# -- requests ---------------------------------------------------------------------------------


def update(st: State, req: m.Update) -> m.Outcome:
    check_workflow_id(req.workflow_id)
    return _update(st, req.workflow_id, req.run_id, req.name, req.args, req.request_id)


def signal_with_start(st: State, req: m.SignalWithStart) -> m.StartReply:
    _check_start(req.workflow_id, req.start)
    wid = req.workflow_id
    started = False
    if wid not in st.open:
        if st.reader.signal_seen(req.request_id):  # a retry: its run has closed since
            return m.StartReply(st.stored_row(wid, None).run_id, started=False)
        st.rules[m.Start](st, req.start)
        started = True
    run_id = st.open[wid].row.run_id if wid in st.open else None
    signal = m.Signal(
        workflow_id=wid,
        run_id=run_id,
        name=req.name,
        payload=req.payload,
        request_id=req.request_id,
    )
    st.rules[m.Signal](st, signal)
    return m.StartReply(run_id or "", started)


def update_with_start(st: State, req: m.UpdateWithStart) -> m.Outcome:
    _check_start(req.workflow_id, req.start)
    wid = req.workflow_id
    if wid not in st.open:
        row = st.reader.latest_run(wid)
        if row is not None:  # a retry whose run has closed since answers what it recorded
            _, done = _recorded(st.reader.history(wid, row.run_id), req.request_id)
            if done is not None:
                return _outcome(done)
        st.rules[m.Start](st, req.start)
    return _update(st, wid, None, req.name, req.args, req.request_id)


def await_update(st: State, req: m.AwaitResult) -> Any:
    """``AwaitResult`` of an update key: its outcome now, or once its handler finishes."""
    wid, key = req.workflow_id, req.run_id or ""
    request_id = key.removeprefix(m.UPDATE_KEY_PREFIX)
    open_run = st.open.get(wid)
    if open_run is not None:
        pending, done = _state_of(st, open_run, request_id)
        if done is not None:
            return _outcome(done)
        if pending is not None:
            st.fx.append(fx.AwaitClose(wid, key, key, req.mailbox))
            return DEFERRED
    row = st.stored_row(wid, None)
    accepted, done = _recorded(st.reader.history(wid, row.run_id), request_id)
    if done is not None:
        return _outcome(done)
    if accepted is not None:
        return _closed_outcome(wid, row.run_id, row.status, accepted.name, request_id)
    raise WorkflowNotFound(f"workflow {wid!r} has no update with request ID {request_id!r}")


def awaiting(fallback: Any) -> Any:
    """The ``AwaitResult`` rule: :func:`await_update` for an update key, else ``fallback``."""

    def await_result(st: State, req: m.AwaitResult) -> Any:
        if req.run_id is not None and req.run_id.startswith(m.UPDATE_KEY_PREFIX):
            return await_update(st, req)
        return fallback(st, req)

    return await_result


# -- commands and closing ---------------------------------------------------------------------


def finished(st: State, issued: tuple[OpenRun, UpdateDone]) -> None:
    """The handler returned or raised (the command is recorded): answer who waits for it."""
    st.fx.append(fx.Closed(_outcome(issued[1])))


def run_closed(st: State, open_run: OpenRun, status: str) -> None:
    """The run closes: answer who waits for an update whose handler had not finished."""
    wid, rid = open_run.key
    run = open_run.run
    if run is not None:
        pending = dict(run.updates.pending)
    else:
        pending = {}
        for event in st.history(open_run.key):
            if isinstance(event, ev.UpdateAccepted):
                pending[event.update_id] = event.name
            elif isinstance(event, (ev.UpdateCompleted, ev.UpdateFailed)):
                pending.pop(event.update_id, None)
    for request_id, name in pending.items():
        st.fx.append(fx.Closed(_closed_outcome(wid, rid, status, name, request_id)))


# -- helpers ----------------------------------------------------------------------------------


def _update(
    st: State, wid: str, run_id: str | None, name: str, args: bytes, request_id: str
) -> m.Outcome:
    open_run = st.open.get(wid)
    if open_run is None or run_id not in (None, open_run.row.run_id):
        return _closed_run_answer(st, wid, run_id, name, request_id)
    pending, done = _state_of(st, open_run, request_id)
    if done is not None:
        return _outcome(done)
    if pending is not None:
        return m.Outcome(wid, m.update_key(request_id), "accepted")
    run = st.resident_run(open_run)
    if run is None:
        raise UpdateRejected(
            f"workflow {wid!r} cannot take update {name!r}: it is stuck: {open_run.stuck}"
        )
    try:
        run.updates.validate(name, decode(args) or [])
    except WorkflowBlocked as exc:
        st.mark_stuck(open_run, exc)
        raise UpdateRejected(f"update {name!r} refused: {exc}") from None
    except QueryChangedState as exc:
        st.hibernate(wid)  # the next activation replays the true state
        raise UpdateRejected(str(exc)) from None
    accepted = ev.UpdateAccepted(
        **st.base(open_run.row), update_id=request_id, name=name, args=args
    )
    st.resolve(open_run, accepted)
    finished_now = run.updates.done.get(request_id)
    if finished_now is not None:
        return _outcome(finished_now)
    if wid not in st.open:  # the run closed in this same activation, the handler unfinished
        status = next(
            (e.status for e in st.fx if type(e) is fx.CloseWorkflow and e.workflow_id == wid),
            "closed",
        )
        raise WorkflowClosed(_closed_message(wid, open_run.row.run_id, status, name, request_id))
    return m.Outcome(wid, m.update_key(request_id), "accepted")


def _state_of(
    st: State, open_run: OpenRun, request_id: str
) -> tuple[str | None, UpdateDone | None]:
    """(name if accepted and unfinished, outcome if finished) of an update of an open run."""
    run = open_run.run if open_run.run is not None else st.resident_run(open_run)
    if run is not None:
        return run.updates.pending.get(request_id), run.updates.done.get(request_id)
    accepted, done = _recorded(st.history(open_run.key), request_id)  # a stuck run
    if done is not None:
        return None, done
    return (accepted.name if accepted is not None else None), None


def _closed_run_answer(
    st: State, wid: str, run_id: str | None, name: str, request_id: str
) -> m.Outcome:
    """A (retried) update of a closed run: what it recorded, else WorkflowClosed."""
    row = st.stored_row(wid, run_id)
    accepted, done = _recorded(st.reader.history(wid, row.run_id), request_id)
    if done is not None:
        return _outcome(done)
    if accepted is not None:
        raise WorkflowClosed(_closed_message(wid, row.run_id, row.status, name, request_id))
    raise WorkflowClosed(f"cannot update workflow {wid!r}: run {row.run_id} already {row.status}")


def _recorded(
    events: list[Any], request_id: str
) -> tuple[ev.UpdateAccepted | None, UpdateDone | None]:
    accepted = done = None
    for event in events:
        if isinstance(event, ev.UpdateAccepted) and event.update_id == request_id:
            accepted = event
        elif isinstance(event, (ev.UpdateCompleted, ev.UpdateFailed)) and (
            event.update_id == request_id
        ):
            done = event
    return accepted, done


def _outcome(done: UpdateDone) -> m.Outcome:
    key = m.update_key(done.update_id)
    if isinstance(done, ev.UpdateCompleted):
        return m.Outcome(done.workflow_id, key, "completed", done.result)
    return m.Outcome(done.workflow_id, key, "failed", None, done.error_type, done.error_message)


def _closed_outcome(wid: str, rid: str, status: str, name: str, request_id: str) -> m.Outcome:
    message = _closed_message(wid, rid, status, name, request_id)
    return m.Outcome(wid, m.update_key(request_id), "closed", None, "WorkflowClosed", message)


def _closed_message(wid: str, rid: str, status: str, name: str, request_id: str) -> str:
    return (
        f"workflow {wid!r} run {rid} {status} before the handler of update {name!r} "
        f"(request ID {request_id!r}) finished"
    )


def _check_start(workflow_id: str, start: m.Start) -> None:
    check_workflow_id(workflow_id)
    if start.workflow_id != workflow_id or start.parent_id is not None:
        raise ConfigurationError(
            f"a with-start request for workflow {workflow_id!r} carries a start of "
            f"{start.workflow_id!r}"
            + (f" as a child of {start.parent_id!r}" if start.parent_id is not None else "")
        )
