"""Exactly-once after a real crash: an archiver process is SIGKILLed at each point between its
Parquet write and its last Iceberg commit, then a new one re-delivers everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duraflow.cdc.events import Event
from duraflow.storage.catalog import open_archive
from duraflow.storage.iceberg import committed_offsets, data_files, resume_offsets
from duraflow.storage.query import connect
from tests.storage.archive_crash import PARTITIONS, PAUSE_POINTS, pump, workload
from tests.storage.fakes import expected_counts

ROOT = Path(__file__).resolve().parents[2]
COUNTS = {
    "history": "SELECT count(*), count(DISTINCT (workflow_id, run_id, event_id)) FROM history",
    "workflows": "SELECT count(*), count(DISTINCT (workflow_id, run_id)) FROM workflows",
    "activities": "SELECT count(*), count(DISTINCT (workflow_id, run_id, seq)) FROM activities",
}


def _kill_at(pause_at: str, archive_dir: Path, warm_dir: Path) -> None:
    """Run the archiver in its own interpreter until it stops at ``pause_at``; SIGKILL it."""
    marker = archive_dir.parent / "paused"
    args = [str(archive_dir), str(warm_dir), pause_at, str(marker)]
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.archive_crash", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"archiver exited early: {child.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]  # reason: stderr is a pipe
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("archiver never reached its pause point")
        time.sleep(0.02)
    assert str(child.pid) == marker.read_text()
    os.kill(child.pid, signal.SIGKILL)  # no handler, no finally, no flush runs
    child.wait(timeout=10)
    child.stderr.close()  # type: ignore[union-attr]  # reason: stderr is a pipe
    assert -signal.SIGKILL == child.returncode


@pytest.mark.parametrize("pause_at", PAUSE_POINTS)
def test_every_event_is_archived_once_after_a_kill(pause_at: str, tmp_path: Path) -> None:
    archive_dir, warm_dir = tmp_path / "archive", tmp_path / "warm"
    rounds = workload()
    _kill_at(pause_at, archive_dir, warm_dir)

    # right after the crash: history holds round 0, or rounds 0 and 1 if its commit landed
    archive = open_archive(archive_dir)
    landed = 2 if pause_at in ("between_tables", "after_commit") else 1
    assert _last_lsns(rounds[:landed]) == committed_offsets(archive.history)
    # and warm + cold together show rounds 0 and 1, each row once
    expected = expected_counts(rounds[0] + rounds[1])
    with connect(archive, warm_dir) as q:
        for name, sql in COUNTS.items():
            assert (expected[name], expected[name]) == q.sql(sql).fetchall()[0], name

    # restart: an at-least-once consumer delivers every round again
    pump(archive, warm_dir, rounds)

    expected = expected_counts([e for r in rounds for e in r])
    with connect(archive) as q:
        for name, sql in COUNTS.items():
            assert (expected[name], expected[name]) == q.sql(sql).fetchall()[0], name
    last = _last_lsns(rounds)
    assert last == committed_offsets(archive.history) == resume_offsets(archive)
    assert [] == [p for p in warm_dir.iterdir()]
    # a crash inside the commit leaves at most unreferenced files, never a second copy
    referenced = {p.removeprefix("file://") for p in data_files(archive.history)}
    on_disk = {
        str(p) for p in Path(archive.history.location().removeprefix("file://")).rglob("*.parquet")
    }
    assert referenced <= on_disk
    if pause_at == "in_history_commit":
        assert on_disk - referenced, "the killed commit had written its data file"


def _last_lsns(rounds: list[list[Event]]) -> dict[int, int]:
    events = [e for r in rounds for e in r]
    return {p: max(e.lsn for e in events if e.partition == p) for p in range(PARTITIONS)}
