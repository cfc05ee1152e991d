"""WorkflowDescription: what ``describe()``, ``client.list()`` and ``live_workflows`` say
about one run. A leaf: partitions build it, replies carry it, clients and the archive read it.
"""

from __future__ import annotations

import datetime as dt

import msgspec


class WorkflowDescription(msgspec.Struct, frozen=True, kw_only=True):
    """What ``handle.describe()`` and ``client.list()`` report about one run.

    Attributes:
        status: ``running``, ``completed``, ``failed``, ``cancelled`` or ``terminated``.
        history_length: events recorded so far (for runs still in the partition's file).
        pending_activities: names of activities scheduled and not yet resolved.
        stuck: why an open run cannot make progress (non-determinism, missing code), if so.
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
