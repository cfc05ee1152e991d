"""Cold tier: exactly-once Iceberg commits carrying per-partition offsets; expire and compact.

Exactly-once rests on one rule: a table's rows and its offsets change in one Iceberg
transaction. Each table records, in its properties, the highest LSN of each partition it has
taken in (``duraflow.offset.<partition>``). :func:`commit` re-reads them, drops every row at or
below them, and appends the rest together with the new offsets; a batch delivered twice, or
retried after a crash at any point, adds nothing the second time. A crash leaves at most an
orphan Parquet file that no snapshot references.

``workflows`` and ``activities`` rows are derived from history rows with DuckDB
(``archive_schema.WORKFLOWS_SQL``). A run's earlier events may sit in earlier batches, so runs
whose events are not all in the batch are looked up in the archived history. Each table has
offsets of its own; :func:`archive_batch` commits ``history`` first, so a crash between the
three commits is repaired by archiving the same batch again.

Note:
    Keep one committer per archive. Concurrent commits fail (``commit.retry.num-retries`` is
    0) and :func:`commit` starts over from the offsets, which is correct but slow.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo, In
from pyiceberg.table import Table

from duraflow.errors import DuraflowError
from duraflow.storage.archive_schema import (
    ACTIVITIES,
    ACTIVITIES_SQL,
    CLOSERS_SQL,
    HISTORY,
    TABLES,
    WORKFLOWS,
    WORKFLOWS_SQL,
    TableSpec,
    drop_duplicates,
    max_lsns,
)
from duraflow.storage.catalog import Archive

OFFSET_PREFIX = "duraflow.offset."
COMMIT_ATTEMPTS = 5
LOOKUP_FILTER_MAX_IDS = 1_000
"""Above this many workflow IDs, looking up archived runs skips pyiceberg's file pruning by ID
(evaluating a huge IN list per file costs more than reading the files' ID columns)."""
_CONTEXT_COLUMNS = (
    "workflow_id, run_id, workflow_type, event_id, event_type, partition, lsn, "
    "event_time, event_date, data"
)


class ArchiveStateError(DuraflowError):
    """The archive holds something its readers cannot handle (delete files, for one)."""


@dataclass(frozen=True)
class ArchiveResult:
    """What :func:`archive_batch` appended to each table, and the offsets it recorded."""

    history_rows: int
    workflow_rows: int
    activity_rows: int
    offsets: dict[int, int]


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


# -- offsets and commits -----------------------------------------------------------------------


def committed_offsets(table: Table, *, refresh: bool = True) -> dict[int, int]:
    """The highest LSN of each partition that ``table`` holds (partitions never seen: absent)."""
    if refresh:
        table.refresh()
    return {
        int(key.removeprefix(OFFSET_PREFIX)): int(value)
        for key, value in table.properties.items()
        if key.startswith(OFFSET_PREFIX)
    }


def resume_offsets(archive: Archive) -> dict[int, int]:
    """Where a consumer resumes each partition: the lowest offset over the three tables
    (0 for a partition one of them has not seen)."""
    per_table = [committed_offsets(t) for t in archive.tables.values()]
    partitions = set().union(*per_table)
    return {p: min(offsets.get(p, 0) for offsets in per_table) for p in sorted(partitions)}


def commit(table: Table, rows: pa.Table, offsets: Mapping[int, int]) -> int:
    """Append ``rows`` and advance ``table``'s offsets to ``offsets``, in one transaction.

    Rows at or below the table's committed offset of their partition are dropped first, and
    so are duplicate keys, so committing the same rows again appends nothing. Offsets only
    move forward.

    Args:
        table: one of the archive's tables.
        rows: rows of that table (``partition`` and ``lsn`` say where each came from).
        offsets: the highest LSN of each partition these rows cover; it may be above the
            rows' own LSNs (a range with nothing for this table still moves it forward).

    Returns:
        How many rows were appended.

    Raises:
        ValueError: a row's LSN is above ``offsets`` for its partition (it would be archived
            again later).
        CommitFailedException: other committers kept winning for ``COMMIT_ATTEMPTS`` tries.
    """
    spec = table_spec(table)
    rows = rows.select(spec.arrow.names).cast(spec.arrow)
    _check_covered(rows, offsets)
    rows = drop_duplicates(rows, spec.key)
    for attempt in range(COMMIT_ATTEMPTS):
        done = committed_offsets(table)
        fresh = rows_after(rows, done)
        moved = {p: int(o) for p, o in offsets.items() if int(o) > done.get(p, -1)}
        if fresh.num_rows == 0 and not moved:
            return 0
        properties = {f"{OFFSET_PREFIX}{p}": str(o) for p, o in moved.items()}
        try:
            with table.transaction() as tx:
                if fresh.num_rows:
                    tx.append(fresh, snapshot_properties=properties)
                tx.set_properties(properties)
        except CommitFailedException:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            continue
        return fresh.num_rows
    raise AssertionError("unreachable")  # pragma: no cover


def rows_after(rows: pa.Table, offsets: Mapping[int, int]) -> pa.Table:
    """The rows whose LSN is above ``offsets`` of their partition (all rows of others)."""
    if not offsets or rows.num_rows == 0:
        return rows
    partition, lsn = rows["partition"], rows["lsn"]
    keep = None
    for p in pc.unique(partition).to_pylist():
        mine = pc.equal(partition, p)
        if p in offsets:
            mine = pc.and_(mine, pc.greater(lsn, offsets[p]))
        keep = mine if keep is None else pc.or_(keep, mine)
    return rows.filter(keep)


def table_spec(table: Table) -> TableSpec:
    """The archive's description of ``table`` (found by its name)."""
    name = table.name()[-1]
    if name not in TABLES:
        raise ValueError(f"{'.'.join(table.name())} is not an archive table")
    return TABLES[name]


def _check_covered(rows: pa.Table, offsets: Mapping[int, int]) -> None:
    for partition, top in max_lsns(rows).items():
        if top > offsets.get(partition, -1):
            raise ValueError(
                f"rows of partition {partition} go up to LSN {top}, "
                f"above the offset given for it ({offsets.get(partition)})"
            )


# -- one batch into the three tables -----------------------------------------------------------


def archive_batch(
    archive: Archive, rows: pa.Table, offsets: Mapping[int, int] | None = None
) -> ArchiveResult:
    """Archive history rows: into ``history``, and the runs and activities they close into
    ``workflows`` and ``activities``; each table exactly once.

    Args:
        archive: the archive.
        rows: history rows (``archive_schema.history_rows`` or read from warm segments); may
            repeat rows archived before.
        offsets: the highest LSN of each partition the batch covers; default: the highest in
            ``rows``.
    """
    rows = rows.select(HISTORY.arrow.names).cast(HISTORY.arrow)
    offsets = {int(p): int(o) for p, o in (offsets or max_lsns(rows)).items()}
    history_rows = commit(archive.history, rows, offsets)
    workflows_done = committed_offsets(archive.workflows)
    activities_done = committed_offsets(archive.activities)
    if all(
        min(workflows_done.get(p, -1), activities_done.get(p, -1)) >= o for p, o in offsets.items()
    ):
        return ArchiveResult(history_rows, 0, 0, offsets)
    with duckdb.connect() as con:
        con.register("_batch", rows)
        workflows, activities = derive(con, "_batch", archive, workflows_done, activities_done)
    return ArchiveResult(
        history_rows,
        commit(archive.workflows, workflows, offsets),
        commit(archive.activities, activities, offsets),
        offsets,
    )


def derive(
    con: duckdb.DuckDBPyConnection,
    known: str,
    archive: Archive,
    workflows_done: Mapping[int, int],
    activities_done: Mapping[int, int],
) -> tuple[pa.Table, pa.Table]:
    """``workflows`` and ``activities`` rows for what closes in ``known`` above the offsets.

    Args:
        con: a DuckDB connection where ``known`` (a table or view of history rows) exists.
        known: the rows to look for closing events in; events of those runs that are not in
            it are looked up in the archived history.
        archive: the archive (its history table is read for the look-ups).
        workflows_done, activities_done: the offsets of the two tables; closing events at
            or below them already have their rows.
    """
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW _source_workflows AS "
        f"SELECT * FROM {known} WHERE {_after_sql(workflows_done)}"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW _source_activities AS "
        f"SELECT * FROM {known} WHERE {_after_sql(activities_done)}"
    )
    context = _context(con, known, archive)
    workflows = con.sql(WORKFLOWS_SQL.format(source="_source_workflows", context=context))
    activities = con.sql(ACTIVITIES_SQL.format(source="_source_activities", context=context))
    return _as(WORKFLOWS, workflows), _as(ACTIVITIES, activities)


