"""The rows a partition file holds, as the partition machine reads and writes them (a leaf)."""

from __future__ import annotations

import msgspec


class WorkflowRow(msgspec.Struct, frozen=True):
    """One run as stored in the ``workflows`` table."""

    workflow_id: str
    run_id: str
    workflow_type: str
    code_ref: str
    status: str
    parent_id: str | None
    parent_run_id: str | None
    parent_seq: int | None
    started_at_us: int
    closed_at_us: int | None
    result: bytes | None
    error_type: str | None
    error_message: str | None
    stuck: str | None = None
    continued_from: str | None = None
    next_run_id: str | None = None
    attempt: int = 1
    search_attributes: bytes | None = None
    """msgpack of the run's typed search attributes (``engine/search_attributes.py``)."""
    first_run_id: str | None = None
    """The first run of this run's chain (continue-as-new, workflow retries); None: itself."""


class ActivityRow(msgspec.Struct, frozen=True):
    """One scheduled, unresolved activity as stored in ``workflow_activities``."""

    workflow_id: str
    run_id: str
    seq: int
    activity: str
    code_ref: str
    args: bytes
    options: bytes
    attempt: int
    state: str
    scheduled_at_us: int
    next_at_us: int | None
    heartbeat: bytes | None


class TimerRow(msgspec.Struct, frozen=True):
    """One durable timer of an open run."""

    workflow_id: str
    run_id: str
    seq: int
    fire_at_us: int
