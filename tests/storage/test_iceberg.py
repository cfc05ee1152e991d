"""Cold tier against a real SqlCatalog: exactly-once commits, derived tables, expire, compact."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from pyiceberg.exceptions import CommitFailedException

from duraflow.storage.archive_schema import history_rows
from duraflow.storage.catalog import Archive, open_archive
from duraflow.storage.iceberg import (
    archive_batch,
    commit,
    committed_offsets,
    data_files,
    resume_offsets,
)
from duraflow.storage.iceberg_upkeep import compact, days, expire, expire_all_but
from duraflow.storage.query import connect
from tests.storage.fakes import FakePartitions, expected_counts


def _count(archive: Archive, table: str) -> tuple[int, int]:
    key = {"history": "partition, lsn", "workflows": "workflow_id, run_id"}.get(
        table, "workflow_id, run_id, seq"
    )
    with connect(archive) as q:
        (row,) = q.sql(f"SELECT count(*), count(DISTINCT ({key})) FROM {table}").fetchall()
    return row


def test_committing_the_same_rows_twice_appends_them_once(archive: Archive) -> None:
    fake = FakePartitions(partitions=2)
    for i in range(10):
        fake.run(f"wf-{i}")
    rows = history_rows(fake.take())
    offsets = {0: fake.lsn[0], 1: fake.lsn[1]}

    first = commit(archive.history, rows, offsets)
    second = commit(archive.history, rows, offsets)
    reopened = open_archive(Path(archive.warehouse.removeprefix("file://")).parent)

    assert (rows.num_rows, 0) == (first, second)
    assert offsets == committed_offsets(reopened.history)
    assert (rows.num_rows, rows.num_rows) == _count(archive, "history")
    assert 1 == len(archive.history.metadata.snapshots)


def test_offsets_only_move_forward_and_must_cover_the_rows(archive: Archive) -> None:
    fake = FakePartitions(partitions=1)
    fake.run("a")
    rows = history_rows(fake.take())
    top = fake.lsn[0]

    with pytest.raises(ValueError, match="above the offset"):
        commit(archive.history, rows, {0: top - 1})
    commit(archive.history, rows, {0: top + 10})  # a range with nothing more for this table
    commit(archive.history, rows.slice(0, 0), {0: 3})

    assert {0: top + 10} == committed_offsets(archive.history)


def test_a_run_spread_over_batches_gets_one_workflows_row_and_its_activities(
    archive: Archive,
) -> None:
    fake = FakePartitions(partitions=2)
    fake.start("long")
    first = fake.schedule("long", "reserve")
    fake.retry("long", first, 1, "reserve")
    fake.run("short", activities=1)
    archive_batch(archive, history_rows(fake.take()))
    fake.advance(60)
    fake.retry("long", first, 2, "reserve")
    fake.resolve("long", first, "completed", attempt=3, activity="reserve")
    fake.activity("long", "charge", outcome="failed")
    fake.schedule("long", "ship")  # still open when the run fails
    fake.close("long", "failed")
    result = archive_batch(archive, history_rows(fake.take()))

    with connect(archive) as q:
        run = q.sql(
            "SELECT status, activity_count, retry_count, error_type, error_message, "
            "duration_ms >= 60000, start_time < close_time FROM workflows "
            "WHERE workflow_id = 'long'"
        ).fetchall()
        steps = q.sql(
            "SELECT seq, activity, attempts, outcome, error_type, scheduled_at IS NOT NULL "
            "FROM activities WHERE workflow_id = 'long' ORDER BY seq"
        ).fetchall()

    assert (1, 3) == (result.workflow_rows, result.activity_rows)
    assert [("failed", 3, 2, "KeyError", "'sku'", True, True)] == run
    assert [
        (1, "reserve", 3, "completed", None, True),
        (2, "charge", 1, "failed", "ValueError", True),
        (3, "ship", 1, "cancelled", "CancelledError", True),
    ] == steps


def test_every_closing_status_is_summarised(archive: Archive) -> None:
    fake = FakePartitions(partitions=2)
    for status in ("completed", "failed", "cancelled", "terminated"):
        fake.run(f"wf-{status}", activities=1, status=status)
    archive_batch(archive, history_rows(fake.take()))

    with connect(archive) as q:
        rows = q.sql(
            "SELECT status, error_type, error_message FROM workflows ORDER BY status"
        ).fetchall()

    assert [
        ("cancelled", "CancelledError", "user asked"),
        ("completed", None, None),
        ("failed", "KeyError", "'sku'"),
        ("terminated", "Terminated", "terminated"),
    ] == rows


def test_archiving_a_batch_again_after_each_table_adds_nothing(archive: Archive) -> None:
    fake = FakePartitions(partitions=3)
    for i in range(30):
        fake.run(f"wf-{i}", activities=2, retries=i % 2)
    events = fake.take()
    rows = history_rows(events)
    expected = expected_counts(events)

    # a crash after the history commit: the derived tables lag until the batch comes again
    commit(archive.history, rows, {p: fake.lsn[p] for p in range(3)})
    archive_batch(archive, rows)
    archive_batch(archive, rows)

    for table in ("history", "workflows", "activities"):
        assert (expected[table], expected[table]) == _count(archive, table)
    assert {p: fake.lsn[p] for p in range(3)} == resume_offsets(archive)


def test_compact_and_expire_keep_the_rows_and_reduce_the_files(archive: Archive) -> None:
    fake = FakePartitions(partitions=2, start=dt.datetime(2026, 3, 1, 20, tzinfo=dt.timezone.utc))
    for batch in range(8):
        for i in range(5):
            fake.run(f"wf-{batch}-{i}", activities=2)
        fake.advance(3600)  # 8 batches over two days
        archive_batch(archive, history_rows(fake.take()))
    table = archive.history
    with connect(archive) as q:
        before_rows = q.sql(
            "SELECT * EXCLUDE (raw) FROM history ORDER BY partition, lsn"
        ).fetchall()
    files_before = len(data_files(table))
    on_disk_before = len(list(Path(table.location().removeprefix("file://")).rglob("*.parquet")))
    offsets = committed_offsets(table)

    results = [compact(table, day) for day in days(table)]
    expired = expire(table, time.time() + 1)

    with connect(archive) as q:
        after_rows = q.sql("SELECT * EXCLUDE (raw) FROM history ORDER BY partition, lsn").fetchall()
    on_disk_after = len(list(Path(table.location().removeprefix("file://")).rglob("*.parquet")))
    assert [dt.date(2026, 3, 1), dt.date(2026, 3, 2)] == [r.day for r in results]
    assert files_before == sum(r.files_before for r in results) > 2
    assert [1, 1] == [r.files_after for r in results]
    assert 2 == len(data_files(table))
    assert before_rows == after_rows
    assert on_disk_after == 2 < on_disk_before
    assert expired.snapshots_expired > 0 and expired.data_files_deleted == files_before
    assert 1 == len(table.metadata.snapshots)
    assert offsets == committed_offsets(table)
    assert all(not task.delete_files for task in table.scan().plan_files())
    for path in data_files(table):  # each day is one file, sorted for point look-ups
        day = _read(path)
        columns = [day[c].to_pylist() for c in ("workflow_id", "run_id", "event_id")]
        keys = list(zip(*columns, strict=True))
        assert sorted(keys) == keys
    assert [1, 1] == [compact(table, day).files_after for day in days(table)]  # idempotent


def test_compacting_derived_tables_keeps_their_rows(archive: Archive) -> None:
    fake = FakePartitions(partitions=2)
    for batch in range(4):
        for i in range(5):
            fake.run(f"wf-{batch}-{i}", activities=2)
        archive_batch(archive, history_rows(fake.take()))

    for table in (archive.workflows, archive.activities):
        (day,) = days(table)
        result = compact(table, day)
        assert (4, 1) == (result.files_before, result.files_after)
    assert (20, 20) == _count(archive, "workflows")
    assert (40, 40) == _count(archive, "activities")


def _read(path: str):  # type: ignore[no-untyped-def]  # reason: test helper
    import pyarrow.parquet as pq

    return pq.read_table(path.removeprefix("file://"))


def test_rows_of_a_day_are_found_through_the_date_partition(archive: Archive) -> None:
    fake = FakePartitions(partitions=1, start=dt.datetime(2026, 3, 1, 23, tzinfo=dt.timezone.utc))
    fake.run("a")
    fake.advance(7200)
    fake.run("b")
    archive_batch(archive, history_rows(fake.take()))

    from pyiceberg.expressions import EqualTo

    march_2 = archive.history.scan(row_filter=EqualTo("event_date", "2026-03-02")).to_arrow()

    assert {"b"} == set(pc.unique(march_2["workflow_id"]).to_pylist())
    assert 2 == len(data_files(archive.history))


def test_a_commit_that_loses_a_race_starts_over_from_the_new_offsets(
    archive: Archive, tmp_path: Path
) -> None:
    fake = FakePartitions(partitions=1)
    for i in range(4):
        fake.run(f"wf-{i}")
    rows = history_rows(fake.take())
    other = open_archive(tmp_path / "archive")  # a second committer, its own catalog
    real_commit = archive.catalog.commit_table
    raced, failures = [], []

    def commit_table(table, requirements, updates):  # type: ignore[no-untyped-def]  # reason: pyiceberg hook
        if not raced:  # the other committer lands first, with an overlapping range
            raced.append(commit(other.history, rows, {0: fake.lsn[0]}))
        try:
            return real_commit(table, requirements, updates)
        except CommitFailedException as exc:
            failures.append(exc)
            raise

    archive.catalog.commit_table = commit_table  # type: ignore[method-assign]  # reason: race hook
    appended = commit(archive.history, rows.slice(0, 10), {0: 10})

    assert ([rows.num_rows], 0, 1) == (raced, appended, len(failures))
    assert (rows.num_rows, rows.num_rows) == _count(archive, "history")
    assert {0: fake.lsn[0]} == committed_offsets(archive.history)


def _derived(archive: Archive) -> dict[str, list[tuple[object, ...]]]:
    with connect(archive) as q:
        return {
            table: sorted(q.sql(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in ("workflows", "activities")
        }


def test_derived_rows_do_not_depend_on_how_history_is_cut_into_batches(
    tmp_path: Path,
) -> None:
    import random

    rng = random.Random(7)
    fake = FakePartitions(partitions=3)
    activities: dict[tuple[str, int], str] = {}
    open_runs: list[str] = []
    cuts: list[int] = []
    for n in range(1500):
        if not open_runs or rng.random() < 0.15:
            open_runs.append(f"wf-{n}")
            fake.start(open_runs[-1], workflow_type=rng.choice(["a", "b"]))
            continue
        wid = rng.choice(open_runs)
        run, roll = fake.runs[wid], rng.random()
        if roll < 0.35:
            seq = fake.schedule(wid, rng.choice(["charge", "ship"]))
            activities[(wid, seq)] = fake.events[-1].activity  # type: ignore[attr-defined]  # reason: ActivityScheduled
        elif roll < 0.6 and run.open_activities:
            seq = rng.choice(sorted(run.open_activities))
            if rng.random() < 0.3:
                fake.retry(wid, seq, rng.randint(1, 3), activities[(wid, seq)])
            else:
                outcome = rng.choice(["completed", "completed", "failed", "cancelled"])
                fake.resolve(wid, seq, outcome, rng.randint(1, 4), activities[(wid, seq)])
        elif roll < 0.8:
            fake.close(wid, rng.choice(["completed", "failed", "cancelled", "terminated"]))
            open_runs.remove(wid)
        else:
            fake.advance(rng.random() * 7200)
        if rng.random() < 0.02:
            cuts.append(len(fake.events))
    events = fake.take()
    whole, pieces = open_archive(tmp_path / "whole"), open_archive(tmp_path / "pieces")

    archive_batch(whole, history_rows(events))
    import duckdb

    with duckdb.connect() as con:  # one connection for every batch, as the consumer keeps one
        for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
            if end > start:
                archive_batch(pieces, history_rows(events[start:end]), connection=con)
        assert not con.sql("SELECT * FROM duckdb_tables() WHERE temporary").fetchall()

    assert len(cuts) > 10
    expected = expected_counts(events)
    found = _derived(pieces)
    assert _derived(whole) == found
    assert (expected["workflows"], expected["activities"]) == tuple(map(len, found.values()))


def test_data_files_answers_as_planning_does_after_commits_and_compaction(
    archive: Archive,
) -> None:
    fake = FakePartitions(partitions=2, start=dt.datetime(2026, 3, 1, 22, tzinfo=dt.timezone.utc))

    def planned() -> list[str]:
        return sorted(task.file.file_path for task in archive.history.scan().plan_files())

    for batch in range(6):
        fake.run(f"wf-{batch}", activities=1)
        fake.advance(1800)
        archive_batch(archive, history_rows(fake.take()))
        assert planned() == sorted(data_files(archive.history))
    for day in days(archive.history):
        compact(archive.history, day)
    assert planned() == sorted(data_files(archive.history))
    assert 2 == len(data_files(archive.history))


def test_expire_all_but_keeps_the_newest_snapshots_and_every_row(archive: Archive) -> None:
    fake = FakePartitions(partitions=2)
    for batch in range(10):
        fake.run(f"wf-{batch}", activities=1)
        archive_batch(archive, history_rows(fake.take()))
    table = archive.history
    folder = Path(table.location().removeprefix("file://"))
    by_age = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms)
    newest = {s.snapshot_id for s in by_age[-3:]}
    lists_before = set(folder.rglob("snap-*.avro"))

    assert expire_all_but(table, keep=3, min_age_s=3600) is None  # all too young
    assert expire_all_but(table, keep=8, min_age_s=0) is None  # only 2 could go: not yet
    result = expire_all_but(table, keep=3, min_age_s=0)

    assert result is not None and (7, 0) == (result.snapshots_expired, result.data_files_deleted)
    assert newest == {s.snapshot_id for s in table.metadata.snapshots}
    assert 10 == len(data_files(table)) == len(list(folder.rglob("*.parquet")))
    assert len(lists_before) - 7 == len(set(folder.rglob("snap-*.avro")))
    assert (10, 10) == _count(archive, "workflows") and _count(archive, "history")[0] > 10
