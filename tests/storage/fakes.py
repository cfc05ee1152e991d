"""Event factories for archive tests: the events a partition would record, without an engine.

``FakePartitions`` stamps events as a partition does (per-run event IDs from 1, per-partition
LSNs from 1, a clock in microseconds), so tests can interleave runs, spread a run over
several batches and cross midnight.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field
from typing import Any

from duraflow.cdc import events as ev
from duraflow.storage import codec

EPOCH = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)


@dataclass
class _Run:
    workflow_id: str
    run_id: str
    workflow_type: str
    partition: int
    event_id: int = 0
    seq: int = 0
    open_activities: set[int] = field(default_factory=set)
    closed: bool = False


class FakePartitions:
    """Makes history events for runs spread over ``partitions`` partitions."""

    def __init__(self, partitions: int = 2, start: dt.datetime = EPOCH, step_us: int = 1_000):
        self.partitions = partitions
        self.now_us = int(start.timestamp() * 1e6)
        self.step_us = step_us
        self.lsn = dict.fromkeys(range(partitions), 0)
        self.runs: dict[str, _Run] = {}
        self.events: list[ev.Event] = []

    # -- plumbing ------------------------------------------------------------------------------

    def partition_of(self, workflow_id: str) -> int:
        return zlib.crc32(workflow_id.encode()) % self.partitions

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * 1e6)

    def _emit(self, workflow_id: str, cls: type[ev.Event], **fields: Any) -> ev.Event:
        run = self.runs[workflow_id]
        assert not run.closed, f"{workflow_id} is closed"
        run.event_id += 1
        self.lsn[run.partition] += 1
        self.now_us += self.step_us
        event = cls(
            workflow_id=run.workflow_id,
            run_id=run.run_id,
            workflow_type=run.workflow_type,
            event_id=run.event_id,
            partition=run.partition,
            lsn=self.lsn[run.partition],
            at_us=self.now_us,
            **fields,
        )
        self.events.append(event)
        return event

    # -- what a workflow does ------------------------------------------------------------------

    def start(self, workflow_id: str, workflow_type: str = "order", args: Any = None) -> ev.Event:
        run_id = f"run-{zlib.crc32(workflow_id.encode()):08x}-{len(self.events)}"
        self.runs[workflow_id] = _Run(
            workflow_id, run_id, workflow_type, self.partition_of(workflow_id)
        )
        payload = codec.encode([args if args is not None else {"id": workflow_id}])
        return self._emit(workflow_id, ev.WorkflowStarted, args=payload, code_ref="app:order")

    def schedule(self, workflow_id: str, activity: str = "charge") -> int:
        run = self.runs[workflow_id]
        run.seq += 1
        run.open_activities.add(run.seq)
        self._emit(
            workflow_id,
            ev.ActivityScheduled,
            seq=run.seq,
            activity=activity,
            args=codec.encode([1]),
        )
        return run.seq

    def retry(self, workflow_id: str, seq: int, attempt: int, activity: str = "charge") -> None:
        self._emit(
            workflow_id,
            ev.ActivityRetry,
            seq=seq,
            activity=activity,
            attempt=attempt,
            error_type="IOError",
            error_message=f"attempt {attempt} failed",
            next_attempt_at_us=self.now_us + 1_000_000,
        )

    def resolve(
        self,
        workflow_id: str,
        seq: int,
        outcome: str = "completed",
        attempt: int = 1,
        activity: str = "charge",
    ) -> None:
        self.runs[workflow_id].open_activities.discard(seq)
        if outcome == "completed":
            self._emit(
                workflow_id,
                ev.ActivityCompleted,
                seq=seq,
                activity=activity,
                result=codec.encode({"ok": seq}),
                attempt=attempt,
            )
        elif outcome == "failed":
            self._emit(
                workflow_id,
                ev.ActivityFailed,
                seq=seq,
                activity=activity,
                error_type="ValueError",
                error_message="card declined",
                attempt=attempt,
            )
        else:
            self._emit(workflow_id, ev.ActivityCancelled, seq=seq, activity=activity)

    def activity(
        self,
        workflow_id: str,
        activity: str = "charge",
        retries: int = 0,
        outcome: str = "completed",
    ) -> int:
        seq = self.schedule(workflow_id, activity)
        for attempt in range(1, retries + 1):
            self.retry(workflow_id, seq, attempt, activity)
        self.resolve(workflow_id, seq, outcome, retries + 1, activity)
        return seq

    def close(self, workflow_id: str, status: str = "completed") -> ev.Event:
        if status == "completed":
            event = self._emit(workflow_id, ev.WorkflowCompleted, result=codec.encode({"done": 1}))
        elif status == "failed":
            event = self._emit(
                workflow_id, ev.WorkflowFailed, error_type="KeyError", error_message="'sku'"
            )
        elif status == "cancelled":
            event = self._emit(workflow_id, ev.WorkflowCancelled, reason="user asked")
        else:
            event = self._emit(workflow_id, ev.WorkflowTerminated, reason="")
        self.runs[workflow_id].closed = True
        return event

    def run(
        self,
        workflow_id: str,
        activities: int = 2,
        retries: int = 0,
        status: str = "completed",
        workflow_type: str = "order",
    ) -> None:
        """A whole run: start, ``activities`` activities (the first retried ``retries``
        times), close with ``status``."""
        self.start(workflow_id, workflow_type)
        for i in range(activities):
            self.activity(workflow_id, f"step{i}", retries=retries if i == 0 else 0)
        self.close(workflow_id, status)

    def take(self) -> list[ev.Event]:
        """The events made since the last take (one batch)."""
        batch, self.events = self.events, []
        return batch


def expected_counts(events: list[ev.Event]) -> dict[str, int]:
    """Rows each archive table should hold for ``events``, counted in Python (no SQL)."""
    closed_runs = {(e.workflow_id, e.run_id) for e in events if isinstance(e, ev.CLOSING)}
    scheduled = {
        (e.workflow_id, e.run_id, e.seq) for e in events if isinstance(e, ev.ActivityScheduled)
    }
    closed_acts = {
        (e.workflow_id, e.run_id, e.seq)
        for e in events
        if isinstance(e, (ev.ActivityCompleted, ev.ActivityFailed, ev.ActivityCancelled))
    }
    open_in_closed_runs = {k for k in scheduled - closed_acts if k[:2] in closed_runs}
    return {
        "history": len({(e.partition, e.lsn) for e in events}),
        "workflows": len(closed_runs),
        "activities": len(closed_acts) + len(open_in_closed_runs),
    }


def one_of_each() -> list[ev.Event]:
    """One event of every type, every field set to something other than its default."""
    base = {"workflow_id": "wf-1", "run_id": "r-1", "workflow_type": "order", "partition": 3}
    made: list[ev.Event] = [
        ev.WorkflowStarted(
            args=codec.encode([{"id": 1, "items": ["a", "b"]}]),
            code_ref="app:order",
            python="3.11",
            parent_id="parent",
            parent_run_id="pr",
            parent_seq=4,
            attempt=2,
            code_hash="0123456789abcdef",
            reset_from_run_id="r-0",
            reset_from_event_id=5,
            reset_reason="fixed",
            seed="r-0",
            **base,
        ),
        ev.ActivityScheduled(seq=1, activity="charge", args=codec.encode([9.5]), **base),
        ev.ActivityCompleted(
            seq=1, activity="charge", result=codec.encode({"tx": "t1"}), attempt=2, **base
        ),
        ev.ActivityFailed(
            seq=2, activity="ship", error_type="IOError", error_message="down", attempt=3, **base
        ),
        ev.ActivityRetry(
            seq=2,
            activity="ship",
            attempt=1,
            error_type="IOError",
            error_message="slow",
            next_attempt_at_us=5,
            **base,
        ),
        ev.ActivityCancelled(seq=3, activity="pack", **base),
        ev.TimerStarted(seq=4, fire_at_us=123, **base),
        ev.TimerFired(seq=4, **base),
        ev.TimerCancelled(seq=5, **base),
        ev.SignalReceived(name="payment", payload=codec.encode({"amount": 99.99}), **base),
        ev.CancelRequested(reason="user", **base),
        ev.ChildStarted(
            seq=6,
            child_workflow_id="ship-1",
            child_workflow_type="ship",
            code_ref="app:ship",
            args=codec.encode(["x"]),
            parent_close_policy="abandon",
            **base,
        ),
        ev.ChildCompleted(seq=6, child_workflow_id="ship-1", result=codec.encode(7), **base),
        ev.ChildFailed(
            seq=7,
            child_workflow_id="ship-2",
            status="failed",
            error_type="E",
            error_message="m",
            **base,
        ),
        ev.WorkflowCompleted(result=codec.encode({"status": "ok"}), **base),
        ev.WorkflowFailed(error_type="KeyError", error_message="'sku'", **base),
        ev.WorkflowCancelled(reason="asked", **base),
        ev.WorkflowTerminated(reason="ops", **base),
        ev.ExternalSignalRequested(
            seq=8,
            target_workflow_id="order-7",
            name="approve",
            payload=codec.encode({"by": "ops"}),
            target_run_id="r-7",
            child_seq=6,
            **base,
        ),
        ev.ExternalQueryRequested(
            seq=9, target_workflow_id="order-7", name="status", args=codec.encode([1]), **base
        ),
        ev.ExternalCancelRequested(seq=10, target_workflow_id="order-7", reason="x", **base),
        ev.ExternalCompleted(
            seq=9, target_workflow_id="order-7", result=codec.encode("ok"), **base
        ),
        ev.ExternalFailed(
            seq=10,
            target_workflow_id="order-7",
            error_type="WorkflowClosed",
            error_message="closed",
            **base,
        ),
        ev.BlockUntilStarted(
            seq=11, workflow_ids=["etl-1", "etl-2"], condition="any_complete", **base
        ),
        ev.BlockedWorkflowClosed(seq=11, target_workflow_id="etl-1", status="failed", **base),
        ev.BlockUntilEnded(seq=11, pending=["etl-2"], **base),
        ev.UpdateAccepted(update_id="u-1", name="add", args=codec.encode(["sku-9"]), **base),
        ev.UpdateCompleted(
            update_id="u-1", name="add", accepted_event_id=19, result=codec.encode(2), **base
        ),
        ev.UpdateFailed(
            update_id="u-2",
            name="add",
            accepted_event_id=20,
            error_type="ValueError",
            error_message="sold out",
            **base,
        ),
        ev.WorkflowPaused(reason="deploy", **base),
        ev.WorkflowUnpaused(reason="done", **base),
        ev.PatchMarker(patch_id="fix-1", deprecated=True, **base),
    ]
    for i, event in enumerate(made, start=1):
        event.event_id = i
        event.lsn = 100 + i
        event.at_us = int(EPOCH.timestamp() * 1e6) + i
    return made
