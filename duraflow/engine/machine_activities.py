"""The partition machine's activity rules: attempts, retries with backoff, timeouts, heartbeats.

Every decision is a function of the state and ``st.now``: when a retry may begin, when a
start-to-close, schedule-to-close or heartbeat timeout has elapsed. Attempts run elsewhere
(the shell's executor, after the commit: ``Dispatch``); their outcomes and heartbeats come
back as inputs.
"""

from __future__ import annotations

from typing import Any

from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine.attempts import Attempt, AttemptTable
from duraflow.engine.machine_state import OpenRun, State

RESTARTED = "the partition restarted while this attempt was running"


# -- commands ---------------------------------------------------------------------------------


def schedule(st: State, issued: tuple[OpenRun, ev.ActivityScheduled]) -> None:
    """The code called an activity: a durable row, then attempt 1."""
    open_run, cmd = issued
    run = open_run.run
    assert run is not None
    request = run.activity_requests.pop(cmd.seq)
    wid, rid = open_run.key
    attempt = st.attempts.schedule(
        (wid, rid, cmd.seq), request.definition, request.options, cmd.args, cmd.at_us
    )
    st.fx.append(fx.PutActivity(attempt.row(1, "running", None)))
    open_run.activity_seqs.add(cmd.seq)
    begin(st, attempt, 1)


def cancel(st: State, issued: tuple[OpenRun, ev.ActivityCancelled]) -> None:
    """The code cancelled an activity it awaits."""
    open_run, cmd = issued
    key = (*open_run.key, cmd.seq)
    st.fx.append(fx.DropActivity(key))
    open_run.activity_seqs.discard(cmd.seq)
    st.drop_attempt(key)


def begin(st: State, attempt: Attempt, number: int) -> None:
    """Attempt ``number`` runs: arm its deadlines; it is dispatched after the commit."""
    now = st.now
    waits = attempt.timed and st.waits_to_run(attempt.definition)
    attempt.begin(number, now, waits)
    if not waits:  # otherwise its first heartbeat arms them (heartbeat() below)
        _arm_running(st, attempt, now)
    timeout = attempt.options.schedule_to_close_timeout
    if number == 1 and timeout is not None:
        st.arm(attempt.scheduled_at_us / 1e6 + timeout, fx.ScheduleTimeout(attempt.key))
    st.fx.append(fx.Dispatch(attempt.key, number))


def _arm_running(st: State, attempt: Attempt, started: float) -> None:
    options = attempt.options
    if options.start_to_close_timeout is not None:
        st.arm(
            started + options.start_to_close_timeout, fx.AttemptTimeout(attempt.key, attempt.number)
        )
    if options.heartbeat_timeout is not None:
        st.arm(
            attempt.last_heartbeat + options.heartbeat_timeout,
            fx.HeartbeatCheck(attempt.key, attempt.number),
        )


# -- outcomes ---------------------------------------------------------------------------------


def done(st: State, report: fx.ActivityDone) -> None:
    """An executor reported an attempt's outcome."""
    attempt = st.attempts.get(report.key)
    if attempt is None or attempt.number != report.number or not attempt.running:
        return  # a late outcome of an attempt that timed out or was cancelled
    attempt.running = False  # over by itself: nothing to stop
    outcome = report.outcome
    if outcome.ok:
        resolved(st, attempt, True, outcome.result or b"", "", "")
    else:
        failed(st, attempt, outcome.error_type, outcome.error_message)


def failed(
    st: State, attempt: Attempt, error_type: str, message: str, delay: float | None = None
) -> None:
    """An attempt failed: retry it after its backoff, or fail the activity."""
    st.stop_attempt(attempt)
    wait = attempt.retry_wait(error_type, st.now, delay)
    if wait is None:
        resolved(st, attempt, False, b"", error_type, message)
        return
    open_run = st.open[attempt.key[0]]
    following = attempt.number + 1
    next_at_us = round((st.now + wait) * 1e6)
    st.fx.append(fx.UpdateActivity(attempt.key, attempt.number, "backoff", next_at_us))
    retry_event = ev.ActivityRetry(
        **st.base(open_run.row),
        seq=attempt.key[2],
        activity=attempt.definition.name,
        attempt=attempt.number,
        error_type=error_type,
        error_message=message,
        next_attempt_at_us=next_at_us,
        max_attempts=attempt.options.retry.maximum_attempts,
        delay_ms=round(wait * 1000),
    )
    st.append(open_run, [retry_event])
    if wait <= 0:
        retry_due(st, fx.RetryDue(attempt.key, following))
    else:
        st.arm(st.now + wait, fx.RetryDue(attempt.key, following))


def resolved(
    st: State, attempt: Attempt, ok: bool, result: bytes, error_type: str, message: str
) -> None:
    """The activity is over: record its result or failure and wake the run."""
    wid, _, seq = attempt.key
    open_run = st.open[wid]
    st.drop_attempt(attempt.key)
    open_run.activity_seqs.discard(seq)
    st.fx.append(fx.DropActivity(attempt.key))
    base = st.base(open_run.row)
    name = attempt.definition.name
    event: Any
    if ok:
        event = ev.ActivityCompleted(
            **base, seq=seq, activity=name, result=result, attempt=attempt.number
        )
    else:
        event = ev.ActivityFailed(
            **base,
            seq=seq,
            activity=name,
            error_type=error_type,
            error_message=message,
            attempt=attempt.number,
        )
    st.resolve(open_run, event)


