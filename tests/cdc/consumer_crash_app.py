"""Workflows and pause points for the archive consumer's crash tests; also the process that the
local-runtime variant starts and SIGKILLs.

    python tests/cdc/consumer_crash_app.py DATA_DIR POINT MARKER

opens an in-process engine over DATA_DIR (archive committed only on demand), runs
:data:`RUNS` workflows to the end, waits until their events are in warm segments, then stops
at ``POINT`` and writes its PID to MARKER:

* ``warm``: warm segments written, nothing committed to Iceberg;
* ``between_tables``: the ``history`` table committed, ``workflows`` and ``activities`` not;
* ``after_commit``: all three tables committed, the warm segments not deleted yet.

On Ray the same pauses are put into the consumer actor's process with :func:`pause_at`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run as a script: import this file under its package name, so that history records
    # ``tests.cdc.consumer_crash_app:...`` as the code ref, never ``__main__:...``.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.cdc.consumer_crash_app import main

    sys.exit(main(sys.argv[1:]))

import duraflow as df

PARTITIONS = 2
RUNS = 12
POINTS = ("warm", "between_tables", "after_commit")
PAUSE_S = 600.0
"""How long a paused consumer sleeps: far longer than any test waits before killing it."""


@df.activity(inline=True)
def cc_step(n: int) -> int:
    return n * 10


@df.workflow
async def cc_flow(ctx: df.WorkflowContext, n: int) -> int:
    first = await ctx.activity(cc_step, n)
    second = await ctx.activity(cc_step, n + 1)
    if n % 5 == 4:
        raise ValueError(f"run {n} fails on purpose")
    return first + second


def expected(n: int) -> int:
    return n * 10 + (n + 1) * 10


def run_workflows(client: df.Client, prefix: str, count: int) -> None:
    """Start ``count`` runs and wait for each to close."""
    handles = [client.start(cc_flow, n, workflow_id=f"{prefix}{n}") for n in range(count)]
    for n, handle in enumerate(handles):
        try:
            assert expected(n) == handle.result(timeout=30)
        except df.WorkflowFailedError:
            assert n % 5 == 4


def pause_at(point: str, marker: str) -> None:
    """Make this process's archive consumer stop for good at ``point`` in its next commit,
    writing this process's PID to ``marker`` when it gets there. ``warm`` changes nothing."""
    import duraflow.cdc.consumer as consumer
    from duraflow.storage.archive_schema import max_lsns
    from duraflow.storage.iceberg import commit

    def arrived() -> None:
        mark(marker)
        time.sleep(PAUSE_S)  # in a worker thread: the event loop goes on; SIGKILL ends it

    if point == "between_tables":

        def history_only(archive: Any, rows: Any, offsets: Any = None, **_: Any) -> Any:
            commit(archive.history, rows, offsets or max_lsns(rows))
            arrived()

        consumer.archive_batch = history_only  # type: ignore[assignment]
    elif point == "after_commit":

        def stuck(segments: Any) -> int:
            arrived()
            return 0

        consumer.delete_segments = stuck  # type: ignore[assignment]
    elif point != "warm":
        raise ValueError(f"unknown pause point {point!r}")


def mark(marker: str) -> None:
    """Write this process's PID to ``marker`` atomically."""
    tmp = f"{marker}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, marker)


def pause_actor(actor: Any, point: str, marker: str) -> None:
    """For ``ConsumerActor.__ray_call__``: :func:`pause_at` inside the actor's process."""
    pause_at(point, marker)


def main(argv: list[str]) -> int:
    data_dir, point, marker = Path(argv[0]), argv[1], argv[2]
    engine = df.Engine(
        data_dir,
        runtime="local",
        partitions=PARTITIONS,
        synchronous="NORMAL",
        archive_interval=3600,
    )
    run_workflows(engine.client(), "local-", RUNS)
    assert engine.sync_archive(timeout=30)
    pause_at(point, marker)
    if point == "warm":
        mark(marker)
        time.sleep(PAUSE_S)
    else:
        engine.commit_archive(timeout=PAUSE_S)  # stops inside, at the pause point
    return 1  # never reached: the test kills this process first
