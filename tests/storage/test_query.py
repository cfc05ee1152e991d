"""DuckDB views over the archive: cold and warm together, each row once, with no file at all."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from duraflow.storage.archive_schema import ACTIVITIES, HISTORY, WORKFLOWS, history_rows
from duraflow.storage.catalog import Archive, open_archive
from duraflow.storage.iceberg import archive_batch, commit, resume_offsets
from duraflow.storage.query import ArchiveReader, connect
from duraflow.storage.warm import (
    archived_segments,
    delete_segments,
    list_segments,
    read_segments,
    write_segment,
)
from tests.storage.fakes import FakePartitions, expected_counts

COUNTS = {
    "history": "SELECT count(*), count(DISTINCT (workflow_id, run_id, event_id)) FROM history",
    "workflows": "SELECT count(*), count(DISTINCT (workflow_id, run_id)) FROM workflows",
    "activities": "SELECT count(*), count(DISTINCT (workflow_id, run_id, seq)) FROM activities",
}


def _counts(archive: Archive, warm_dir: Path | None) -> dict[str, tuple[int, int]]:
    with connect(archive, warm_dir) as q:
        return {name: q.sql(sql).fetchall()[0] for name, sql in COUNTS.items()}


def _to_warm(warm_dir: Path, fake: FakePartitions) -> list:  # type: ignore[type-arg]  # reason: test helper
    events = fake.take()
    rows = history_rows(events)
    for p in range(fake.partitions):
        mine = rows.filter(pc.equal(rows["partition"], p))
        if mine.num_rows:
            write_segment(warm_dir, mine)
    return events


def test_views_exist_with_their_columns_when_no_file_does(archive: Archive, warm_dir: Path) -> None:
    with connect(archive, warm_dir) as q:
        for spec in (HISTORY, WORKFLOWS, ACTIVITIES):
            columns = [row[0] for row in q.sql(f"DESCRIBE {spec.name}").fetchall()]
            assert list(spec.arrow.names) == columns
            assert [(0,)] == q.sql(f"SELECT count(*) FROM {spec.name}").fetchall()


def test_warm_rows_not_yet_committed_show_once_beside_cold_rows(
    archive: Archive, warm_dir: Path
) -> None:
    fake = FakePartitions(partitions=2)
    seen = []
    for batch in range(3):
        for i in range(8):
            fake.run(f"wf-{batch}-{i}", activities=2, retries=i % 2)
        fake.start(f"open-{batch}")  # runs that close in a later batch
        fake.schedule(f"open-{batch}", "wait")
        if batch:
            fake.close(f"open-{batch - 1}", "cancelled")
        seen += _to_warm(warm_dir, fake)
        if batch < 2:  # the last batch stays warm only
            archive_batch(archive, read_segments(list_segments(warm_dir)))
    expected = expected_counts(seen)

    counts = _counts(archive, warm_dir)
    cold_only = _counts(archive, None)

    assert {k: (expected[k], expected[k]) for k in COUNTS} == counts
    assert counts["history"][0] > cold_only["history"][0]
    assert counts["workflows"][0] > cold_only["workflows"][0]

    archive_batch(archive, read_segments(list_segments(warm_dir)))
    delete_segments(archived_segments(list_segments(warm_dir), resume_offsets(archive)))

    assert [] == list_segments(warm_dir)
    assert counts == _counts(archive, warm_dir) == _counts(archive, None)


def test_runs_closed_between_the_history_and_workflows_commits_still_show(
    archive: Archive,
) -> None:
    fake = FakePartitions(partitions=2)
    for i in range(6):
        fake.run(f"wf-{i}", activities=1)
    events = fake.take()
    rows = history_rows(events)
    commit(archive.history, rows, {0: fake.lsn[0], 1: fake.lsn[1]})  # then a crash

    assert {"history": (len(events),) * 2, "workflows": (6, 6), "activities": (6, 6)} == _counts(
        archive, None
    )


def test_workflows_join_activities(archive: Archive, warm_dir: Path) -> None:
    fake = FakePartitions(partitions=2)
    for i in range(12):
        fake.run(f"pay-{i}", activities=3, retries=i % 3, status=("completed", "failed")[i % 2])
    for i in range(4):
        fake.run(f"ship-{i}", activities=1, workflow_type="ship")
    archive_batch(archive, history_rows(fake.take()))

    with connect(archive, warm_dir) as q:
        rows = q.sql(
            """
            SELECT w.workflow_type, w.status, count(*) AS steps, sum(a.attempts) AS attempts,
                   max(w.retry_count) AS max_retries
            FROM workflows w JOIN activities a USING (workflow_id, run_id)
            GROUP BY ALL ORDER BY ALL
            """
        ).fetchall()
        one = q.sql(
            "SELECT activity, attempts FROM activities WHERE workflow_id = ? ORDER BY seq",
            params=["pay-2"],
        ).fetchall()

    # pay-i: 3 steps, the first tried 1 + i % 3 times; i even completed, odd failed
    assert [
        ("order", "completed", 18, 18 + 6, 2),
        ("order", "failed", 18, 18 + 6, 2),
        ("ship", "completed", 4, 4, 0),
    ] == rows
    assert [("step0", 3), ("step1", 1), ("step2", 1)] == one


def test_refresh_sees_new_commits(archive: Archive) -> None:
    fake = FakePartitions(partitions=1)
    fake.run("a")
    archive_batch(archive, history_rows(fake.take()))
    with connect(archive) as q:
        fake.run("b")
        archive_batch(archive, history_rows(fake.take()))
        before = q.sql("SELECT count(*) FROM workflows").fetchall()
        q.refresh()
        after = q.sql("SELECT count(*) FROM workflows").fetchall()

    assert ([(1,)], [(2,)]) == (before, after)


def test_reader_sessions_share_what_they_read_and_each_sees_the_archive_now(
    tmp_path: Path,
) -> None:
    root, warm_dir = tmp_path / "o'brien archive", tmp_path / "warm"  # a quote in the path
    archive = open_archive(root)
    reader = ArchiveReader(root, warm_dir)
    fake = FakePartitions(partitions=2)
    seen: list[object] = []
    for batch in range(3):
        for i in range(4):
            fake.run(f"wf-{batch}-{i}", activities=1)
        seen += _to_warm(warm_dir, fake)
        if batch == 1:  # the first two batches go cold, the last stays warm
            archive_batch(archive, read_segments(list_segments(warm_dir)))
            delete_segments(archived_segments(list_segments(warm_dir), resume_offsets(archive)))

    with reader.open([]) as first, reader.open([]) as second:
        counts = [
            {name: s.sql(sql).fetchall()[0] for name, sql in COUNTS.items()}
            for s in (first, second)
        ]
        archive_batch(archive, read_segments(list_segments(warm_dir)))
        delete_segments(archived_segments(list_segments(warm_dir), resume_offsets(archive)))
        first.refresh()
        after = {name: first.sql(sql).fetchall()[0] for name, sql in COUNTS.items()}
    with reader.open([]) as third:
        later = {name: third.sql(sql).fetchall()[0] for name, sql in COUNTS.items()}

    expected = expected_counts(seen)  # type: ignore[arg-type]  # reason: events
    assert {k: (expected[k], expected[k]) for k in COUNTS} == counts[0] == counts[1]
    assert counts[0] == after == later == _counts(archive, None)
    assert [] == list_segments(warm_dir)
