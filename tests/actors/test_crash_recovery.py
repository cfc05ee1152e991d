"""Crash safety, tested by really killing a process with SIGKILL and reopening its data directory.

A child process (``tests/actors/crash_flows.py``) opens a data directory under
``synchronous=FULL``, starts workflows and is SIGKILLed while activities are in flight, timers
are pending and signals are buffered. The partition files are then read directly (sqlite3,
read-only) to see what was durable at the moment of the kill, and another process reopens the
directory and runs every workflow to completion. What must hold afterwards:

* every workflow completes with the result its inputs determine;
* every activity seq of every run has exactly one ``workflow.activity_completed``;
* an activity whose completion was recorded before a kill never runs again afterwards;
* an attempt in flight at a kill is dispatched again with a higher attempt number;
* an activity that was never in flight at a kill ran exactly once;
* timers that became overdue while no process was running fire at once on reopening;
* signals accepted before the kill, and signals sent after the restart, both reach the code.

The data directory has one writer: a second process cannot open it while the first lives, and
can as soon as the first is killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from duraflow.storage.codec import decode
from tests.actors import crash_flows as flows

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(flows.__file__).resolve()
TOTAL_STEPS = flows.STEPS

READY_TIMEOUT_S = 20.0
PROGRESS_TIMEOUT_S = 20.0
RESUME_TIMEOUT_S = 50.0
POLL_S = 0.01
FIRES_AT_ONCE_S = 10.0  # process start + first turn, with room for a loaded 2-core machine


# -- child processes ----------------------------------------------------------------------------


class Child:
    """One ``crash_flows.py`` process that this test started (and is the only one it kills)."""

    def __init__(self, data_dir: Path, mode: str, out: Path) -> None:
        self.data_dir = data_dir
        self.out = out
        pythonpath = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath), PYTHONUNBUFFERED="1")
        with out.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), str(data_dir), mode],
                cwd=REPO,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self) -> None:
        ready = self.data_dir / flows.READY_FILE
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (ready.exists() and json.loads(ready.read_text())["pid"] == self.pid):
            assert self.alive(), f"child exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"child not ready in time:\n{self.output()}"
            time.sleep(POLL_S)

    def kill(self) -> None:
        """SIGKILL this process (by its own PID) and reap it."""
        assert self.alive(), f"child exited before the kill:\n{self.output()}"
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def finish(self, timeout: float) -> None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child did not finish within {timeout}s:\n{self.output()}")
        assert code == 0, f"child exited with {code}:\n{self.output()}"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start ``crash_flows.py`` children; any still running at teardown are killed."""
    children: list[Child] = []

    def start(data_dir: Path, mode: str) -> Child:
        child = Child(data_dir, mode, tmp_path / f"child-{len(children)}.out")
        children.append(child)
        return child

    yield start
    for child in children:
        if child.alive():
            os.kill(child.pid, signal.SIGKILL)
            child.proc.wait(timeout=10)


# -- reading partition files directly ------------------------------------------------------------


def partition_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "partitions").glob("p*.sqlite"))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def progress(data_dir: Path) -> tuple[int, int, int]:
    """(activities completed, activities in flight, timers pending) over all partitions."""
    completed = running = timers = 0
    for path in partition_files(data_dir):
        try:
            with read_only(path) as conn:
                completed += conn.execute(
                    "SELECT count(*) FROM workflow_history "
                    "WHERE event_type = 'workflow.activity_completed'"
                ).fetchone()[0]
                running += conn.execute(
                    "SELECT count(*) FROM workflow_activities WHERE state = 'running'"
                ).fetchone()[0]
                timers += conn.execute("SELECT count(*) FROM workflow_timers").fetchone()[0]
        except sqlite3.OperationalError:
            pass  # the schema is not there yet
    return completed, running, timers


