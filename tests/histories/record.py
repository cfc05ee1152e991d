"""Record the histories in this folder again: ``./dev python -m tests.histories.record``.

Each scenario runs on a time-skipping WorkflowEnvironment with a fixed start time, and every
run it made is written to ``<scenario>.msgpack`` (what the replay test reads) and
``<scenario>.json`` (the same events, for people). Only record again on purpose: these files
are the old runs the current code must still replay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import duraflow as df
from duraflow.testing import WorkflowEnvironment, save_history
from tests.histories import flows

HERE = Path(__file__).resolve().parent
START = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.timezone.utc)
RESULT_TIMEOUT_S = 60


def activities(client: df.Client) -> list[df.WorkflowHandle]:
    handle = client.start(flows.hist_activities, "o-1", workflow_id="hist-activities")
    handle.result(timeout=RESULT_TIMEOUT_S)
    return [handle]


def timers(client: df.Client) -> list[df.WorkflowHandle]:
    handle = client.start(flows.hist_timers, workflow_id="hist-timers")
    handle.result(timeout=RESULT_TIMEOUT_S)
    return [handle]


def signals(client: df.Client) -> list[df.WorkflowHandle]:
    handle = client.start(flows.hist_signals, workflow_id="hist-signals")
    handle.signal("item", {"sku": "a-1"})
    handle.signal("item", {"sku": "b-2"})
    handle.signal("done", "all here")
    handle.result(timeout=RESULT_TIMEOUT_S)
    return [handle]


def children(client: df.Client) -> list[df.WorkflowHandle]:
    handle = client.start(flows.hist_children, workflow_id="hist-children")
    handle.result(timeout=RESULT_TIMEOUT_S)
    good = client.get_handle("hist-children/good")
    bad = client.get_handle("hist-children/bad")
    return [handle, good, bad]


def cancel(client: df.Client) -> list[df.WorkflowHandle]:
    handle = client.start(flows.hist_cancel, workflow_id="hist-cancel")
    handle.cancel("the customer changed their mind")
    with contextlib.suppress(df.WorkflowCancelledError):
        handle.result(timeout=RESULT_TIMEOUT_S)
    return [handle]


def messages(client: df.Client) -> list[df.WorkflowHandle]:
    handle = client.start(flows.hist_coordinator, workflow_id="hist-coordinator")
    handle.result(timeout=RESULT_TIMEOUT_S)
    workers = [client.get_handle(f"hist-coordinator/{n}") for n in (1, 2)]
    return [handle, *workers]


SCENARIOS: dict[str, Callable[[df.Client], list[df.WorkflowHandle]]] = {
    "activities": activities,
    "timers": timers,
    "signals": signals,
    "children": children,
    "cancel": cancel,
    "messages": messages,
}


def record(folder: Path = HERE) -> list[Path]:
    """Run every scenario and write its histories to ``folder``; returns the files written."""
    written = []
    for name, scenario in SCENARIOS.items():
        with WorkflowEnvironment.start_time_skipping(start_time=START) as env:
            events = [e for h in scenario(env.client) for e in h.history()]
        for suffix in (".msgpack", ".json"):
            written.append(save_history(events, folder / f"{name}{suffix}"))
    return written


if __name__ == "__main__":
    for path in record():
        print(path.relative_to(HERE.parent.parent))
