"""The partition machine's operator rules: pause and unpause a run, reset a closed run into a
new one, and what a pause holds back.

A paused run still takes what reaches it (signals, outcomes of attempts already running) and
its code still runs, but nothing new goes out until it is unpaused:

* an activity attempt about to be dispatched is held as a backoff that is due now (its row
  says ``backoff``; no attempt is counted); unpause lets it begin;
* a child start is recorded (``workflow.child_started``) but not sent; unpause sends those
  recorded since the pause;
* a timer that falls due stays in the file; unpause fires those due by then.

Which runs are paused is kept in the partition's ``paused`` meta row (JSON), read at load, so
a pause survives restarts; ``workflow.paused`` / ``workflow.unpaused`` record each change in
the run's history.

A reset copies a closed run's history, up to its first failure or an event ID, into a new run
of the same ID: the copy replays (steps completed in it do not run again) and the code goes on
from there. The copy never ends inside a step: it stops before the first activity, timer or
child still unresolved at the cut, so those run again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.description import WorkflowDescription, with_code_hashes
from duraflow.engine import effects as fx
from duraflow.engine import run_options
from duraflow.engine.definitions import WorkflowDefinition, resolve_workflow
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.machine_state import OpenRun, Rule, State
from duraflow.engine.replay import rebuild
from duraflow.engine.run import PYTHON_VERSION
from duraflow.errors import DuraflowError, ResetError
from duraflow.storage.rows import WorkflowRow

META_KEY = "paused"
"""The meta row holding the partition's paused runs (JSON: workflow ID -> PauseMark)."""


class PauseMark(msgspec.Struct, frozen=True):
    """A paused run: which, why, since when, and the event ID of its ``workflow.paused``."""

    run_id: str
    reason: str
    at_us: int
    event_id: int


_marks = msgspec.json.Decoder(dict[str, PauseMark])


def paused(st: State, workflow_id: str, run_id: str) -> PauseMark | None:
    """The pause of that run, if it is paused."""
    mark = st.paused.get(workflow_id)
    return mark if mark is not None and mark.run_id == run_id else None


def load(st: State, reader: Any) -> None:
    """Read which open runs are paused (at open, or after a rolled-back turn)."""
    raw = reader.get_meta(META_KEY)
    st.paused = _open_only(st, _marks.decode(raw) if raw else {})


def _open_only(st: State, marks: dict[str, PauseMark]) -> dict[str, PauseMark]:
    return {
        wid: mark
        for wid, mark in marks.items()
        if (open_run := st.open.get(wid)) is not None and open_run.row.run_id == mark.run_id
    }


def _save(st: State) -> None:
    st.paused = _open_only(st, st.paused)  # runs closed since are forgotten here
    st.fx.append(fx.SetMeta(META_KEY, msgspec.json.encode(st.paused).decode()))


# -- requests ---------------------------------------------------------------------------------


def pause(st: State, req: m.Pause) -> None:
    open_run = st.open_run(req.workflow_id, req.run_id, "pause")
    if paused(st, *open_run.key) is not None:
        return  # paused already (or a retried request)
    event = ev.WorkflowPaused(**st.base(open_run.row), reason=req.reason)
    st.append(open_run, [event])
    st.paused[req.workflow_id] = PauseMark(
        open_run.row.run_id, req.reason, st.now_us, event.event_id
    )
    _save(st)


def unpause(st: State, req: m.Unpause) -> None:
    open_run = st.open_run(req.workflow_id, req.run_id, "unpause")
    mark = paused(st, *open_run.key)
    if mark is None:
        return  # not paused (or a retried request)
    del st.paused[req.workflow_id]
    _save(st)
    st.append(open_run, [ev.WorkflowUnpaused(**st.base(open_run.row), reason=req.reason)])
    _release(st, open_run, mark)


def _release(st: State, open_run: OpenRun, mark: PauseMark) -> None:
    """Send what the pause held: child starts now; held attempts and due timers through due
    times armed for now (they run in the next turn, by their own rules)."""
    wid, rid = key = open_run.key
    for event in st.history(key):
        if isinstance(event, ev.ChildStarted) and event.event_id > mark.event_id:
            st.commands[ev.ChildStarted](st, (open_run, event))
    if open_run.timer_seqs:
        for timer in st.reader.timers():
            if (timer.workflow_id, timer.run_id) == key and timer.fire_at_us <= st.now_us:
                st.arm(st.now, fx.TimerDue((wid, rid, timer.seq)))
    if any(not a.running for a in _attempts(st, open_run)):
        for row in st.reader.activities():
            if (row.workflow_id, row.run_id) != key or row.state != "backoff":
                continue
            if (row.next_at_us or 0) <= st.now_us:  # later ones have their due time armed
                st.arm(st.now, fx.RetryDue((wid, rid, row.seq), row.attempt + 1))


