"""The partition machine's run rules: what each request, timer, child outcome and delivered
message does to a run, and what the timer, child and closing commands do.

Each rule is a function ``(state, input) -> reply``: it reads through ``st.reader``, changes
the state, and adds effects to ``st.fx``. A DuraflowError it raises is the request's reply.
"""

from __future__ import annotations

import uuid
from typing import Any

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.description import WorkflowDescription, describe_run
from duraflow.engine import effects as fx
from duraflow.engine import run_options, search_attributes
from duraflow.engine.definitions import resolve_workflow
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.machine_state import DEFERRED, OpenRun, State
from duraflow.engine.run import PYTHON_VERSION, QueryChangedState
from duraflow.errors import (
    ConfigurationError,
    PartitionUnavailable,
    QueryFailed,
    UnknownQuery,
    WorkflowAlreadyRunning,
    WorkflowBlocked,
)
from duraflow.storage.codec import decode, encode, error_text
from duraflow.storage.rows import TimerRow, WorkflowRow

PRUNE_BATCH = 1000
"""Closed runs deleted per turn; more are left to the following turns."""


# -- requests that change runs ----------------------------------------------------------------


def start(st: State, req: m.Start) -> m.StartReply:
    check_workflow_id(req.workflow_id)
    if req.id_conflict not in m.ID_CONFLICT_POLICIES:
        raise ConfigurationError(
            f"id_conflict must be one of {m.ID_CONFLICT_POLICIES}, got {req.id_conflict!r}"
        )
    existing = st.open.get(req.workflow_id)
    if req.run_id is not None:
        # The client picks the run ID, so a retried start (the reply was lost) is a no-op.
        if existing is not None and existing.row.run_id == req.run_id:
            return m.StartReply(req.run_id, started=True)
        if existing is None and st.reader.get_run(req.workflow_id, req.run_id) is not None:
            return m.StartReply(req.run_id, started=True)
    if req.parent_run_id is not None:
        same = existing.row if existing else st.reader.latest_run(req.workflow_id)
        if same is not None and (same.parent_run_id, same.parent_seq) == (
            req.parent_run_id,
            req.parent_seq,
        ):
            return m.StartReply(same.run_id, started=False)  # a retried child start
    if existing is not None:
        if req.id_conflict == "use_existing":
            return m.StartReply(
                existing.row.run_id, started=False, first_run_id=existing.row.first_run_id
            )
        if req.id_conflict == "fail":
            raise WorkflowAlreadyRunning(
                f"workflow {req.workflow_id!r} is already running (run {existing.row.run_id}); "
                "pass id_conflict='use_existing' or 'terminate_existing' to start anyway"
            )
    definition = resolve_workflow(req.workflow_type, req.code_ref)
    options = run_options.started_fields(req.options, st.now_us)
    if existing is not None:
        st.terminate(existing, "terminated by a new start (id_conflict=terminate_existing)")
    row = WorkflowRow(
        req.workflow_id,
        req.run_id or uuid.uuid4().hex,
        definition.name,
        definition.code_ref,
        "running",
        req.parent_id,
        req.parent_run_id,
        req.parent_seq,
        st.now_us,
        None,
        None,
        None,
        None,
        search_attributes=search_attributes.encode(options.get("search_attributes")),
    )
    started = ev.WorkflowStarted(
        **st.base(row),
        args=req.args,
        code_ref=definition.code_ref,
        python=PYTHON_VERSION,
        code_hash=definition.code_hash,
        parent_id=req.parent_id,
        parent_run_id=req.parent_run_id,
        parent_seq=req.parent_seq,
        **options,
    )
    st.begin_run(row, started, definition)
    return m.StartReply(row.run_id, started=True)


def signal(st: State, req: m.Signal) -> None:
    if st.reader.signal_seen(req.request_id):
        return  # a retried signal: appended once already (its run may have closed since)
    open_run = st.open_run(req.workflow_id, req.run_id, "signal")
    event = ev.SignalReceived(**st.base(open_run.row), name=req.name, payload=req.payload)
    st.resolve(open_run, event)
    st.fx.append(fx.MarkSignal(req.request_id, req.workflow_id, open_run.row.run_id, event.lsn))


def cancel(st: State, req: m.Cancel) -> None:
    open_run = st.open_run(req.workflow_id, req.run_id, "cancel")
    run = st.resident_run(open_run)  # rebuilt if needed: a repeated cancel is ignored either way
    if run is not None and run.cancel_requested:
        return
    st.resolve(open_run, ev.CancelRequested(**st.base(open_run.row), reason=req.reason))


def terminate(st: State, req: m.Terminate) -> None:
    if req.parent_run_id is not None:
        open_run = st.open.get(req.workflow_id)
        if open_run is not None and open_run.row.parent_run_id == req.parent_run_id:
            st.terminate(open_run, req.reason)
        return  # the child already closed or was replaced: nothing to do
    st.terminate(st.open_run(req.workflow_id, req.run_id, "terminate"), req.reason)