def heartbeat(st: State, beat: fx.Heartbeat) -> None:
    attempt = st.attempts.get(beat.key)
    if attempt is None or attempt.number != beat.number or not attempt.running:
        return
    attempt.last_heartbeat = st.now
    if attempt.started_at is None:  # it has waited to run until now
        attempt.started_at = st.now
        _arm_running(st, attempt, st.now)
    if beat.details is not None:
        attempt.heartbeat_details = beat.details
        st.fx.append(fx.SetActivityHeartbeat(beat.key, beat.details))


# -- due times --------------------------------------------------------------------------------


def retry_due(st: State, due: fx.RetryDue) -> None:
    attempt = st.attempts.get(due.key)
    if attempt is None or attempt.running or attempt.number != due.number - 1:
        return
    st.fx.append(fx.UpdateActivity(due.key, due.number, "running", None))
    begin(st, attempt, due.number)


def schedule_timeout(st: State, due: fx.ScheduleTimeout) -> None:
    attempt = st.attempts.get(due.key)
    if attempt is None:
        return
    st.stop_attempt(attempt)
    timeout = attempt.options.schedule_to_close_timeout
    resolved(
        st,
        attempt,
        False,
        b"",
        "TimeoutError",
        f"schedule_to_close_timeout of {timeout}s elapsed",
    )


def _current(st: State, key: fx.Key, number: int) -> Attempt | None:
    """The attempt if attempt ``number`` of ``key`` runs and has started."""
    attempt = st.attempts.get(key)
    if attempt is None or attempt.number != number or not attempt.running:
        return None
    return attempt if attempt.started_at is not None else None


def attempt_timeout(st: State, due: fx.AttemptTimeout) -> None:
    attempt = _current(st, due.key, due.number)
    if attempt is None:
        return  # over, or still waiting to run (its start arms this again)
    timeout = attempt.options.start_to_close_timeout
    assert timeout is not None and attempt.started_at is not None
    if st.now < attempt.started_at + timeout:
        return  # armed at dispatch; the deadline armed at its start is later
    failed(st, attempt, "TimeoutError", f"start_to_close_timeout of {timeout}s elapsed")


def heartbeat_check(st: State, due: fx.HeartbeatCheck) -> None:
    attempt = _current(st, due.key, due.number)
    if attempt is None:
        return
    timeout = attempt.options.heartbeat_timeout
    assert timeout is not None
    silent_until = attempt.last_heartbeat + timeout
    if silent_until <= st.now:
        failed(st, attempt, "TimeoutError", f"no heartbeat within heartbeat_timeout of {timeout}s")
    else:
        st.arm(silent_until, due)


def live(st: State, due: Any) -> bool:
    """Whether an activity due time would still do something."""
    attempt = st.attempts.get(due.key)
    if attempt is None:
        return False
    if isinstance(due, fx.ScheduleTimeout):
        return True
    if isinstance(due, fx.RetryDue):
        return not attempt.running and attempt.number == due.number - 1
    return attempt.number == due.number and attempt.running


# -- after a restart or a rolled-back turn ----------------------------------------------------


def recover(st: State) -> None:
    """Re-arm backoffs and deadlines; attempts that were in flight run again (counted)."""
    for row in st.reader.activities():
        open_run = st.open.get(row.workflow_id)
        if open_run is None or open_run.row.run_id != row.run_id:
            continue
        attempt = st.attempts.restore(row)
        open_run.activity_seqs.add(row.seq)
        _arm_schedule_timeout(st, attempt)
        if row.state == "backoff":
            st.arm((row.next_at_us or 0) / 1e6, fx.RetryDue(attempt.key, row.attempt + 1))
        else:
            attempt.running = False  # it ran in the process before: nothing here to stop
            failed(st, attempt, "PartitionRestarted", RESTARTED, delay=0.0)


def readopt(st: State, before: AttemptTable) -> None:
    """After a rolled-back turn: the activity table again from the file, keeping the attempts
    ``before`` holds that still run (their outcomes will come), every deadline and backoff
    armed again. Attempts only the rolled-back turn began were never dispatched."""
    for row in st.reader.activities():
        open_run = st.open.get(row.workflow_id)
        if open_run is None or open_run.row.run_id != row.run_id:
            continue
        key = (row.workflow_id, row.run_id, row.seq)
        attempt = st.attempts.readopt(row, before.get(key), st.now)
        open_run.activity_seqs.add(row.seq)
        _arm_schedule_timeout(st, attempt)
        if not attempt.running:
            st.arm((row.next_at_us or 0) / 1e6, fx.RetryDue(key, row.attempt + 1))
        elif attempt.started_at is not None:
            _arm_running(st, attempt, attempt.started_at)


def _arm_schedule_timeout(st: State, attempt: Attempt) -> None:
    timeout = attempt.options.schedule_to_close_timeout
    if timeout is not None:
        st.arm(attempt.scheduled_at_us / 1e6 + timeout, fx.ScheduleTimeout(attempt.key))
