"""A small archiver that can stop dead at a chosen point, for the crash tests.

``python -m tests.storage.archive_crash ARCHIVE_DIR WARM_DIR PAUSE_AT MARKER`` archives the
rounds of :func:`workload` (warm segments, then one ``archive_batch`` per round, then segment
clean-up) and, in round :data:`PAUSE_ROUND`, at ``PAUSE_AT`` writes its PID to ``MARKER`` and
sleeps until the test kills it with SIGKILL. Pause points:

* ``after_segment``: the round's segments are written, nothing committed;
* ``in_history_commit``: pyiceberg wrote the history data and manifest files, the catalog
  has not moved to the new snapshot yet;
* ``between_tables``: history committed, workflows and activities not;
* ``after_commit``: all three committed, the segments not deleted.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from duraflow.cdc.events import Event
from duraflow.storage.archive_schema import history_rows
from duraflow.storage.catalog import Archive, open_archive
from duraflow.storage.iceberg import archive_batch, resume_offsets
from duraflow.storage.warm import (
    archived_segments,
    delete_segments,
    list_segments,
    read_segments,
    write_segment,
)
from tests.storage.fakes import FakePartitions

PAUSE_POINTS = ("after_segment", "in_history_commit", "between_tables", "after_commit")
PAUSE_ROUND = 1
PARTITIONS = 3


def workload() -> list[list[Event]]:
    """Three rounds of events; some runs start in one round and close in the next."""
    fake = FakePartitions(partitions=PARTITIONS)
    rounds = []
    for r in range(3):
        for i in range(12):
            fake.run(
                f"wf-{r}-{i}", activities=2, retries=i % 3, status=("completed", "failed")[i % 2]
            )
        for i in range(4):
            fake.start(f"long-{r}-{i}")
            fake.activity(f"long-{r}-{i}", "reserve", retries=1)
            fake.schedule(f"long-{r}-{i}", "wait")
            if r:
                fake.close(f"long-{r - 1}-{i}", ("cancelled", "terminated")[i % 2])
        rounds.append(fake.take())
    return rounds


def pump(
    archive: Archive,
    warm_dir: Path,
    rounds: list[list[Event]],
    checkpoint: Callable[[str, int], None] = lambda point, round_: None,
) -> None:
    """What a consumer does per round: segments, one archive commit, clean-up."""
    for index, events in enumerate(rounds):
        rows = history_rows(events)
        for p in range(PARTITIONS):
            mine = rows.filter(pc.equal(rows["partition"], p))
            if mine.num_rows:
                write_segment(warm_dir, mine)
        checkpoint("after_segment", index)
        archive_batch(archive, read_segments(list_segments(warm_dir)))
        checkpoint("after_commit", index)
        delete_segments(archived_segments(list_segments(warm_dir), resume_offsets(archive)))


def main(archive_dir: str, warm_dir: str, pause_at: str, marker: str) -> None:
    assert pause_at in PAUSE_POINTS, pause_at
    archive = open_archive(archive_dir)
    current = {"round": -1}

    def stop_here() -> None:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(600)  # until SIGKILL
        raise SystemExit("not killed")

    def checkpoint(point: str, index: int) -> None:
        current["round"] = index
        if point == pause_at and index == PAUSE_ROUND:
            stop_here()

    real_commit = archive.catalog.commit_table

    def commit_table(table: Any, requirements: Any, updates: Any) -> Any:
        name = table.name()[-1]
        if current["round"] == PAUSE_ROUND and (
            (pause_at == "in_history_commit" and name == "history")
            or (pause_at == "between_tables" and name == "workflows")
        ):
            stop_here()
        return real_commit(table, requirements, updates)

    archive.catalog.commit_table = commit_table  # type: ignore[method-assign]  # reason: crash hook
    pump(archive, Path(warm_dir), workload(), checkpoint)


if __name__ == "__main__":
    main(*sys.argv[1:5])
