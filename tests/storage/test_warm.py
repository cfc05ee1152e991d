"""Warm tier: Parquet segments per (partition, LSN range), written atomically."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from duraflow.storage.archive_schema import history_rows
from duraflow.storage.warm import (
    Segment,
    archived_segments,
    delete_segments,
    list_segments,
    read_segments,
    write_segment,
)
from tests.storage.fakes import FakePartitions


def _rows_by_partition(fake: FakePartitions):  # type: ignore[no-untyped-def]  # reason: test helper
    rows = history_rows(fake.take())
    return {p: rows.filter(pc.equal(rows["partition"], p)) for p in range(fake.partitions)}


def test_a_segment_is_named_by_partition_and_lsn_range_never_by_workflow_id(
    warm_dir: Path,
) -> None:
    fake = FakePartitions(partitions=1)
    fake.run("secret-customer-42/../x")
    rows = _rows_by_partition(fake)[0]

    segment = write_segment(warm_dir, rows)

    assert (0, 1, rows.num_rows) == (segment.partition, segment.first_lsn, segment.last_lsn)
    assert f"p00000-{1:020d}-{rows.num_rows:020d}.parquet" == segment.path.name
    assert [segment.path.name] == [p.name for p in warm_dir.iterdir()]  # no temp file left
    assert rows.to_pylist() == pq.read_table(segment.path).to_pylist()


def test_segments_list_in_order_and_skip_temporary_files_of_a_crashed_write(
    warm_dir: Path,
) -> None:
    fake = FakePartitions(partitions=2)
    for i in range(6):
        fake.run(f"wf-{i}")
    first = _rows_by_partition(fake)
    for i in range(6, 9):
        fake.run(f"wf-{i}")
    second = _rows_by_partition(fake)
    written = [write_segment(warm_dir, r) for r in (*second.values(), *first.values())]
    (warm_dir / ".tmp-0123abcd.parquet").write_bytes(b"PAR1 half a file")

    listed = list_segments(warm_dir)

    assert sorted(written) == listed
    assert [s for s in listed if s.partition == 1] == list_segments(warm_dir, partition=1)
    total = sum(r.num_rows for r in (*first.values(), *second.values()))
    assert total == read_segments(listed).num_rows


def test_overlapping_segments_read_each_lsn_once(warm_dir: Path) -> None:
    fake = FakePartitions(partitions=1)
    for i in range(4):
        fake.run(f"wf-{i}")
    rows = _rows_by_partition(fake)[0]
    write_segment(warm_dir, rows.slice(0, 10))
    write_segment(warm_dir, rows.slice(5, 10))  # re-delivered from LSN 6
    write_segment(warm_dir, rows.slice(0, 10))  # the same range again replaces the file

    segments = list_segments(warm_dir)
    read = read_segments(segments)

    assert 2 == len(segments)
    assert list(range(1, 16)) == sorted(read["lsn"].to_pylist())


def test_segments_at_or_below_the_offsets_are_the_ones_to_delete(warm_dir: Path) -> None:
    fake = FakePartitions(partitions=2)
    for i in range(8):
        fake.run(f"wf-{i}")
    for rows in _rows_by_partition(fake).values():
        write_segment(warm_dir, rows)
    segments = list_segments(warm_dir)
    offsets = {segments[0].partition: segments[0].last_lsn, segments[1].partition: 1}

    done = archived_segments(segments, offsets)

    assert [segments[0]] == done
    assert 1 == delete_segments(done)
    assert 0 == delete_segments(done)
    assert segments[1:] == list_segments(warm_dir)
    gone = Segment(7, 1, 2, warm_dir / "p00007-gone.parquet")
    assert 0 == read_segments([gone], missing_ok=True).num_rows
    with pytest.raises(FileNotFoundError):
        read_segments([gone])


def test_a_segment_holds_rows_of_one_partition(warm_dir: Path) -> None:
    fake = FakePartitions(partitions=2)
    for i in range(6):
        fake.run(f"wf-{i}")

    with pytest.raises(ValueError, match="one partition"):
        write_segment(warm_dir, history_rows(fake.take()))
    with pytest.raises(ValueError, match="at least one row"):
        write_segment(warm_dir, history_rows([]))
