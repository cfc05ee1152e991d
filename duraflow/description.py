"""WorkflowDescription: what ``describe()``, ``client.list()`` and ``live_workflows`` say
about one run, and :func:`describe_run`, the one builder of it. A leaf: partitions build it,
replies carry it, clients and the archive read it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec

from duraflow.cdc import events as ev
from duraflow.engine.definitions import find_workflow


class WorkflowDescription(msgspec.Struct, frozen=True, kw_only=True):
    """What ``handle.describe()`` and ``client.list()`` report about one run.

    Attributes:
        status: ``running``, ``completed``, ``failed``, ``cancelled``, ``terminated``,
            ``timed_out`` or ``continued_as_new``.
        history_length: events recorded so far (for runs still in the partition's file).
        pending_activities: names of activities scheduled and not yet resolved.
        stuck: why an open run cannot make progress (non-determinism, missing code), if so.
        attempt: which attempt of a workflow-level retry policy this run is (1 first).
        continued_from: the run of the same ID this one followed (continue-as-new, retry).
        next_run_id: the run of the same ID that followed this one, once it closed so.
        first_run_id: the first run of this run's chain (its own ID for a first run).
        search_attributes: the run's typed search attributes.
        paused: an operator paused the open run (``handle.pause``), for ``pause_reason``.
        code_hash: the hash of the workflow code the run started with (``describe()`` only);
            ``current_code_hash`` that of the code the describing process has now (the
            run's partition; the client's own for a run read back from the archive, None if
            it does not have the workflow); ``code_changed`` True when they differ (replay
            then relies on ``ctx.patched``).
    """

    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    start_time: dt.datetime
    close_time: dt.datetime | None = None
    parent_workflow_id: str | None = None
    history_length: int = 0
    pending_activities: list[str] = []
    error_type: str | None = None
    error_message: str | None = None
    stuck: str | None = None
    partition: int = 0
    attempt: int = 1
    continued_from: str | None = None
    next_run_id: str | None = None
    search_attributes: dict[str, Any] = {}
    first_run_id: str | None = None
    paused: bool = False
    pause_reason: str | None = None
    code_hash: str | None = None
    current_code_hash: str | None = None
    code_changed: bool = False


def utc(us: int) -> dt.datetime:
    """A moment in microseconds since the epoch as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.timezone.utc)


def describe_run(
    *,
    workflow_id: str,
    run_id: str,
    workflow_type: str,
    status: str,
    started_at_us: int,
    closed_at_us: int | None = None,
    parent_workflow_id: str | None = None,
    history_length: int = 0,
    pending_activities: list[str] | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    stuck: str | None = None,
    partition: int = 0,
    attempt: int = 1,
    continued_from: str | None = None,
    next_run_id: str | None = None,
    search_attributes: dict[str, Any] | None = None,
    first_run_id: str | None = None,
) -> WorkflowDescription:
    """The one way a :class:`WorkflowDescription` is made, by a partition from its row of a
    run and by a client from an archived run's history: times in microseconds since the
    epoch become UTC datetimes."""
    return WorkflowDescription(
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        status=status,
        start_time=utc(started_at_us),
        close_time=None if closed_at_us is None else utc(closed_at_us),
        parent_workflow_id=parent_workflow_id,
        history_length=history_length,
        pending_activities=[] if pending_activities is None else pending_activities,
        error_type=error_type,
        error_message=error_message,
        stuck=stuck,
        partition=partition,
        attempt=attempt,
        continued_from=continued_from,
        next_run_id=next_run_id,
        search_attributes={} if search_attributes is None else search_attributes,
        first_run_id=first_run_id or run_id,
    )


def describe_closed_run(events: Sequence[ev.Event]) -> WorkflowDescription:
    """A closed run described from its history alone (a run the archive holds), as its
    partition described it once closed.

    Raises:
        ValueError: the history has no closing event.
    """
    started, closing = events[0], ev.last_closing(events)
    status, error_type, error_message, _ = ev.run_closing(closing)
    first = started if isinstance(started, ev.WorkflowStarted) else None
    attributes = first.search_attributes if first is not None else None
    for event in events:
        if isinstance(event, ev.SearchAttributesSet):
            attributes = event.search_attributes
    described = describe_run(
        workflow_id=started.workflow_id,
        run_id=started.run_id,
        workflow_type=started.workflow_type,
        status=status,
        started_at_us=started.at_us,
        closed_at_us=closing.at_us,
        parent_workflow_id=first.parent_id if first is not None else None,
        history_length=max(e.event_id for e in events),
        error_type=error_type,
        error_message=error_message,
        partition=started.partition,
        attempt=first.attempt if first is not None else 1,
        continued_from=first.continued_from if first is not None else None,
        next_run_id=ev.next_run(closing),
        search_attributes=dict(attributes or {}),
        first_run_id=first.first_run_id if first is not None else None,
    )
    return with_code_hashes(described, (first.code_hash if first is not None else "") or None)


def with_code_hashes(described: WorkflowDescription, recorded: str | None) -> WorkflowDescription:
    """``described`` with the code hash its run recorded at start, the hash of the workflow
    code this process has now (if it has it), and whether they differ."""
    found = find_workflow(described.workflow_type)
    current = found.code_hash if found is not None else None
    return msgspec.structs.replace(
        described,
        code_hash=recorded,
        current_code_hash=current,
        code_changed=bool(recorded and current and recorded != current),
    )