def _context(con: duckdb.DuckDBPyConnection, known: str, archive: Archive) -> str:
    """``known``, plus the archived events of runs whose events up to their last closing
    event are not all in it. Returns a relation name or a parenthesised query."""
    incomplete = con.sql(
        f"""
        WITH closers AS (
            SELECT workflow_id, run_id, max(upto) AS upto FROM (
                {CLOSERS_SQL.format(source="_source_workflows")}
                UNION ALL
                {CLOSERS_SQL.format(source="_source_activities")}
            ) GROUP BY workflow_id, run_id
        ),
        have AS (
            SELECT k.workflow_id, k.run_id, count(DISTINCT k.event_id) AS n
            FROM {known} k JOIN closers c USING (workflow_id, run_id)
            WHERE k.event_id BETWEEN 1 AND c.upto
            GROUP BY k.workflow_id, k.run_id
        )
        SELECT c.workflow_id, c.run_id
        FROM closers c LEFT JOIN have h USING (workflow_id, run_id)
        WHERE coalesce(h.n, 0) < c.upto
        """
    )
    runs = _arrow(incomplete)
    if runs.num_rows == 0:
        return known
    ids = set(runs["workflow_id"].to_pylist())
    row_filter: BooleanExpression = (
        In("workflow_id", ids) if len(ids) <= LOOKUP_FILTER_MAX_IDS else AlwaysTrue()
    )
    register_files(
        con, "_archived_history", archive, HISTORY, data_files(archive.history, row_filter)
    )
    con.register("_lookup_runs", runs)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _archived AS
        SELECT {_CONTEXT_COLUMNS}
        FROM _archived_history SEMI JOIN _lookup_runs USING (workflow_id, run_id)
        WHERE workflow_id IN (SELECT workflow_id FROM _lookup_runs)
        """
    )
    return f"(SELECT {_CONTEXT_COLUMNS} FROM {known} UNION ALL SELECT * FROM _archived)"


def _after_sql(offsets: Mapping[int, int]) -> str:
    """A SQL condition: the row's LSN is above ``offsets`` of its partition."""
    if not offsets:
        return "TRUE"
    cases = " ".join(f"WHEN {int(p)} THEN {int(o)}" for p, o in sorted(offsets.items()))
    return f"lsn > CASE partition {cases} ELSE -1 END"