def wait_for_progress(child: Child, *, completed: int, running: int, timers: int) -> None:
    """Wait until at least this many activities completed, are in flight, and timers wait."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    seen = (0, 0, 0)
    while True:
        seen = progress(child.data_dir)
        if seen[0] >= completed and seen[1] >= running and seen[2] >= timers:
            return
        assert child.alive(), f"child exited early:\n{child.output()}"
        assert time.monotonic() < deadline, f"no mid-flight moment seen; last progress {seen}"
        time.sleep(POLL_S)


@dataclasses.dataclass
class Snapshot:
    """What was durable when a process was killed."""

    pid: int
    max_lsn: dict[int, int]
    completed: set[tuple[str, int]]
    in_flight: dict[tuple[str, int], int]  # (workflow ID, seq) -> attempt number
    timers: dict[tuple[str, int], int]  # (workflow ID, seq) -> fire_at_us
    open_runs: set[str]


def snapshot(data_dir: Path, pid: int) -> Snapshot:
    snap = Snapshot(pid, {}, set(), {}, {}, set())
    for index, path in enumerate(partition_files(data_dir)):
        with read_only(path) as conn:
            snap.max_lsn[index] = conn.execute(
                "SELECT coalesce(max(lsn), 0) FROM workflow_history"
            ).fetchone()[0]
            for (body,) in conn.execute(
                "SELECT body FROM workflow_history WHERE event_type = 'workflow.activity_completed'"
            ):
                event = ev.decode_event(body)
                assert isinstance(event, ev.ActivityCompleted)
                snap.completed.add((event.workflow_id, event.seq))
            for wid, seq, attempt, state in conn.execute(
                "SELECT workflow_id, seq, attempt, state FROM workflow_activities"
            ):
                assert state == "running", "no crash_step attempt ever fails on its own"
                snap.in_flight[(wid, seq)] = attempt
            for wid, seq, fire_at_us in conn.execute(
                "SELECT workflow_id, seq, fire_at_us FROM workflow_timers"
            ):
                snap.timers[(wid, seq)] = fire_at_us
            snap.open_runs |= {
                wid
                for (wid,) in conn.execute(
                    "SELECT workflow_id FROM workflows WHERE status = 'running'"
                )
            }
    return snap


def histories(data_dir: Path) -> dict[str, list[ev.Event]]:
    """Every run's history, by workflow ID (each ID has one run here)."""
    by_wid: dict[str, list[ev.Event]] = defaultdict(list)
    for path in partition_files(data_dir):
        with read_only(path) as conn:
            for (body,) in conn.execute("SELECT body FROM workflow_history ORDER BY lsn"):
                event = ev.decode_event(body)
                by_wid[event.workflow_id].append(event)
    return dict(by_wid)


def workflow_rows(data_dir: Path) -> dict[str, tuple[str, Any]]:
    rows: dict[str, tuple[str, Any]] = {}
    for path in partition_files(data_dir):
        with read_only(path) as conn:
            for wid, status, result in conn.execute(
                "SELECT workflow_id, status, result FROM workflows"
            ):
                assert wid not in rows, f"{wid} has more than one run"
                rows[wid] = (status, decode(result) if result is not None else None)
    return rows


@dataclasses.dataclass(frozen=True)
class Execution:
    workflow_id: str
    seq: int
    attempt: int
    pid: int


def executions(data_dir: Path) -> list[Execution]:
    path = data_dir / flows.EXECUTIONS_FILE
    found = []
    for line in path.read_text().splitlines():
        wid, seq, attempt, pid = line.split()
        found.append(Execution(wid, int(seq), int(attempt), int(pid)))
    return found


def wait_until_overdue(snap: Snapshot, fraction: float, limit_s: float) -> None:
    """Sleep until ``fraction`` of the timers pending at the kill are due (at most ``limit_s``)."""
    due = sorted(snap.timers.values())
    if not due:
        return
    target = due[min(len(due) - 1, int(len(due) * fraction))] / 1e6 + 0.05
    time.sleep(max(0.0, min(limit_s, target - time.time())))


# -- the checks after recovery -------------------------------------------------------------------


def of_seq(events: list[ev.Event], kind: type[Any], seq: int) -> list[Any]:
    """The events of type ``kind`` about command ``seq``."""
    return [e for e in events if isinstance(e, kind) and e.seq == seq]


