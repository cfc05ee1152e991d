"""The partition machine's rules for workflows talking to workflows (DESIGN section 5): the
signals, queries and cancels a run sends to other workflows, and ``block_until``.

A run's request travels in an ``ExternalRequest`` through the outbox (durable, sent after the
commit, sent again until the target's partition answers); the answer comes back as the
outbox delivery's outcome and is recorded as the run's resolution of that command, so a
replay returns it without asking again. The receiver appends a resent signal once (its
request ID is the sender's run ID and sequence number, remembered with the target's run).

``block_until`` registers the waiting run with each target ID's partition (a ``Watch``):
that partition answers at once with the status of an ID whose latest run is closed, else
keeps the registration in its file (a meta row per target ID, written in the same turn) and
sends a ``WatchedClosed`` through its outbox when a run of the ID closes, even one started
later. Both sides survive restarts: registrations are rows, notices are outbox rows.
"""

from __future__ import annotations

from typing import Any

import msgspec

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.machine_state import OpenRun, State
from duraflow.errors import PayloadError, WorkflowNotFound

CHILD_START_RETRY_S = 0.02
"""How long a request to a child that has not started yet waits before it is sent again (the
child's start, sent by the same turn's outbox, usually arrives first)."""

WATCHERS_KEY = "watchers:"
"""Meta key prefix of the ``block_until`` registrations for one target ID (JSON list)."""

Watcher = tuple[str, str, int]
"""(watcher workflow ID, its run ID, its block_until seq)."""

_watchers_decoder = msgspec.json.Decoder(list[tuple[str, str, int]])


# -- commands (the sender's partition) ----------------------------------------------------------


def send_request(st: State, issued: tuple[OpenRun, Any]) -> None:
    """The code signalled, queried or cancelled another workflow: an outbox message."""
    open_run, cmd = issued
    wid, rid = open_run.key
    target = cmd.target_workflow_id
    inner: m.Signal | m.Query | m.Cancel
    if isinstance(cmd, ev.ExternalSignalRequested):
        inner = m.Signal(
            workflow_id=target,
            run_id=cmd.target_run_id,
            name=cmd.name,
            payload=cmd.payload,
            request_id=f"{rid}:{cmd.seq}",
        )
    elif isinstance(cmd, ev.ExternalQueryRequested):
        inner = m.Query(workflow_id=target, run_id=cmd.target_run_id, name=cmd.name, args=cmd.args)
    else:
        inner = m.Cancel(workflow_id=target, reason=cmd.reason)
    st.outbox(
        target,
        m.ExternalRequest(
            workflow_id=target,
            sender_id=wid,
            sender_run_id=rid,
            seq=cmd.seq,
            request=inner,
            child_seq=cmd.child_seq,
        ),
    )


def watch_targets(st: State, issued: tuple[OpenRun, ev.BlockUntilStarted]) -> None:
    """``block_until`` began: register with each target ID's partition."""
    open_run, cmd = issued
    wid, rid = open_run.key
    for target in cmd.workflow_ids:
        watch = m.Watch(workflow_id=target, watcher_id=wid, watcher_run_id=rid, seq=cmd.seq)
        st.outbox(target, watch)


def unwatch_targets(st: State, issued: tuple[OpenRun, ev.BlockUntilEnded]) -> None:
    """``block_until`` stopped waiting: the targets still open may forget it."""
    open_run, cmd = issued
    wid, rid = open_run.key
    for target in cmd.pending:
        forget = m.Watch(
            workflow_id=target, watcher_id=wid, watcher_run_id=rid, seq=cmd.seq, cancel=True
        )
        st.outbox(target, forget)


# -- requests (the target's partition) --------------------------------------------------------


def receive(st: State, req: m.ExternalRequest) -> Any:
    """Apply another workflow's signal, query or cancel as a client's; the reply goes back."""
    inner = req.request
    if inner.workflow_id != req.workflow_id:
        raise PayloadError(
            f"malformed ExternalRequest: addressed to {req.workflow_id!r}, "
            f"carries a request for {inner.workflow_id!r}"
        )
    return st.rules[type(inner)](st, inner)  # a signal sent again is recorded once


def watch(st: State, req: m.Watch) -> str | None:
    """Register (or with ``cancel`` forget) a ``block_until`` of another run on this ID.

    Returns:
        The status of the ID's latest run if it is closed (nothing is registered), else None.
    """
    target = check_workflow_id(req.workflow_id)
    me: Watcher = (req.watcher_id, req.watcher_run_id, req.seq)
    key = WATCHERS_KEY + target
    watchers = _watchers(st, key)
    if req.cancel:
        if me in watchers:
            watchers.remove(me)
            st.fx.append(fx.SetMeta(key, _encode_watchers(watchers)))
        return None
    if target not in st.open:
        row = st.reader.latest_run(target)
        if row is not None:
            return row.status
    if me not in watchers:
        watchers.append(me)
        st.fx.append(fx.SetMeta(key, _encode_watchers(watchers)))
    return None