def _as(spec: TableSpec, relation: duckdb.DuckDBPyRelation) -> pa.Table:
    return _arrow(relation).select(spec.arrow.names).cast(spec.arrow)


def _arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    # duckdb 1.4 renamed fetch_arrow_table (now deprecated) to to_arrow_table
    fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    table: pa.Table = fetch()
    return table


# -- reading the cold tier ------------------------------------------------------------------


def data_files(table: Table, row_filter: BooleanExpression | None = None) -> list[str]:
    """The Parquet files of ``table``'s current snapshot (pruned by ``row_filter``).

    Raises:
        ArchiveStateError: the table has delete files; reading its Parquet files alone would
            show deleted rows. (pyiceberg writes none; another writer might.)
    """
    paths = []
    for task in table.scan(row_filter=row_filter or AlwaysTrue()).plan_files():
        if task.delete_files:
            raise ArchiveStateError(
                f"table {'.'.join(table.name())} has delete files (for {task.file.file_path}); "
                "duraflow reads plain Parquet and cannot apply them"
            )
        paths.append(task.file.file_path)
    return paths


def register_files(
    con: duckdb.DuckDBPyConnection, name: str, archive: Archive, spec: TableSpec, paths: list[str]
) -> None:
    """Create view ``name`` over Parquet ``paths`` with ``spec``'s columns (even with no file).

    Local files go through DuckDB's ``read_parquet``; S3 files through a pyarrow dataset
    (DuckDB's own S3 support needs the httpfs extension, which may not be installable).
    """
    empty, files = f"_{name}_empty", f"_{name}_files"
    con.register(empty, spec.empty())
    if not paths:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {empty}")
        return
    filesystem = archive.filesystem()
    if filesystem is None:
        local = [p.removeprefix("file://") for p in paths]
        con.read_parquet(local, union_by_name=True).create_view(files, replace=True)
    else:
        keys = [p.removeprefix("s3://") for p in paths]
        dataset = ds.dataset(keys, schema=spec.arrow, format="parquet", filesystem=filesystem)
        con.register(files, dataset)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {name} AS "
        f"SELECT * FROM {empty} UNION ALL BY NAME SELECT * FROM {files}"
    )


# -- maintenance -------------------------------------------------------------------------------


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
    live_before = _live_files(table, before)
    table.maintenance.expire_snapshots().older_than(cutoff).commit()
    table.refresh()
    after = table.metadata.snapshots
    live_after = _live_files(table, after)
    gone = [live_before[i] - live_after[i] for i in range(3)]
    for paths in gone:
        for path in paths:
            table.io.delete(path)
    return ExpireResult(len(before) - len(after), len(gone[0]), len(gone[1]) + len(gone[2]))


def _live_files(table: Table, snapshots: list[Any]) -> tuple[set[str], set[str], set[str]]:
    """(data files, manifests, manifest lists) that ``snapshots`` read."""
    data: set[str] = set()
    manifests: set[str] = set()
    lists: set[str] = set()
    for snapshot in snapshots:
        lists.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in manifests:
                continue
            manifests.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                data.add(entry.data_file.file_path)
    return data, manifests, lists


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