def child_closed(st: State, msg: m.ChildClosed) -> None:
    open_run = st.open.get(msg.workflow_id)
    if open_run is None or open_run.row.run_id != msg.parent_run_id:
        return  # the parent closed already
    run = st.resident_run(open_run)
    if run is not None and msg.seq not in run.open_children():
        return  # delivered before
    if run is None and any(
        isinstance(e, (ev.ChildCompleted, ev.ChildFailed)) and e.seq == msg.seq
        for e in st.history(open_run.key)
    ):
        return
    event: Any
    if msg.status == "completed":
        event = ev.ChildCompleted(
            **st.base(open_run.row),
            seq=msg.seq,
            child_workflow_id=msg.child_workflow_id,
            result=msg.result or b"",
        )
    else:
        event = ev.ChildFailed(
            **st.base(open_run.row),
            seq=msg.seq,
            child_workflow_id=msg.child_workflow_id,
            status=msg.status,
            error_type=msg.error_type,
            error_message=msg.error_message,
        )
    st.resolve(open_run, event)


def timer_due(st: State, due: fx.TimerDue) -> None:
    wid, rid, seq = due.key
    open_run = st.open.get(wid)
    if open_run is None or open_run.row.run_id != rid or seq not in open_run.timer_seqs:
        return  # cancelled, or its run closed
    open_run.timer_seqs.discard(seq)
    st.fx.append(fx.DropTimer(due.key))
    st.resolve(open_run, ev.TimerFired(**st.base(open_run.row), seq=seq))


def timer_live(st: State, due: fx.TimerDue) -> bool:
    open_run = st.open.get(due.key[0])
    return (
        open_run is not None
        and open_run.row.run_id == due.key[1]
        and due.key[2] in open_run.timer_seqs
    )


# -- requests that read -----------------------------------------------------------------------


def query(st: State, req: m.Query) -> bytes:
    open_run = st.open_run(req.workflow_id, req.run_id, "query")
    run = st.resident_run(open_run)
    if run is None:
        raise QueryFailed(f"workflow {req.workflow_id!r} cannot answer queries: {open_run.stuck}")
    if req.name not in run.query_handlers:
        raise UnknownQuery(
            f"workflow {req.workflow_id!r} has no query handler {req.name!r} "
            f"(it has: {sorted(run.query_handlers)})"
        )
    try:
        value = run.query(req.name, decode(req.args) or [])
    except WorkflowBlocked as exc:
        st.mark_stuck(open_run, exc)
        raise QueryFailed(f"query {req.name!r} failed: {exc}") from None
    except QueryChangedState as exc:
        st.hibernate(req.workflow_id)  # the next activation replays the true state
        raise QueryFailed(str(exc)) from None
    except GeneratorExit:
        raise
    except BaseException as exc:  # reason: a handler's error (any) goes back to the caller
        raise QueryFailed(
            f"query {req.name!r} of workflow {req.workflow_id!r} raised "
            f"{type(exc).__name__}: {error_text(exc)}"
        ) from None
    return encode(value, f"result of query {req.name!r}")


def await_result(st: State, req: m.AwaitResult) -> Any:
    open_run = st.open.get(req.workflow_id)
    if open_run is not None and req.run_id in (None, open_run.row.run_id):
        wid, rid = open_run.key
        st.fx.append(fx.AwaitClose(wid, rid, req.run_id, req.mailbox))
        return DEFERRED
    row = st.stored_row(req.workflow_id, req.run_id)
    return m.Outcome(
        row.workflow_id,
        row.run_id,
        row.status,
        row.result,
        row.error_type,
        row.error_message,
        row.next_run_id,
    )


def describe(st: State, req: m.Describe) -> WorkflowDescription:
    open_run = st.open.get(req.workflow_id)
    if open_run is not None and req.run_id in (None, open_run.row.run_id):
        return _open_description(st, open_run, st.last_event_id(open_run))
    row = st.stored_row(req.workflow_id, req.run_id)
    return _description(row, st.reader.last_event_id(row.workflow_id, row.run_id), [], None, st)


def history(st: State, req: m.History) -> list[bytes]:
    open_run = st.open.get(req.workflow_id)
    if open_run is not None and req.run_id in (None, open_run.row.run_id):
        key = open_run.key
    else:
        row = st.stored_row(req.workflow_id, req.run_id)
        key = (row.workflow_id, row.run_id)
    return [ev.encode_event(e) for e in st.reader.history(*key)]


def list_runs(st: State, req: m.ListWorkflows) -> list[WorkflowDescription]:
    """What describe() says of each run: open runs from memory, lengths from one query."""
    out = []
    search = req.search
    limit = req.limit if search is None else -1  # filtered below (search attributes: msgpack)
    for row, length in st.reader.list_workflows(req.status, req.workflow_type, limit):
        if search is not None:
            if not search_attributes.matches(
                search_attributes.decode(row.search_attributes), search
            ):
                continue
            if len(out) == req.limit:
                break
        open_run = st.open.get(row.workflow_id)
        if open_run is not None and open_run.row.run_id == row.run_id:
            known = open_run.last_event_id
            out.append(_open_description(st, open_run, length if known is None else known))
        else:
            out.append(_description(row, length, [], None, st))
    return out