def notify_watchers(st: State, open_run: OpenRun, status: str) -> None:
    """A run closed: tell the ``block_until`` calls waiting on its workflow ID."""
    workflow_id = open_run.key[0]
    key = WATCHERS_KEY + workflow_id
    watchers = _watchers(st, key)
    if not watchers:
        return
    st.fx.append(fx.SetMeta(key, ""))
    for watcher_id, watcher_run_id, seq in watchers:
        st.outbox(
            watcher_id,
            m.WatchedClosed(
                workflow_id=watcher_id,
                watcher_run_id=watcher_run_id,
                seq=seq,
                target_workflow_id=workflow_id,
                status=status,
            ),
        )


def watched_closed(st: State, msg: m.WatchedClosed) -> None:
    watcher = (msg.workflow_id, msg.watcher_run_id, msg.seq)
    _record_closed(st, watcher, msg.target_workflow_id, msg.status)


# -- delivery outcomes (the sender's partition) -----------------------------------------------


def request_delivered(st: State, item: fx.Delivered) -> None:
    """The target's partition answered a request: record the answer (or its error) in the
    sender's run, which wakes its code."""
    msg: m.ExternalRequest = item.message
    error = item.error
    open_run = st.open.get(msg.sender_id)
    run = None
    if open_run is not None and open_run.row.run_id == msg.sender_run_id:
        run = st.resident_run(open_run)
        if (
            isinstance(error, WorkflowNotFound)
            and msg.child_seq is not None
            and run is not None
            and msg.child_seq in run.open_children()
        ):
            # The child's start has not arrived yet (it travels in another outbox row).
            st.arm(st.now + CHILD_START_RETRY_S, fx.OutboxRetry(item.outbox_id))
            return
    st.fx.append(fx.DropOutbox(item.outbox_id))
    if open_run is None or open_run.row.run_id != msg.sender_run_id:
        return  # the sender closed meanwhile
    if run is not None and not run.messaging.awaiting(msg.seq):
        return  # recorded before
    resolutions = (ev.ExternalCompleted, ev.ExternalFailed)
    if run is None and _in_history(st, open_run, resolutions, msg.seq):
        return
    base = st.base(open_run.row)
    event: Any
    if error is None:
        result = item.value if isinstance(item.value, bytes) else b""
        event = ev.ExternalCompleted(
            **base, seq=msg.seq, target_workflow_id=msg.workflow_id, result=result
        )
    else:
        event = ev.ExternalFailed(
            **base,
            seq=msg.seq,
            target_workflow_id=msg.workflow_id,
            error_type=type(error).__name__,
            error_message=str(error),
        )
    st.resolve(open_run, event)


def watch_delivered(st: State, item: fx.Delivered) -> None:
    """A target's partition took a registration; it may have answered that the ID is closed."""
    st.fx.append(fx.DropOutbox(item.outbox_id))
    msg: m.Watch = item.message
    if msg.cancel or item.error is not None or not isinstance(item.value, str):
        return
    watcher = (msg.watcher_id, msg.watcher_run_id, msg.seq)
    _record_closed(st, watcher, msg.workflow_id, item.value)


def _record_closed(st: State, watcher: Watcher, target: str, status: str) -> None:
    watcher_id, watcher_run_id, seq = watcher
    open_run = st.open.get(watcher_id)
    if open_run is None or open_run.row.run_id != watcher_run_id:
        return  # the waiting run closed meanwhile
    run = st.resident_run(open_run)
    if run is not None and not run.messaging.watching(seq, target):
        return  # recorded before, or the wait is over
    if run is None and any(
        (type(e) is ev.BlockedWorkflowClosed and e.target_workflow_id == target)
        or type(e) is ev.BlockUntilEnded
        for e in _events_of(st, open_run, seq)
    ):
        return
    st.resolve(
        open_run,
        ev.BlockedWorkflowClosed(
            **st.base(open_run.row), seq=seq, target_workflow_id=target, status=status
        ),
    )


# -- helpers ----------------------------------------------------------------------------------


def _events_of(st: State, open_run: OpenRun, seq: int) -> list[Any]:
    return [e for e in st.history(open_run.key) if getattr(e, "seq", None) == seq]


def _in_history(st: State, open_run: OpenRun, kinds: tuple[type, ...], seq: int) -> bool:
    return any(isinstance(e, kinds) for e in _events_of(st, open_run, seq))


def _watchers(st: State, key: str) -> list[Watcher]:
    raw = st.reader.get_meta(key)
    return [tuple(w) for w in _watchers_decoder.decode(raw)] if raw else []  # type: ignore[misc]  # reason: decoded as 3-tuples


def _encode_watchers(watchers: list[Watcher]) -> str:
    return msgspec.json.encode(watchers).decode() if watchers else ""