def check_recovered(
    data_dir: Path, count: int, kills: list[Snapshot], restarts_at: list[float], final: Child
) -> None:
    """Everything the module docstring promises, for ``kills`` (in order) and the final process.

    ``restarts_at[k]`` is when the process after kill ``k`` was started (seconds since epoch).
    """
    wids = [flows.workflow_id(n) for n in range(count)]

    # Every workflow completed with the right result, as seen by the client and in the file.
    reply = json.loads((data_dir / flows.RESULTS_FILE).read_text())
    assert reply["pid"] == final.pid
    expected = {wid: flows.expected_result(flows.number_of(wid)) for wid in wids}
    assert expected == reply["results"]
    assert {wid: ("completed", expected[wid]) for wid in wids} == workflow_rows(data_dir)

    history = histories(data_dir)
    assert sorted(history) == wids
    runs = executions(data_dir)
    later_pids = [{s.pid for s in kills[k + 1 :]} | {final.pid} for k in range(len(kills))]
    in_flight_ever = {key for snap in kills for key in snap.in_flight}
    # Nothing ran that was not scheduled (attempts are dispatched only after their commit).
    scheduled_keys = {(wid, seq) for wid in wids for seq in range(1, TOTAL_STEPS + 1)}
    assert {(r.workflow_id, r.seq) for r in runs} <= scheduled_keys

    for wid in wids:
        events = history[wid]
        # History is intact: event IDs 1..n, LSNs increasing, one close, no failure.
        assert [e.event_id for e in events] == list(range(1, len(events) + 1)), wid
        assert [e.lsn for e in events] == sorted(e.lsn for e in events), wid
        kinds = Counter(ev.event_type(e) for e in events)
        assert kinds["workflow.completed"] == 1, (wid, kinds)
        assert kinds["workflow.failed"] == 0, (wid, kinds)
        assert isinstance(events[-1], ev.WorkflowCompleted), (wid, events[-1])

        scheduled = Counter(e.seq for e in events if isinstance(e, ev.ActivityScheduled))
        completed = {e.seq: e for e in events if isinstance(e, ev.ActivityCompleted)}
        completions = Counter(e.seq for e in events if isinstance(e, ev.ActivityCompleted))
        assert scheduled == Counter(range(1, TOTAL_STEPS + 1)), (wid, scheduled)
        assert completions == Counter(range(1, TOTAL_STEPS + 1)), (wid, completions)

        for seq in range(1, TOTAL_STEPS + 1):
            key = (wid, seq)
            lines = [r for r in runs if (r.workflow_id, r.seq) == key]
            assert lines, f"{key} never executed"
            # The recorded completion is of the last attempt that was dispatched.
            assert completed[seq].attempt == max(r.attempt for r in lines), (key, lines)
            if key not in in_flight_ever:
                assert len(lines) == 1, f"{key} was never in flight at a kill but ran {lines}"

    for k, snap in enumerate(kills):
        # Completed before the kill: never executed by any later process.
        for key in snap.completed:
            again = [r for r in runs if (r.workflow_id, r.seq) == key and r.pid in later_pids[k]]
            assert not again, f"{key} completed before kill {k + 1} but ran again: {again}"
        # In flight at the kill: dispatched again, each time with a higher attempt number,
        # after a step.retry event that says why.
        for key, attempt in snap.in_flight.items():
            wid, seq = key
            again = [r for r in runs if (r.workflow_id, r.seq) == key and r.pid in later_pids[k]]
            assert all(r.attempt > attempt for r in again), (key, attempt, again)
            [done] = of_seq(history[wid], ev.ActivityCompleted, seq)
            assert done.attempt > attempt, (key, attempt, done)
            retries = of_seq(history[wid], ev.ActivityRetry, seq)
            retries = [e for e in retries if e.attempt == attempt]
            assert [r.error_type for r in retries] == ["PartitionRestarted"], (key, retries)
            assert retries[0].lsn > snap.max_lsn[retries[0].partition]
        # Timers pending at the kill fired after it (signal timeouts may have been cancelled by
        # the signal instead); those overdue at the restart fired at once.
        for (wid, seq), fire_at_us in snap.timers.items():
            fired = of_seq(history[wid], ev.TimerFired, seq)
            cancelled = of_seq(history[wid], ev.TimerCancelled, seq)
            assert len(fired) + len(cancelled) == 1, (wid, seq, fired, cancelled)
            if fired:
                assert fired[0].lsn > snap.max_lsn[fired[0].partition], (wid, seq)
                assert fired[0].at_us >= fire_at_us, (wid, seq)
            if fire_at_us / 1e6 <= restarts_at[k]:
                assert fired, f"overdue timer {(wid, seq)} did not fire"
                late_s = fired[0].at_us / 1e6 - restarts_at[k]
                assert late_s < FIRES_AT_ONCE_S, f"overdue {(wid, seq)} fired {late_s:.2f}s late"

    # Signals: those accepted before the first kill and those sent after a restart both arrived.
    first = kills[0]
    for wid in wids:
        n = flows.number_of(wid)
        signals = [e for e in history[wid] if isinstance(e, ev.SignalReceived)]
        assert all(decode(s.payload) == flows.bonus(n) for s in signals), (wid, signals)
        if flows.signalled_early(n):
            assert len(signals) == 1, (wid, signals)
            assert signals[0].lsn <= first.max_lsn[signals[0].partition], (wid, signals)
        elif flows.signalled_late(n):
            assert signals, wid
            assert all(s.lsn > first.max_lsn[s.partition] for s in signals), (wid, signals)
        else:
            assert not signals, (wid, signals)


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigkill_mid_flight_then_reopen_loses_nothing_and_repeats_nothing(
    tmp_path: Path, spawn: Any
) -> None:
    count = 50
    data_dir = tmp_path / "data"
    first = spawn(data_dir, str(count))
    first.wait_ready()
    # Single writer: this process cannot open the directory while the child lives.
    with pytest.raises(df.PartitionUnavailable):
        df.Engine(data_dir, runtime="local", partitions=flows.PARTITIONS)

    total = count * TOTAL_STEPS
    wait_for_progress(first, completed=total // 4, running=5, timers=5)
    first.kill()
    snap = snapshot(data_dir, first.pid)

    # The kill really happened mid-flight.
    assert 0 < len(snap.completed) < total
    assert snap.in_flight, "no activity was in flight at the kill"
    assert snap.timers, "no timer was pending at the kill"
    # An open run signalled early has its signal buffered, not yet taken by its code.
    assert any(flows.signalled_early(flows.number_of(w)) for w in snap.open_runs)

    wait_until_overdue(snap, fraction=0.3, limit_s=2.5)
    restarted_at = time.time()
    overdue = [k for k, at in snap.timers.items() if at / 1e6 <= restarted_at]
    assert overdue, "no timer became overdue while no process ran"
    second = spawn(data_dir, "resume")
    second.finish(RESUME_TIMEOUT_S)

    check_recovered(data_dir, count, [snap], [restarted_at], second)


@pytest.mark.timeout(90)
def test_sigkill_during_recovery_then_reopen_again(tmp_path: Path, spawn: Any) -> None:
    count = 20
    data_dir = tmp_path / "data"
    first = spawn(data_dir, str(count))
    first.wait_ready()
    total = count * TOTAL_STEPS
    wait_for_progress(first, completed=total // 4, running=3, timers=0)
    first.kill()
    snap1 = snapshot(data_dir, first.pid)
    assert snap1.in_flight and 0 < len(snap1.completed) < total

    # Reopen and kill again as soon as recovery has re-dispatched an in-flight attempt.
    restarted_1 = time.time()
    second = spawn(data_dir, "resume")
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while not any(r.pid == second.pid for r in executions(data_dir)):
        assert second.alive(), f"resume exited early:\n{second.output()}"
        assert time.monotonic() < deadline, "recovery never re-dispatched an attempt"
        time.sleep(POLL_S)
    second.kill()
    assert not (data_dir / flows.RESULTS_FILE).exists(), "the kill came after recovery finished"
    snap2 = snapshot(data_dir, second.pid)
    assert snap2.open_runs, "every run finished before the second kill"
    assert snap2.max_lsn != snap1.max_lsn, "the killed recovery committed nothing"

    wait_until_overdue(snap2, fraction=0.3, limit_s=1.0)
    restarted_2 = time.time()
    third = spawn(data_dir, "resume")
    third.finish(RESUME_TIMEOUT_S)

    check_recovered(data_dir, count, [snap1, snap2], [restarted_1, restarted_2], third)


@pytest.mark.timeout(60)
def test_a_live_process_holds_the_data_dir_and_sigkill_frees_it(tmp_path: Path, spawn: Any) -> None:
    data_dir = tmp_path / "data"
    child = spawn(data_dir, "0")
    child.wait_ready()
    for _ in range(2):  # a refused open leaves nothing locked behind in this process
        with pytest.raises(df.PartitionUnavailable):
            df.Engine(data_dir, runtime="local", partitions=flows.PARTITIONS)
    child.kill()
    with df.Engine(data_dir, runtime="local", partitions=flows.PARTITIONS) as engine:
        assert engine.client().list() == []
        assert [s["open"] for s in engine.stats()] == [0] * flows.PARTITIONS
