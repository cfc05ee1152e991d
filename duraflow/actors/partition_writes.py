"""How the partition shell writes the machine's write effects into its SQLite file, and sorts
the rest for after the commit.

One writer per write effect (:data:`duraflow.engine.effects.WRITES`), called inside the
turn's transaction as soon as the machine returns the effect, so later inputs of the same
turn read it. A writer that has something to do after the commit (an outbox row to send)
adds it to ``after``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from duraflow.actors import messages as m
from duraflow.engine import effects as fx
from duraflow.engine.machine import Machine
from duraflow.storage.sqlite_store import PartitionStore

Writer = Callable[[PartitionStore, Any, list[Any]], None]


def _close(store: PartitionStore, e: fx.CloseWorkflow, after: list[Any]) -> None:
    store.close_workflow(
        e.workflow_id,
        e.run_id,
        e.status,
        e.at_us,
        e.result,
        e.error_type,
        e.error_message,
        e.next_run_id,
    )
    store.delete_run_state(e.workflow_id, e.run_id)


def _outbox(store: PartitionStore, e: fx.PutOutbox, after: list[Any]) -> None:
    outbox_id = store.insert_outbox(e.target_id, m.encode_outbox(e.message))
    after.append(fx.Send(outbox_id, e.target_id, e.message))


WRITERS: dict[type, Writer] = {
    fx.InsertWorkflow: lambda store, e, after: store.insert_workflow(e.row),
    fx.CloseWorkflow: _close,
    fx.AppendEvents: lambda store, e, after: store.append_events(e.events),
    fx.SetStuck: lambda store, e, after: store.set_stuck(e.workflow_id, e.run_id, e.stuck),
    fx.PutActivity: lambda store, e, after: store.insert_activity(e.row),
    fx.UpdateActivity: lambda store, e, after: store.update_activity(
        *e.key, e.attempt, e.state, e.next_at_us
    ),
    fx.SetActivityHeartbeat: lambda store, e, after: store.set_activity_heartbeat(
        *e.key, e.details
    ),
    fx.DropActivity: lambda store, e, after: store.delete_activity(*e.key),
    fx.PutTimer: lambda store, e, after: store.insert_timer(e.row),
    fx.DropTimer: lambda store, e, after: store.delete_timer(*e.key),
    fx.MarkSignal: lambda store, e, after: store.insert_signal(
        e.request_id, e.workflow_id, e.run_id, e.lsn
    ),
    fx.PutOutbox: _outbox,
    fx.DropOutbox: lambda store, e, after: store.delete_outbox([e.outbox_id]),
    fx.SetMeta: lambda store, e, after: store.set_meta(e.key, e.value),
    fx.DeleteRun: lambda store, e, after: store.delete_run(e.workflow_id, e.run_id),
    fx.SetSearchAttributes: lambda store, e, after: store.set_search_attributes(
        e.workflow_id, e.run_id, e.data
    ),
}


def write(
    store: PartitionStore,
    machine: Machine,
    effects: list[Any],
    answer: tuple[Any, list[tuple[Any, Any]]],
    after: list[Any],
) -> None:
    """Write the writes among ``effects`` (the machine's answer to one input) now; its reply
    joins ``answer``'s list with ``answer``'s future; the rest joins ``after``.

    Raises:
        RunBroke: a write failed (``Machine.blame`` names the run it recorded).
    """
    future, replies = answer
    for index, effect in enumerate(effects):
        writer = WRITERS.get(type(effect))
        if writer is not None:
            try:
                writer(store, effect, after)
            except Exception as exc:
                raise machine.blame(effects, index, exc) from exc
        elif type(effect) in (fx.Reply, fx.AwaitClose):
            replies.append((future, effect))
        else:
            after.append(effect)
