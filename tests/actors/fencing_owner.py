"""Workflows for the fencing tests, and the owner processes that a test replaces.

    python tests/actors/fencing_owner.py DATA_DIR
    python tests/actors/fencing_owner.py stand-in FILE OWNER

The first opens DATA_DIR in-process (one partition), starts ``fence-timer`` (a durable timer
due TIMER_S later) and ``fence-signal`` (waits for a signal), writes ``ready.json`` with its
PID, then does nothing itself: no turn runs until the timer is due, so a SIGSTOP right after
ready finds it between turns. When it wakes after a new owner took its file over, the overdue timer
makes it attempt a write turn; the owner must then find itself fenced, write nothing and close
its partition. It records what it saw in ``owner.json`` (the host's ``fenced`` errors, what a
signal sent afterwards raised) and exits 0; it exits 3 if it is not fenced FENCED_WITHIN_S
after ready.

The second stands in for an earlier incarnation of a Ray partition actor that Ray holds dead
but that lives on: named OWNER (the actor's name in lock files), it opens partition file FILE
the moment the actor's process releases it, writes ``stand-in.ready`` beside FILE, and when
``stand-in.go`` appears attempts one write turn; it records in ``stand-in.json`` what that
raised and exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    # Run as a script: import this file under its package name, so that history records
    # ``tests.actors.fencing_owner:...`` as the code ref, never ``__main__:...``.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.actors.fencing_owner import main

    sys.exit(main(sys.argv[1:]))

import duraflow as df

TIMER_S = 1.5
"""From the timer workflow's start to its timer: room for the test to stop this process."""
SETTLE_S = 0.2
"""Left after the starts before ready, for any turn they set off to end."""
READY_FILE = "ready.json"
OUT_FILE = "owner.json"
SIGNAL = "go"
FENCED_WITHIN_S = 60.0
"""From ready to fenced at most (the test stops this process in between)."""


@df.workflow
async def fence_sleeper(ctx: df.WorkflowContext) -> str:
    await ctx.sleep(TIMER_S)
    return "slept"


@df.workflow
async def fence_waiter(ctx: df.WorkflowContext) -> object:
    return await ctx.wait_for_signal(SIGNAL)


def _publish(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: the test polls for the file and reads
    it as soon as it exists (a plain write_text shows it empty for a moment)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def open_engine(data_dir: Path, *, takeover: bool = False) -> df.Engine:
    return df.Engine(
        data_dir,
        runtime="local",
        partitions=1,
        synchronous="NORMAL",
        archive=False,
        hibernate_after=None,  # no sweeps: no turn runs unless a request or a timer asks
        takeover=takeover,
    )


def main(argv: list[str]) -> int:
    if argv[0] == "stand-in":
        return stand_in(Path(argv[1]), argv[2])
    data_dir = Path(argv[0])
    with open_engine(data_dir) as engine:
        client = engine.client()
        client.start(fence_sleeper, workflow_id="fence-timer")
        waiter = client.start(fence_waiter, workflow_id="fence-signal")
        time.sleep(SETTLE_S)
        _publish(data_dir / READY_FILE, json.dumps({"pid": os.getpid()}))
        host = engine._host  # reason: the in-process host's record of fenced partitions
        # Stopped (SIGSTOP) and woken (SIGCONT) by the test while it waits here.
        deadline = time.monotonic() + FENCED_WITHIN_S
        while not getattr(host, "fenced", None):
            if time.monotonic() > deadline:
                return 3
            time.sleep(0.01)
        try:
            waiter.signal(SIGNAL, "from the old owner")
            after = "nothing"
        except df.DuraflowError as exc:
            after = f"{type(exc).__name__}: {exc}"
        report = {
            "fenced": {str(i): str(e) for i, e in host.fenced.items()},
            "signal_after": after,
        }
    _publish(data_dir / OUT_FILE, json.dumps(report))
    return 0


def stand_in(path: Path, owner: str) -> int:
    from duraflow.storage import fencing
    from duraflow.storage.sqlite_store import PartitionStore

    fencing.set_owner(owner)
    deadline = time.monotonic() + FENCED_WITHIN_S
    while True:
        try:
            store = PartitionStore(path, "NORMAL")
            break
        except df.PartitionUnavailable:
            if time.monotonic() > deadline:
                return 3
            time.sleep(0.002)
    _publish(path.with_name("stand-in.ready"), str(store.epoch))
    go = path.with_name("stand-in.go")
    while not go.exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.01)
    try:
        with store.turn():
            store.set_meta("stand_in", "wrote")
        raised = "nothing"
    except df.DuraflowError as exc:
        raised = f"{type(exc).__name__}: {exc}"
    finally:
        store.close()
    _publish(path.with_name("stand-in.json"), json.dumps({"raised": raised}))
    return 0
