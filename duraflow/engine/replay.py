"""Replay: rebuild a run from its recorded history (restart, crash, eviction, reset).

:func:`rebuild` re-applies the recorded resolutions in order to a new :class:`WorkflowRun`;
each command the code issues is matched to the recorded command with the same sequence number
(``engine/commands.py``), and any difference raises :class:`NonDeterminismError` naming both.
"""

from __future__ import annotations

from collections.abc import Sequence

from duraflow.cdc import events as ev
from duraflow.engine.commands import command_key, describe_command
from duraflow.engine.definitions import WorkflowDefinition
from duraflow.engine.guard import Watch
from duraflow.engine.run import PYTHON_VERSION, WorkflowRun
from duraflow.errors import NonDeterminismError


def rebuild(
    definition: WorkflowDefinition, history: Sequence[ev.Event], *, watch: Watch | None = None
) -> tuple[WorkflowRun, list[ev.Event]]:
    """Rebuild a run by replaying its recorded history (each activation timed by ``watch``).

    Returns:
        The resident run, and the commands its code issued that history does not hold yet
        (possible when recorded resolutions were never applied, e.g. the code was missing).

    Raises:
        NonDeterminismError: the code diverged from history, or history was recorded on
            another Python minor version.
        WorkflowBlocked: an activation held the partition past the watch's threshold.
    """
    started = history[0]
    if not isinstance(started, ev.WorkflowStarted):
        raise NonDeterminismError(
            f"history starts with {ev.event_type(started)}, not workflow.started"
        )
    if started.python and started.python != PYTHON_VERSION:
        raise NonDeterminismError(
            f"workflow {started.workflow_id!r} was recorded on Python {started.python} and cannot "
            f"be replayed on Python {PYTHON_VERSION}: asyncio orders work differently across "
            "minor versions; finish it on the version that started it"
        )
    recorded = {
        command_key(e): e
        for e in history
        if isinstance(e, ev.COMMANDS) and not (isinstance(e, ev.PatchMarker) and e.deprecated)
    }
    run = WorkflowRun(definition, started, recorded, watch=watch)
    run._deprecated_patches = {  # reason: replay state, set before the first activation
        e.patch_id for e in history if isinstance(e, ev.PatchMarker) and e.deprecated
    }
    new: list[ev.Event] = []
    for event in history:
        if isinstance(event, ev.RESOLUTIONS):
            new.extend(run.activate(event))
    leftover = sorted(recorded.values(), key=lambda e: e.event_id)
    if leftover:
        first = leftover[0]
        if new:  # the code went on where history closed (or did something else)
            issued = f"replayed code issued {describe_command(new[0])} instead"
        else:
            issued = "but the replayed code never issued it"
        raise NonDeterminismError(
            f"event {first.event_id}: history recorded {describe_command(first)}, {issued}"
        )
    run._recorded = None  # reason: replay is over; the run is live from here
    return run, new
