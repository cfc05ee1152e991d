"""Upkeep of the Iceberg tables: expire old snapshots (and the files only they read) and
compact a day's files into one. The commits themselves are ``storage/iceberg.py``."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

from duraflow.storage.iceberg import data_files, manifests_of, table_spec


@dataclass(frozen=True)
class ExpireResult:
    """Snapshots expired, and files deleted because no kept snapshot referenced them."""

    snapshots_expired: int
    data_files_deleted: int
    metadata_files_deleted: int


@dataclass(frozen=True)
class CompactResult:
    """One day of one table before and after :func:`compact`."""

    day: dt.date
    files_before: int
    files_after: int
    rows: int


def expire(table: Table, older_than: dt.datetime | float) -> ExpireResult:
    """Expire snapshots older than ``older_than`` and delete the files only they referenced.

    The current snapshot is always kept, and so are the table's offsets (they are table
    properties, not snapshot summaries). Files are found from the snapshots' manifests, never
    by listing folders, so a file another writer is committing right now is never touched.

    Args:
        table: an archive table.
        older_than: a datetime (naive means UTC) or seconds since the epoch.
    """
    cutoff = _utc(older_than)
    table.refresh()
    before = table.metadata.snapshots
    if not any(s.timestamp_ms < cutoff.timestamp() * 1000 for s in before):
        return ExpireResult(0, 0, 0)
    # Data files leave a table only through a snapshot that is not an append (compact's
    # overwrite). While every snapshot is an append, the current one reads every data file
    # the others read, so only manifests and manifest lists can lose their last reader, and
    # the manifests' entries need not be read at all.
    with_data = any(s.summary is None or s.summary.operation != Operation.APPEND for s in before)
    read: dict[str, list[str]] = {}
    files = {s.snapshot_id: _files_of(table, s, with_data, read) for s in before}
    table.maintenance.expire_snapshots().older_than(cutoff).commit()
    table.refresh()
    after = table.metadata.snapshots
    kept = [files.get(s.snapshot_id) or _files_of(table, s, with_data, read) for s in after]
    gone = [
        set().union(*(f[i] for f in files.values())) - set().union(*(f[i] for f in kept))
        for i in range(3)
    ]
    for paths in gone:
        for path in paths:
            table.io.delete(path)
    return ExpireResult(len(before) - len(after), len(gone[0]), len(gone[1]) + len(gone[2]))


def _files_of(
    table: Table, snapshot: Any, with_data: bool, read: dict[str, list[str]]
) -> tuple[set[str], set[str], set[str]]:
    """(data files, manifests, manifest list) that ``snapshot`` reads (no data files unless
    ``with_data``); ``read`` keeps each manifest's data files for the next snapshot."""
    data: set[str] = set()
    if with_data:
        for manifest in snapshot.manifests(table.io):
            files = read.get(manifest.manifest_path)
            if files is None:
                entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
                files = read[manifest.manifest_path] = [e.data_file.file_path for e in entries]
            data.update(files)
    manifests = {path for path, _ in manifests_of(table, snapshot)}
    return data, manifests, {snapshot.manifest_list}


def expire_all_but(table: Table, keep: int, min_age_s: float) -> ExpireResult | None:
    """Expire all but the newest ``keep`` snapshots of ``table``, and none younger than
    ``min_age_s`` (a reader may be planning from it), when at least ``keep`` can go; else do
    nothing and return None. Uses the table's metadata as loaded (a committer's own tables
    are current)."""
    stamps = sorted((s.timestamp_ms for s in table.metadata.snapshots), reverse=True)
    if len(stamps) <= keep:
        return None
    cutoff_ms = min(stamps[keep - 1], (time.time() - min_age_s) * 1000)
    if sum(1 for t in stamps if t < cutoff_ms) < keep:
        return None
    return expire(table, cutoff_ms / 1000)


def compact(table: Table, day: dt.date) -> CompactResult:
    """Rewrite one day of ``table`` as one file sorted by the table's sort columns.

    The day's rows are read from the current snapshot and replace exactly the files they came
    from (identity partition: whole files, no delete files); a commit by someone else in
    between makes this fail rather than lose rows. The old files stay until :func:`expire`.

    Note:
        The whole day is held in memory while it is rewritten.
    """
    spec = table_spec(table)
    table.refresh()
    day_filter = EqualTo(spec.date_column, day.isoformat())
    before = data_files(table, day_filter)
    scan = table.scan(row_filter=day_filter)
    if len(before) <= 1:
        rows = sum(task.file.record_count for task in scan.plan_files())
        return CompactResult(day, len(before), len(before), rows)
    rows = scan.to_arrow().select(spec.arrow.names).cast(spec.arrow)
    rows = rows.sort_by([(column, "ascending") for column in spec.sort])
    with table.transaction() as tx:
        tx.overwrite(
            rows,
            overwrite_filter=day_filter,
            snapshot_properties={"duraflow.compacted": day.isoformat()},
        )
    return CompactResult(day, len(before), len(data_files(table, day_filter)), rows.num_rows)


def days(table: Table) -> list[dt.date]:
    """The days (values of the date partition) ``table`` has files for, oldest first."""
    found = {_date_of(task.file.partition[0]) for task in table.scan().plan_files()}
    return sorted(found)


def _date_of(value: Any) -> dt.date:
    """An Iceberg date partition value (a date, or days since the epoch) as a date."""
    if isinstance(value, dt.date):
        return value
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(value))


def _utc(moment: dt.datetime | float) -> dt.datetime:
    if isinstance(moment, dt.datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromtimestamp(float(moment), tz=dt.timezone.utc)
