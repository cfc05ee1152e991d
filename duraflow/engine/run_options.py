"""Run options (``execution_timeout``, ``run_timeout``, ``retry``, ``start_delay``,
``search_attributes``): checked where a start is made, recorded in ``workflow.started``, and
carried from one run of an ID to the next (continue-as-new, workflow retries).
"""

from __future__ import annotations

from typing import Any

import msgspec

from duraflow.actors import messages as m
from duraflow.cdc import events as ev
from duraflow.engine import search_attributes as sa
from duraflow.engine.retry import Duration, RetryPolicy, check_retry, parse_duration, parse_timeout
from duraflow.errors import ConfigurationError


def make(
    *,
    execution_timeout: Duration | None = None,
    run_timeout: Duration | None = None,
    retry: RetryPolicy | None = None,
    start_delay: Duration | None = None,
    search_attributes: dict[str, Any] | None = None,
) -> m.RunOptions | None:
    """The options of a start, checked (None when none is given).

    Raises:
        InvalidDuration: a timeout that is not a duration, 0, negative or over 100 years; a
            start delay that is not a duration, negative or over 100 years.
        ConfigurationError: ``retry`` is not a RetryPolicy; bad search attributes (named).
    """
    options = m.RunOptions(
        execution_timeout_s=parse_timeout(execution_timeout, "execution_timeout"),
        run_timeout_s=parse_timeout(run_timeout, "run_timeout"),
        start_delay_s=None if start_delay is None else parse_duration(start_delay, "start_delay"),
        retry=None if retry is None else msgspec.structs.asdict(check_retry(retry) or retry),
        search_attributes=None if search_attributes is None else sa.check(search_attributes),
    )
    return None if options == m.RunOptions() else options


def started_fields(options: m.RunOptions | None, now_us: int) -> dict[str, Any]:
    """The ``workflow.started`` fields of a first run started at ``now_us`` with ``options``.

    Raises:
        ConfigurationError: options that do not check (they may come from any process).
    """
    if options is None:
        return {}
    if options.retry is not None:
        policy(options.retry)
    attributes = None
    if options.search_attributes is not None:
        attributes = sa.check(options.search_attributes) or None
    return {
        "execution_deadline_us": _after(now_us, options.execution_timeout_s),
        "run_timeout_us": None if options.run_timeout_s is None else _us(options.run_timeout_s),
        "start_delay_us": 0 if options.start_delay_s is None else _us(options.start_delay_s),
        "retry": options.retry,
        "search_attributes": attributes,
    }


def carried(started: ev.WorkflowStarted, attributes: dict[str, Any] | None) -> dict[str, Any]:
    """The ``workflow.started`` fields the next run of a chain keeps from ``started`` (the
    search attributes as the run left them)."""
    return {
        "execution_deadline_us": started.execution_deadline_us,
        "run_timeout_us": started.run_timeout_us,
        "retry": started.retry,
        "search_attributes": attributes or None,
        "parent_id": started.parent_id,
        "parent_run_id": started.parent_run_id,
        "parent_seq": started.parent_seq,
    }


def policy(fields: dict[str, Any]) -> RetryPolicy:
    """The RetryPolicy recorded as ``fields``.

    Raises:
        ConfigurationError: the fields do not make a RetryPolicy.
    """
    try:
        return msgspec.convert(fields, RetryPolicy)
    except (msgspec.ValidationError, TypeError) as exc:
        raise ConfigurationError(f"retry policy {fields!r:.200} is not valid: {exc}") from None


def _us(seconds: float) -> int:
    return round(seconds * 1e6)


def _after(now_us: int, seconds: float | None) -> int | None:
    return None if seconds is None else now_us + _us(seconds)
