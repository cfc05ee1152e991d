"""Warm tier: Parquet segments of history rows, one per (partition, LSN range), written atomically.

A segment is named by its partition and LSN range only (``p00003-00000000000000000101-
00000000000000000250.parquet``), never by a workflow ID. It is written to a temporary file in
the same folder, flushed, and renamed into place, so a reader (or a restart after a crash) sees
a whole segment or none. Writing the same range again replaces it with the same rows.
Segments of one partition may overlap after a re-delivery; readers drop duplicate LSNs.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from duraflow.storage.archive_schema import HISTORY, drop_duplicates

SEGMENT_SUFFIX = ".parquet"
_TEMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^p(\d{5})-(\d{20})-(\d{20})\.parquet$")


@dataclass(frozen=True, order=True)
class Segment:
    """One warm segment: the history rows of ``partition`` with LSNs in [first_lsn, last_lsn]."""

    partition: int
    first_lsn: int
    last_lsn: int
    path: Path


def segment_name(partition: int, first_lsn: int, last_lsn: int) -> str:
    """The file name of a segment (zero-padded, so names sort like the ranges)."""
    return f"p{partition:05d}-{first_lsn:020d}-{last_lsn:020d}{SEGMENT_SUFFIX}"


def write_segment(warm_dir: str | Path, rows: pa.Table) -> Segment:
    """Write history rows of one partition as one segment, atomically.

    Args:
        warm_dir: the warm tier's folder (created if missing).
        rows: ``history`` rows (``archive_schema.history_rows``), all of one partition.

    Raises:
        ValueError: ``rows`` is empty or holds more than one partition.
    """
    if rows.num_rows == 0:
        raise ValueError("a segment needs at least one row")
    rows = rows.select(HISTORY.arrow.names).cast(HISTORY.arrow)
    partitions = pc.unique(rows["partition"]).to_pylist()
    if len(partitions) != 1:
        raise ValueError(f"a segment holds one partition; these rows hold {sorted(partitions)}")
    bounds = pc.min_max(rows["lsn"]).as_py()
    folder = Path(warm_dir)
    folder.mkdir(parents=True, exist_ok=True)
    segment = Segment(
        partitions[0],
        bounds["min"],
        bounds["max"],
        folder / segment_name(partitions[0], bounds["min"], bounds["max"]),
    )
    temp = folder / f"{_TEMP_PREFIX}{uuid.uuid4().hex}{SEGMENT_SUFFIX}"
    try:
        with open(temp, "wb") as out:
            pq.write_table(rows.sort_by("lsn"), out, compression="zstd")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, segment.path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_dir(folder)
    return segment


def list_segments(warm_dir: str | Path, partition: int | None = None) -> list[Segment]:
    """The segments in ``warm_dir`` (of one partition, if given), by partition and LSN.

    Temporary files left by a crash mid-write are not segments and are not listed.
    """
    folder = Path(warm_dir)
    if not folder.is_dir():
        return []
    found = []
    for entry in os.scandir(folder):
        match = _NAME.match(entry.name)
        if match is None:
            continue
        part, first, last = (int(g) for g in match.groups())
        if partition is None or part == partition:
            found.append(Segment(part, first, last, Path(entry.path)))
    return sorted(found)


def read_segments(segments: Iterable[Segment], *, missing_ok: bool = False) -> pa.Table:
    """The history rows of ``segments``, one row per (partition, LSN) even where they overlap.

    Args:
        segments: from :func:`list_segments`.
        missing_ok: skip segments deleted since they were listed (a reader racing the
            archiver, which deletes a segment only after its rows are committed).
    """
    tables = []
    for segment in segments:
        try:
            tables.append(pq.read_table(segment.path, schema=HISTORY.arrow))
        except FileNotFoundError:
            if not missing_ok:
                raise
    if not tables:
        return HISTORY.empty()
    rows = pa.concat_tables(tables)
    return drop_duplicates(rows, ("partition", "lsn")) if len(tables) > 1 else rows


def delete_segments(segments: Iterable[Segment]) -> int:
    """Delete segments (already gone ones are skipped); returns how many were deleted."""
    deleted = 0
    folders = set()
    for segment in segments:
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
            deleted += 1
            folders.add(segment.path.parent)
    for folder in folders:
        _fsync_dir(folder)
    return deleted


def archived_segments(segments: Iterable[Segment], offsets: Mapping[int, int]) -> list[Segment]:
    """The segments whose every row is at or below its partition's offset (safe to delete)."""
    return [s for s in segments if s.last_lsn <= offsets.get(s.partition, -1)]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
