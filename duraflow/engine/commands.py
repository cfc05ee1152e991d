"""Commands matched on replay: each command that re-run workflow code issues is found in the
recorded history by its key (:func:`command_key`) and compared with what was recorded
(:func:`same_command`); a difference is named with :func:`describe_command` in the
``NonDeterminismError``."""

from __future__ import annotations

from duraflow.cdc import events as ev

SEQ_COMMANDS = (
    ev.ActivityScheduled,
    ev.TimerStarted,
    ev.ChildStarted,
    ev.ExternalSignalRequested,
    ev.ExternalQueryRequested,
    ev.ExternalCancelRequested,
    ev.BlockUntilStarted,
    ev.SearchAttributesSet,
)
EXTERNAL_COMMANDS = (
    ev.ExternalSignalRequested,
    ev.ExternalQueryRequested,
    ev.ExternalCancelRequested,
)


def command_key(event: ev.Event) -> tuple[str, int]:
    """Identity of a command within its run, for matching replayed code against history."""
    if isinstance(event, SEQ_COMMANDS):
        return ("seq", event.seq)
    if isinstance(event, ev.BlockUntilEnded):
        return ("end_block", event.seq)
    if isinstance(event, ev.ActivityCancelled):
        return ("cancel_activity", event.seq)
    if isinstance(event, ev.TimerCancelled):
        return ("cancel_timer", event.seq)
    if isinstance(event, (ev.UpdateCompleted, ev.UpdateFailed)):
        return ("update", event.accepted_event_id)
    if isinstance(event, ev.PatchMarker):
        return patch_key(event.patch_id)
    return ("close", 0)


def patch_key(patch_id: str) -> tuple[str, int]:
    """The :func:`command_key` of the marker of patch ``patch_id``."""
    return ("patch:" + patch_id, 0)


def describe_command(event: ev.Event) -> str:
    """A short human description of a command event, for non-determinism errors."""
    kind = ev.event_type(event).removeprefix("workflow.")
    if isinstance(event, (ev.ActivityScheduled, ev.ActivityCancelled)):
        return f"{kind} {event.activity!r} (seq {event.seq})"
    if isinstance(event, ev.ChildStarted):
        return (
            f"{kind} {event.child_workflow_type!r} id {event.child_workflow_id!r} (seq {event.seq})"
        )
    if isinstance(event, (ev.TimerStarted, ev.TimerCancelled)):
        return f"{kind} (seq {event.seq})"
    if isinstance(event, EXTERNAL_COMMANDS):
        what = getattr(event, "name", "")
        return f"{kind} {what!r} to {event.target_workflow_id!r} (seq {event.seq})"
    if isinstance(event, (ev.BlockUntilStarted, ev.BlockUntilEnded)):
        return f"{kind} (seq {event.seq})"
    if isinstance(event, ev.PatchMarker):
        return f"{kind} {event.patch_id!r}"
    return kind


def same_command(recorded: ev.Event, issued: ev.Event) -> bool:
    """Whether the command re-run code issued is the one recorded under the same key."""
    if type(recorded) is not type(issued):
        return False
    if isinstance(recorded, (ev.ActivityScheduled, ev.ActivityCancelled)):
        return recorded.activity == issued.activity  # type: ignore[attr-defined]  # reason: same type
    if isinstance(recorded, ev.ChildStarted):
        return (recorded.child_workflow_id, recorded.child_workflow_type) == (
            issued.child_workflow_id,  # type: ignore[attr-defined]  # reason: same type
            issued.child_workflow_type,  # type: ignore[attr-defined]  # reason: same type
        )
    if isinstance(recorded, EXTERNAL_COMMANDS):
        return (recorded.target_workflow_id, getattr(recorded, "name", "")) == (
            issued.target_workflow_id,  # type: ignore[attr-defined]  # reason: same type
            getattr(issued, "name", ""),
        )
    if isinstance(recorded, ev.BlockUntilStarted):
        return recorded.workflow_ids == issued.workflow_ids  # type: ignore[attr-defined]  # reason: same type
    return True
