"""The partition machine's state and the steps every rule shares: record, wake, close a run.

A :class:`State` holds what a partition knows between turns (its open runs, their resident
code, the scheduled activities, the LSN) and, while an input is applied, the time, the reader
and the list of effects being made. Rules (:mod:`duraflow.engine.machine_requests`,
:mod:`duraflow.engine.machine_activities`) are functions of a State; the tables that pick
them are filled in by :mod:`duraflow.engine.machine`, so no rule module imports another.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.engine import effects as fx
from duraflow.engine.attempts import Attempt, AttemptTable
from duraflow.engine.definitions import ActivityDefinition, WorkflowDefinition, resolve_workflow
from duraflow.engine.guard import Watch
from duraflow.engine.ids import check_workflow_id
from duraflow.engine.replay import rebuild
from duraflow.engine.run import WorkflowRun
from duraflow.errors import DuraflowError, WorkflowClosed, WorkflowNotFound
from duraflow.storage.rows import ActivityRow, TimerRow, WorkflowRow

log = logging.getLogger("duraflow.partition")

RUN_TIMEOUT_SEQ = -1
"""The timer seq of a run's ``run_timeout`` (timer rows with seqs below 0 are deadlines the
partition keeps, never the code's: ``engine/machine_lifecycle.py``)."""
EXECUTION_TIMEOUT_SEQ = -2
"""The timer seq of the chain's ``execution_timeout``."""
FIRST_ACTIVATION_SEQ = -3
"""The timer seq of a next run's first activation (continue-as-new, a workflow retry): a
turn of its own, so a chain of runs never recurses within one turn."""
DEFERRED = object()
"""A rule's reply when the request is answered later (``AwaitClose``)."""