def _open_description(st: State, open_run: OpenRun, length: int) -> WorkflowDescription:
    wid, rid = open_run.key
    pending = sorted(
        attempt.definition.name
        for seq in open_run.activity_seqs
        if (attempt := st.attempts.get((wid, rid, seq))) is not None
    )
    return _description(open_run.row, length, pending, open_run.stuck, st)


def _description(
    row: WorkflowRow, length: int, pending: list[str], stuck: str | None, st: State
) -> WorkflowDescription:
    return describe_run(
        workflow_id=row.workflow_id,
        run_id=row.run_id,
        workflow_type=row.workflow_type,
        status=row.status,
        started_at_us=row.started_at_us,
        closed_at_us=row.closed_at_us,
        parent_workflow_id=row.parent_id,
        history_length=length,
        pending_activities=pending,
        error_type=row.error_type,
        error_message=row.error_message,
        stuck=stuck,
        partition=st.index,
        attempt=row.attempt,
        continued_from=row.continued_from,
        next_run_id=row.next_run_id,
        search_attributes=search_attributes.decode(row.search_attributes),
        first_run_id=row.first_run_id,
    )


# -- the archive ------------------------------------------------------------------------------


def archived(st: State, req: m.Archived) -> None:
    if req.lsn > st.archived_lsn:
        st.archived_lsn = min(req.lsn, st.lsn)
        st.fx.append(fx.SetMeta("archived_lsn", str(st.archived_lsn)))
    prune(st, None)


def prune(st: State, _due: fx.PruneDue | None) -> None:
    """Delete closed runs that are archived and past the retention period (tiering)."""
    if st.archived_lsn == 0:
        return
    cutoff_us = st.now_us - round(st.retention_s * 1e6)
    runs = st.reader.prunable_runs(cutoff_us, st.archived_lsn, PRUNE_BATCH)
    for workflow_id, run_id in runs:
        st.fx.append(fx.DeleteRun(workflow_id, run_id))
    if runs and not st.pruned:
        st.pruned = True
        st.fx.append(fx.SetMeta("pruned", "1"))
    if len(runs) == PRUNE_BATCH:
        st.arm(st.now, fx.PruneDue())  # the rest in the next turns


# -- the outbox -------------------------------------------------------------------------------


def delivered(st: State, item: fx.Delivered) -> None:
    error = item.error
    if isinstance(error, PartitionUnavailable):
        st.arm(st.now + OUTBOX_RETRY_S, fx.OutboxRetry(item.outbox_id))
        return
    st.fx.append(fx.DropOutbox(item.outbox_id))
    message = item.message
    if error is not None and isinstance(message, m.Start) and message.parent_id is not None:
        # The child could not start: the parent's handle fails with the reason.
        child_closed(
            st,
            m.ChildClosed(
                workflow_id=message.parent_id,
                parent_run_id=message.parent_run_id or "",
                seq=message.parent_seq or 0,
                child_workflow_id=message.workflow_id,
                status="not_started",
                error_type=type(error).__name__,
                error_message=str(error),
            ),
        )


OUTBOX_RETRY_S = 0.5
"""How long an outbox message waits before it is sent again after its target was away."""


def resend(st: State, due: fx.OutboxRetry) -> None:
    for row_id, target, data in st.reader.outbox():
        if row_id == due.outbox_id:
            st.fx.append(fx.Send(row_id, target, m.decode_outbox(data)))


# -- commands ---------------------------------------------------------------------------------


def start_timer(st: State, issued: tuple[OpenRun, ev.TimerStarted]) -> None:
    open_run, cmd = issued
    wid, rid = open_run.key
    st.fx.append(fx.PutTimer(TimerRow(wid, rid, cmd.seq, cmd.fire_at_us)))
    open_run.timer_seqs.add(cmd.seq)
    st.arm(cmd.fire_at_us / 1e6, fx.TimerDue((wid, rid, cmd.seq)))


def cancel_timer(st: State, issued: tuple[OpenRun, ev.TimerCancelled]) -> None:
    open_run, cmd = issued
    st.fx.append(fx.DropTimer((*open_run.key, cmd.seq)))
    open_run.timer_seqs.discard(cmd.seq)


def start_child(st: State, issued: tuple[OpenRun, ev.ChildStarted]) -> None:
    open_run, cmd = issued
    wid, rid = open_run.key
    start_message = m.Start(
        workflow_id=cmd.child_workflow_id,
        workflow_type=cmd.child_workflow_type,
        code_ref=cmd.code_ref,
        args=cmd.args,
        parent_id=wid,
        parent_run_id=rid,
        parent_seq=cmd.seq,
        options=None if cmd.run_options is None else m.RunOptions(**cmd.run_options),
    )
    st.outbox(cmd.child_workflow_id, start_message)


def close(st: State, issued: tuple[OpenRun, Any]) -> None:
    """The code returned, raised or accepted its cancellation: the run closes."""
    open_run, cmd = issued
    st.close(open_run, cmd)