def _attempts(st: State, open_run: OpenRun) -> list[Any]:
    wid, rid = open_run.key
    return [a for seq in open_run.activity_seqs if (a := st.attempts.get((wid, rid, seq)))]


# -- what a pause holds -----------------------------------------------------------------------


def hold(st: State, effects: list[Any]) -> None:
    """Turn the ``Dispatch`` of a paused run's attempt into a backoff due now (in place: the
    effects keep their positions)."""
    for index, effect in enumerate(effects):
        if type(effect) is not fx.Dispatch:
            continue
        wid, rid, _ = key = effect.key
        attempt = st.attempts.get(key)
        if paused(st, wid, rid) is None or attempt is None or attempt.number != effect.number:
            continue
        attempt.number = effect.number - 1  # not begun: it begins again at unpause
        attempt.running = False
        attempt.started_at = None
        effects[index] = fx.UpdateActivity(key, attempt.number, "backoff", st.now_us)


def holding_child_starts(rule: Rule) -> Rule:
    """``rule`` (a child start command's), held while the run is paused."""

    def start_child(st: State, issued: tuple[OpenRun, ev.ChildStarted]) -> None:
        if paused(st, *issued[0].key) is None:
            rule(st, issued)

    return start_child


def holding_timers(rule: Rule) -> Rule:
    """``rule`` (a timer's due time), held while its run is paused: the timer stays."""

    def timer_due(st: State, due: fx.TimerDue) -> Any:
        if paused(st, due.key[0], due.key[1]) is not None:
            return None
        return rule(st, due)

    return timer_due


def live_unless_paused(check: Callable[[State, Any], bool]) -> Callable[[State, Any], bool]:
    """``check`` of a timer's due time; never live while its run is paused."""

    def live(st: State, due: Any) -> bool:
        return paused(st, due.key[0], due.key[1]) is None and check(st, due)

    return live


def patch_marked(st: State, issued: tuple[OpenRun, ev.PatchMarker]) -> None:
    """``ctx.patched`` recorded a marker: history holds it, nothing else is done."""


# -- describing -------------------------------------------------------------------------------


def describing(rule: Rule) -> Rule:
    """``rule`` (describe's), with the run's pause and code hashes added."""

    def describe(st: State, req: m.Describe) -> WorkflowDescription:
        described: WorkflowDescription = rule(st, req)
        return with_code_hashes(_with_pause(st, described), _recorded_hash(st, described))

    return describe


def listing(rule: Rule) -> Rule:
    """``rule`` (list's), with each run's pause added."""

    def list_runs(st: State, req: m.ListWorkflows) -> list[WorkflowDescription]:
        found: list[WorkflowDescription] = rule(st, req)
        return [_with_pause(st, d) for d in found] if st.paused else found

    return list_runs


def _with_pause(st: State, described: WorkflowDescription) -> WorkflowDescription:
    mark = paused(st, described.workflow_id, described.run_id)
    if mark is None or described.status != "running":
        return described
    return msgspec.structs.replace(described, paused=True, pause_reason=mark.reason)


def _recorded_hash(st: State, described: WorkflowDescription) -> str | None:
    open_run = st.open.get(described.workflow_id)
    if open_run is not None and open_run.row.run_id == described.run_id and open_run.run:
        return open_run.run.started.code_hash or None
    history = st.reader.history(described.workflow_id, described.run_id)
    if history and isinstance(history[0], ev.WorkflowStarted):
        return history[0].code_hash or None
    return None


# -- reset ------------------------------------------------------------------------------------

_STEPS = (
    ev.ActivityScheduled,
    ev.TimerStarted,
    ev.ChildStarted,
    ev.ExternalSignalRequested,
    ev.ExternalQueryRequested,
    ev.ExternalCancelRequested,
    ev.BlockUntilStarted,
)
"""Commands that open a step its ``seq`` names, resolved by a later event of the same seq."""
_RESOLVES_STEP = (
    ev.ActivityCompleted,
    ev.ActivityFailed,
    ev.ActivityCancelled,
    ev.TimerFired,
    ev.TimerCancelled,
    ev.ChildCompleted,
    ev.ChildFailed,
    ev.ExternalCompleted,
    ev.ExternalFailed,
    ev.BlockUntilEnded,
)
"""What ends a step (a ``block_until`` also ends when every ID it waits on has closed)."""
_NOT_COPIED = (ev.WorkflowPaused, ev.WorkflowUnpaused)