class Reader(Protocol):
    """What the machine reads of its partition's file (``PartitionStore`` implements it).

    Reads see every write effect already applied, those of earlier inputs of the same turn
    included; within one input, rules read before they write.
    """

    def get_run(self, workflow_id: str, run_id: str) -> WorkflowRow | None: ...
    def latest_run(self, workflow_id: str) -> WorkflowRow | None: ...
    def open_runs(self) -> list[WorkflowRow]: ...
    def list_workflows(
        self, status: str | None, workflow_type: str | None, limit: int
    ) -> list[tuple[WorkflowRow, int]]: ...
    def history(self, workflow_id: str, run_id: str) -> list[Any]: ...
    def last_event_id(self, workflow_id: str, run_id: str) -> int: ...
    def max_lsn(self) -> int: ...
    def get_meta(self, key: str) -> str | None: ...
    def signal_seen(self, request_id: str) -> bool: ...
    def timers(self) -> list[TimerRow]: ...
    def activities(self) -> list[ActivityRow]: ...
    def outbox(self) -> list[tuple[int, str, bytes]]: ...
    def prunable_runs(
        self, cutoff_us: int, archived_lsn: int, limit: int
    ) -> list[tuple[str, str]]: ...
    def failed(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the file or its disk failing (the turn fails, not the run)."""


class RunBroke(Exception):
    """Recording one run's work raised an error that is not the run's code's (that fails the
    run): it unwinds the turn so the run alone can be marked stuck, or the request that woke
    it refused. Not a DuraflowError, so no request handler replies with it."""

    def __init__(self, key: tuple[str, str], cause: Exception, *, rebuilding: bool) -> None:
        super().__init__(f"workflow {key[0]!r}: {type(cause).__name__}")
        self.key = key
        self.cause = cause
        self.rebuilding = rebuilding


class OpenRun:
    """An open run of this partition: its row, and its resident code if in memory."""

    __slots__ = ("activity_seqs", "last_event_id", "row", "run", "stuck", "timer_seqs")

    def __init__(self, row: WorkflowRow, last_event_id: int | None) -> None:
        self.row = row
        self.run: WorkflowRun | None = None
        self.last_event_id = last_event_id
        self.stuck: str | None = None
        self.timer_seqs: set[int] = set()
        self.activity_seqs: set[int] = set()

    @property
    def key(self) -> tuple[str, str]:
        return (self.row.workflow_id, self.row.run_id)


Rule = Callable[["State", Any], Any]
OnClose = Callable[["State", OpenRun, str], None]


class State:
    """A partition's runs and the shared steps of its rules (see the module docstring).

    Args:
        index: the partition's number (stamped on events and descriptions).
        retention_s: how long archived closed runs stay in the file.
        watch: times workflow code (``duraflow.engine.guard``).
        waits_to_run: whether an attempt of this activity may wait before it runs (a Ray
            task does; its timeouts then count from its first heartbeat).
    """

    commands: dict[type, Rule]
    """What each command a workflow issued does (filled in by the machine)."""
    rules: dict[type, Rule]
    """The rule for each input type (filled in by the machine): a rule that does another's
    work too (signal-with-start) calls it through this table."""
    on_close: tuple[OnClose, ...] = ()
    """Called with ``(state, open_run, status)`` as each run closes (filled in by the machine):
    what else a closing tells other workflows and waiting callers."""

    def __init__(
        self,
        index: int,
        *,
        retention_s: float = 0.0,
        watch: Watch | None = None,
        waits_to_run: Callable[[ActivityDefinition], bool] = lambda definition: False,
    ) -> None:
        self.index = index
        self.retention_s = retention_s
        self.watch = watch
        self.waits_to_run = waits_to_run
        self.open: dict[str, OpenRun] = {}
        self.attempts = AttemptTable()
        self.lsn = 0
        self.archived_lsn = 0
        self.pruned = False  # some closed run left this file for the archive
        self.recovering = False
        self.resident: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Workflow IDs with code in memory, least recently used first (with when)."""
        self.closed_this_turn: dict[str, OpenRun] = {}
        self.paused: dict[str, Any] = {}
        """Paused runs by workflow ID (``machine_operator.PauseMark``s)."""
        # Set for each input by begin():
        self.now_us = 0
        self.now = 0.0
        self.reader: Reader = None  # type: ignore[assignment]
        self.fx: list[Any] = []
        self.rebuilds: list[tuple[int, int]] = []
        """Spans of ``fx`` made by rebuilding a run (what its replayed code issued anew)."""

    def begin(self, now_us: int, reader: Reader) -> list[Any]:
        """Start applying one input at ``now_us``: the list its effects go to."""
        self.now_us = now_us
        self.now = now_us / 1e6
        self.reader = reader
        self.fx = []
        self.rebuilds = []
        return self.fx

    def arm(self, at: float, due: fx.Due) -> None:
        self.fx.append(fx.Arm(at, due))

    # -- finding runs -----------------------------------------------------------------------

    def open_run(self, workflow_id: str, run_id: str | None, verb: str) -> OpenRun:
        """The open run a request names.

        Raises:
            WorkflowNotFound: no such workflow (or run).
            WorkflowClosed: it is closed.
        """
        check_workflow_id(workflow_id)
        open_run = self.open.get(workflow_id)
        if open_run is not None and run_id in (None, open_run.row.run_id):
            return open_run
        reader = self.reader
        row = reader.get_run(workflow_id, run_id) if run_id else reader.latest_run(workflow_id)
        if row is None:
            raise WorkflowNotFound(
                f"cannot {verb}: no workflow {workflow_id!r}"
                + (f" with run {run_id}" if run_id else "")
            )
        raise WorkflowClosed(
            f"cannot {verb} workflow {workflow_id!r}: run {row.run_id} already {row.status}"
        )

    def stored_row(self, workflow_id: str, run_id: str | None) -> WorkflowRow:
        """A run's row as the file holds it (the latest run without ``run_id``).

        Raises:
            WorkflowNotFound: none (``maybe_archived`` when runs have left for the archive).
        """
        check_workflow_id(workflow_id)
        reader = self.reader
        row = reader.get_run(workflow_id, run_id) if run_id else reader.latest_run(workflow_id)
        if row is None:
            error = WorkflowNotFound(
                f"no workflow {workflow_id!r}" + (f" with run {run_id}" if run_id else "")
            )
            error.maybe_archived = self.pruned
            raise error
        return row

    def history(self, key: tuple[str, str]) -> list[Any]:
        """A run's history as of now: the file's rows and what this input appended."""
        events = self.reader.history(*key)
        for effect in self.fx:
            if type(effect) is fx.AppendEvents:
                events.extend(e for e in effect.events if (e.workflow_id, e.run_id) == key)
        return events

    # -- residency --------------------------------------------------------------------------

    def resident_run(self, open_run: OpenRun) -> WorkflowRun | None:
        """The run in memory, rebuilt from history if needed; None if it cannot be rebuilt."""
        if open_run.run is not None:
            return open_run.run
        if open_run.stuck is not None:
            return None
        row = open_run.row
        try:
            definition = resolve_workflow(row.workflow_type, row.code_ref)
            history = self.history(open_run.key)
            run, new = rebuild(definition, history, watch=self.watch)
        except Exception as exc:
            if self.reader.failed(exc):
                raise
            self.mark_stuck(open_run, exc)  # missing code, a diverged replay or a bug
            return None
        open_run.last_event_id = history[-1].event_id if history else 0
        open_run.run = run
        self.touch(row.workflow_id)
        if new:
            first = len(self.fx)
            try:
                self.run_commands(open_run, new)
                self.rebuilds.append((first, len(self.fx)))
            except (RunBroke, DuraflowError):
                raise
            except Exception as exc:
                raise RunBroke(open_run.key, exc, rebuilding=True) from exc
        return open_run.run

    def touch(self, workflow_id: str) -> None:
        """Mark a run most recently used (for the resident cap and idle hibernation)."""
        resident = self.resident
        resident[workflow_id] = self.now
        resident.move_to_end(workflow_id)

    def hibernate(self, workflow_id: str) -> None:
        """Drop a run's code from memory; it is rebuilt from history when next needed."""
        self.resident.pop(workflow_id, None)
        open_run = self.open.get(workflow_id)
        if open_run is not None and open_run.run is not None:
            open_run.run.discard()
            open_run.run = None

    def mark_stuck(self, open_run: OpenRun, exc: BaseException) -> None:
        open_run.stuck = f"{type(exc).__name__}: {exc}"
        self.fx.append(fx.SetStuck(open_run.row.workflow_id, open_run.row.run_id, open_run.stuck))
        if open_run.run is not None:
            open_run.run.discard()
            open_run.run = None
        log.error(
            "partition %d: workflow %r is stuck: %s", self.index, open_run.row.workflow_id, exc
        )

    # -- starting a run ------------------------------------------------------------------------

    def begin_run(
        self,
        row: WorkflowRow,
        started: ev.WorkflowStarted,
        definition: WorkflowDefinition,
        *,
        later: bool = False,
    ) -> OpenRun:
        """Insert a new open run, record its ``workflow.started``, arm its deadlines and run
        its code's first activation (with ``later``, in a turn of its own: a durable due
        time, ``FIRST_ACTIVATION_SEQ``)."""
        self.fx.append(fx.InsertWorkflow(row))
        open_run = OpenRun(row, 0)
        self.open[row.workflow_id] = open_run
        if not later:
            open_run.run = WorkflowRun(definition, started, watch=self.watch)
            self.touch(row.workflow_id)
        self.append(open_run, [started])
        self.arm_deadlines(open_run, started, started.at_us + started.start_delay_us)
        if later:
            self.put_deadline(open_run, FIRST_ACTIVATION_SEQ, started.at_us)
        else:
            self.activate(open_run, started)
        return open_run

    def arm_deadlines(self, open_run: OpenRun, started: ev.WorkflowStarted, code_us: int) -> None:
        """The run's ``run_timeout`` (counted from ``code_us``, when its code starts) and its
        chain's ``execution_timeout``, as ``started`` records them."""
        if started.run_timeout_us is not None:
            self.put_deadline(open_run, RUN_TIMEOUT_SEQ, code_us + started.run_timeout_us)
        if started.execution_deadline_us is not None:
            self.put_deadline(open_run, EXECUTION_TIMEOUT_SEQ, started.execution_deadline_us)

    def put_deadline(self, open_run: OpenRun, seq: int, at_us: int) -> None:
        """A durable due time of the run kept by the partition (a timer row, ``seq`` < 0)."""
        wid, rid = open_run.key
        self.fx.append(fx.PutTimer(TimerRow(wid, rid, seq, at_us)))
        open_run.timer_seqs.add(seq)
        self.arm(at_us / 1e6, fx.TimerDue((wid, rid, seq)))

    # -- recording and waking ---------------------------------------------------------------

    def append(self, open_run: OpenRun, events: list[Any]) -> None:
        """Stamp events with event IDs and LSNs and record them."""
        event_id = self.last_event_id(open_run)
        index = self.index
        for event in events:
            event_id += 1
            self.lsn += 1
            event.event_id = event_id
            event.lsn = self.lsn
            event.partition = index
        open_run.last_event_id = event_id
        self.fx.append(fx.AppendEvents(events))

    def last_event_id(self, open_run: OpenRun) -> int:
        if open_run.last_event_id is None:
            open_run.last_event_id = self.reader.last_event_id(*open_run.key)
        return open_run.last_event_id

    def base(self, row: WorkflowRow) -> dict[str, Any]:
        """The fields every event of ``row``'s run carries, at the current time."""
        return {
            "workflow_id": row.workflow_id,
            "run_id": row.run_id,
            "workflow_type": row.workflow_type,
            "at_us": self.now_us,
        }

    def resolve(self, open_run: OpenRun, event: Any) -> None:
        """Record a resolution event for a run and apply it to the code (rebuilding it first).

        Raises:
            RunBroke: recording it or what the code did raised (not a duraflow error).
        """
        try:
            run = self.resident_run(open_run)
            self.append(open_run, [event])
            if run is not None and open_run.run is run:
                self.activate(open_run, event)
        except (RunBroke, DuraflowError):
            raise
        except Exception as exc:
            raise RunBroke(open_run.key, exc, rebuilding=False) from exc

    def activate(self, open_run: OpenRun, event: Any) -> None:
        run = open_run.run
        assert run is not None
        self.touch(open_run.row.workflow_id)
        try:
            commands = run.activate(event)
        except DuraflowError as exc:
            self.mark_stuck(open_run, exc)
            return
        if commands:
            self.run_commands(open_run, commands)

    def run_commands(self, open_run: OpenRun, commands: list[Any]) -> None:
        """Record what the code issued, and do what each command asks (the command table)."""
        self.append(open_run, commands)
        table = self.commands
        for command in commands:
            rule = table.get(type(command))
            if rule is not None:
                rule(self, (open_run, command))

    # -- closing ----------------------------------------------------------------------------

    def stop_attempt(self, attempt: Attempt) -> None:
        """The attempt is over or unwanted: tell its code, if it still runs."""
        if attempt.running:
            attempt.running = False
            self.fx.append(fx.StopAttempt(attempt.key, attempt.number))

    def drop_attempt(self, key: fx.Key) -> None:
        attempt = self.attempts.drop(key)
        if attempt is not None:
            self.stop_attempt(attempt)

    def terminate(self, open_run: OpenRun, reason: str) -> None:
        duration_ms = max(0, (self.now_us - open_run.row.started_at_us) // 1000)
        event = ev.WorkflowTerminated(
            **self.base(open_run.row), reason=reason, duration_ms=duration_ms
        )
        self.append(open_run, [event])
        self.close(open_run, event)

    def close(self, open_run: OpenRun, event: Any) -> None:
        """Close a run with its closing event: its row, its parent, its children, its waiters."""
        status, error_type, error_message, result = ev.run_closing(event)
        row = open_run.row
        wid, rid = open_run.key
        next_run_id = ev.next_run(event)
        self.fx.append(
            fx.CloseWorkflow(
                wid, rid, status, event.at_us, result, error_type, error_message, next_run_id
            )
        )
        for seq in open_run.activity_seqs:
            self.drop_attempt((wid, rid, seq))
        if row.parent_id is not None and row.parent_run_id is not None and next_run_id is None:
            # (a run followed by another keeps its parent waiting: the chain's last one tells)
            self.outbox(
                row.parent_id,
                m.ChildClosed(
                    workflow_id=row.parent_id,
                    parent_run_id=row.parent_run_id,
                    seq=row.parent_seq or 0,
                    child_workflow_id=wid,
                    status=status,
                    result=result,
                    error_type=error_type or "",
                    error_message=error_message or "",
                ),
            )
        for child_id, policy in self.open_children(open_run):
            reason = f"parent {wid!r} {status}"
            if policy == "terminate":
                self.outbox(
                    child_id, m.Terminate(workflow_id=child_id, reason=reason, parent_run_id=rid)
                )
            elif policy == "request_cancel":
                self.outbox(child_id, m.Cancel(workflow_id=child_id, reason=reason))
        outcome = m.Outcome(wid, rid, status, result, error_type, error_message, next_run_id)
        self.fx.append(fx.Closed(outcome))
        open_run.row = msgspec.structs.replace(row, status=status, next_run_id=next_run_id)
        for hook in self.on_close:
            hook(self, open_run, status)
        del self.open[wid]
        self.closed_this_turn[wid] = open_run
        self.resident.pop(wid, None)
        if open_run.run is not None:
            open_run.run.discard()

    def open_children(self, open_run: OpenRun) -> list[tuple[str, str]]:
        """(child ID, parent-close policy) of children started and not yet closed."""
        if open_run.run is not None:
            pending: set[int] | None = set(open_run.run.open_children())
            if not pending:
                return []
        else:
            pending = None
        started: dict[int, ev.ChildStarted] = {}
        for event in self.history(open_run.key):
            if isinstance(event, ev.ChildStarted):
                started[event.seq] = event
            elif isinstance(event, (ev.ChildCompleted, ev.ChildFailed)):
                started.pop(event.seq, None)
        return [
            (e.child_workflow_id, e.parent_close_policy)
            for seq, e in started.items()
            if pending is None or seq in pending
        ]

    def outbox(self, target_id: str, message: m.OutboxMessage) -> None:
        self.fx.append(fx.PutOutbox(target_id, message))
