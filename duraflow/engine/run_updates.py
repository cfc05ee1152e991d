"""A run's updates: its handlers and validators, and the updates it has taken.

An update travels in three steps. The partition asks :meth:`RunUpdates.validate` (read-only,
like a query: a refusal records nothing); if it passes, the partition records
``workflow.update_accepted``, and applying that event (:meth:`RunUpdates.accept`, live or on
replay) starts the handler as a task on the run's loop. When the handler returns or raises,
the run issues ``workflow.update_completed`` or ``workflow.update_failed``, a command replay
checks like any other (keyed by the accepting event's ID). A handler may await activities,
timers and signals like the workflow's own code; the run goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from duraflow.cdc import events as ev
from duraflow.errors import NonDeterminismError, UpdateRejected, WorkflowCodeError
from duraflow.storage.codec import decode, encode, error_text

UpdateDone = ev.UpdateCompleted | ev.UpdateFailed


class Run(Protocol):
    """What updates use of their run (``duraflow.engine.run.WorkflowRun``; declared here so
    that this module, which the run imports, does not import the run)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def info(self) -> Any: ...

    def call_read_only(self, handler: Callable[..., Any], args: Sequence[Any], what: str) -> Any:
        """Call ``handler`` as read-only code (as a query handler is called)."""

    def event_base(self) -> dict[str, Any]:
        """The fields every event of the run carries, at workflow time."""

    def issue(self, event: ev.Event) -> bool:
        """Record a command of the run."""


class RunUpdates:
    """The update handlers of one run, and the state of each update it took."""

    __slots__ = ("_run", "done", "handlers", "pending", "validators")

    def __init__(self, run: Run) -> None:
        self._run = run
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.validators: dict[str, Callable[..., Any]] = {}
        self.pending: dict[str, str] = {}
        """Request IDs of the updates accepted whose handler still runs, with their names."""
        self.done: dict[str, UpdateDone] = {}
        """How each finished update ended, by request ID (what a retried request answers)."""

    def set_handler(
        self, name: str, handler: Callable[..., Any], validator: Callable[..., Any] | None
    ) -> None:
        """Register (or replace) the handler of update ``name``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"an update name must be a non-empty str, got {name!r}")
        if not callable(handler):
            raise TypeError(f"update handler {name!r} must be callable, got {handler!r}")
        if validator is not None and (
            not callable(validator) or inspect.iscoroutinefunction(validator)
        ):
            raise TypeError(f"validator of update {name!r} must be a plain function, not async")
        self.handlers[name] = handler
        if validator is None:
            self.validators.pop(name, None)
        else:
            self.validators[name] = validator

    def validate(self, name: str, args: Sequence[Any]) -> None:
        """Check that update ``name`` may run with ``args``: read-only, records nothing.

        Raises:
            UpdateRejected: no handler of that name, or its validator raised (its message).
            WorkflowCodeError: the validator blocked the partition (WorkflowBlocked) or
                changed the run's state (QueryChangedState), as a query handler may not.
        """
        run = self._run
        if name not in self.handlers:
            raise UpdateRejected(
                f"workflow {run.info.workflow_id!r} has no update handler {name!r} "
                f"(it has: {sorted(self.handlers)})"
            )
        validator = self.validators.get(name)
        if validator is None:
            return
        try:
            run.call_read_only(validator, args, f"validator of update {name!r}")
        except (UpdateRejected, WorkflowCodeError):  # blocked, or changed the run's state
            raise
        except Exception as exc:  # reason: a validator refuses by raising anything
            raise UpdateRejected(error_text(exc) or type(exc).__name__) from None

    def accept(self, event: ev.UpdateAccepted) -> None:
        """Apply ``workflow.update_accepted``: run its handler as a task of the run.

        Raises:
            NonDeterminismError: on replay, the code registered no handler of that name
                where it did when the update was accepted.
        """
        handler = self.handlers.get(event.name)
        if handler is None:
            raise NonDeterminismError(
                f"event {event.event_id}: history accepted update {event.name!r}, but the "
                f"replayed code has no handler of that name (it has: {sorted(self.handlers)})"
            )
        self.pending[event.update_id] = event.name
        self._run.loop.create_task(self._handle(event, handler))

    async def _handle(self, event: ev.UpdateAccepted, handler: Callable[..., Any]) -> None:
        run = self._run
        base = {**run.event_base(), "update_id": event.update_id, "name": event.name}
        base["accepted_event_id"] = event.event_id
        done: UpdateDone
        try:
            value = handler(*(decode(event.args) or []))
            if inspect.isawaitable(value):
                value = await value
            result = encode(value, f"result of update {event.name!r}")
        except (Exception, asyncio.CancelledError) as exc:  # reason: the update fails, not the run
            base["at_us"] = run.event_base()["at_us"]
            done = ev.UpdateFailed(
                **base, error_type=type(exc).__name__, error_message=error_text(exc)
            )
        else:
            base["at_us"] = run.event_base()["at_us"]
            done = ev.UpdateCompleted(**base, result=result)
        run.command(done)
        self.pending.pop(event.update_id, None)
        self.done[event.update_id] = done