def reset(st: State, req: m.Reset) -> m.StartReply:
    wid = check_workflow_id(req.workflow_id)
    check_workflow_id(req.new_run_id)
    if st.reader.get_run(wid, req.new_run_id) is not None:
        return m.StartReply(req.new_run_id, started=True)  # a retried reset
    source = st.stored_row(wid, req.run_id)
    latest = st.open.get(wid)
    if latest is not None:
        raise ResetError(
            f"cannot reset workflow {wid!r}: its run {latest.row.run_id} is still running; a "
            "reset starts a new run of the ID from a closed one: cancel or terminate it first"
        )
    history = st.reader.history(wid, source.run_id)
    cut = _cut(history, req.to, source)
    definition = resolve_workflow(source.workflow_type, source.code_ref)
    copied = _copy(history[:cut], req.new_run_id, definition, req.reason)
    try:
        run, new = rebuild(definition, copied, watch=st.watch)
    except DuraflowError as exc:
        raise ResetError(
            f"cannot reset workflow {wid!r}: today's code of {definition.name!r} does not "
            f"replay run {source.run_id}'s history up to event {history[cut - 1].event_id}: "
            f"{exc}"
        ) from None
    row = WorkflowRow(
        wid,
        req.new_run_id,
        definition.name,
        definition.code_ref,
        "running",
        source.parent_id,
        source.parent_run_id,
        source.parent_seq,
        st.now_us,
        None,
        None,
        None,
        None,
        search_attributes=source.search_attributes,  # as the source run left them
    )
    st.fx.append(fx.InsertWorkflow(row))
    open_run = OpenRun(row, 0)
    st.open[wid] = open_run
    open_run.run = run
    st.touch(wid)
    st.append(open_run, copied)
    st.arm_deadlines(open_run, copied[0], st.now_us)  # its run options, like the source's
    if new:
        st.run_commands(open_run, new)
    for event in history[cut:]:  # signals that came after the cut reach the new run too
        if isinstance(event, ev.SignalReceived) and wid in st.open:
            signal = ev.SignalReceived(**st.base(row), name=event.name, payload=event.payload)
            st.resolve(open_run, signal)
    return m.StartReply(req.new_run_id, started=True)


def _cut(history: list[Any], to: str | int, source: WorkflowRow) -> int:
    """How many events of ``history`` the new run copies."""
    where = f"workflow {source.workflow_id!r}"
    closing = next((i for i, e in enumerate(history) if isinstance(e, ev.CLOSING)), None)
    if not history or closing is None:
        raise ResetError(f"cannot reset {where}: run {source.run_id} has no closed history here")
    if to == "last_failure":
        if source.status != "failed":
            raise ResetError(
                f"cannot reset {where} to its last failure: run {source.run_id} never failed "
                f"(its status is {source.status!r}); pass to=<event ID> to reset it to an event"
            )
        failures = (ev.ActivityFailed, ev.ChildFailed)
        cut = next((i for i, e in enumerate(history) if isinstance(e, failures)), closing)
    elif isinstance(to, int) and not isinstance(to, bool):
        last = history[closing].event_id - 1
        if not 1 <= to <= last:
            raise ResetError(
                f"cannot reset {where} to event {to}: run {source.run_id} has events 1 to "
                f"{last} before it closed (event {last + 1} is its "
                f"{ev.event_type(history[closing])})"
            )
        cut = next(i for i, e in enumerate(history) if e.event_id == to) + 1
    else:
        raise ResetError(f"reset to= takes 'last_failure' or an event ID (int), got {to!r}")
    unresolved: dict[int, int] = {}
    blocked_on: dict[int, set[str]] = {}  # each block_until's IDs not closed yet
    for index, event in enumerate(history[:cut]):
        if isinstance(event, _STEPS):
            unresolved[event.seq] = index
            if isinstance(event, ev.BlockUntilStarted):
                blocked_on[event.seq] = set(event.workflow_ids)
        elif isinstance(event, _RESOLVES_STEP):
            unresolved.pop(event.seq, None)
        elif isinstance(event, ev.BlockedWorkflowClosed):
            left = blocked_on.get(event.seq, set())
            left.discard(event.target_workflow_id)
            if not left:
                unresolved.pop(event.seq, None)
    return min([cut, *unresolved.values()])


def _copy(events: list[Any], run_id: str, definition: WorkflowDefinition, reason: str) -> list[Any]:
    """The new run's first events: ``events`` of the source run under ``run_id``, its
    ``workflow.started`` saying where it came from."""
    first = events[0]
    started = ev.WorkflowStarted(
        workflow_id=first.workflow_id,
        run_id=run_id,
        workflow_type=definition.name,
        at_us=first.at_us,
        args=first.args,
        code_ref=definition.code_ref,
        python=PYTHON_VERSION,
        attempt=first.attempt,
        code_hash=definition.code_hash,
        reset_from_run_id=first.run_id,
        reset_from_event_id=events[-1].event_id,
        reset_reason=reason,
        seed=first.seed or first.run_id,
        **run_options.carried(first, first.search_attributes),
    )
    rest = [
        msgspec.structs.replace(e, run_id=run_id, event_id=0, lsn=0)
        for e in events[1:]
        if not isinstance(e, _NOT_COPIED)
    ]
    return [started, *rest]
