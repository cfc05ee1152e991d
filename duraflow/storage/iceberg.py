"""Cold tier: exactly-once Iceberg commits carrying per-partition offsets (expire and compact
are ``storage/iceberg_upkeep.py``).

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

import concurrent.futures
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, In
from pyiceberg.manifest import ManifestContent
from pyiceberg.table import Table

from duraflow.errors import DuraflowError
from duraflow.storage.archive_schema import (
    ACTIVITIES,
    ACTIVITIES_SQL,
    CLOSERS_SQL,
    FACTS_SQL,
    HISTORY,
    TABLES,
    WORKFLOWS,
    WORKFLOWS_SQL,
    TableSpec,
    drop_duplicates,
    max_lsns,
)
from duraflow.storage.catalog import OFFSET_PREFIX, Archive

COMMIT_ATTEMPTS = 5
LOOKUP_FILTER_MAX_IDS = 1_000
"""Above this many workflow IDs, looking up archived runs skips pyiceberg's file pruning by ID
(evaluating a huge IN list per file costs more than reading the files' ID columns)."""


class ArchiveStateError(DuraflowError):
    """The archive holds something its readers cannot handle (delete files, for one)."""


@dataclass(frozen=True)
class ArchiveResult:
    """What :func:`archive_batch` appended to each table, and the offsets it recorded."""

    history_rows: int
    workflow_rows: int
    activity_rows: int
    offsets: dict[int, int]


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


def commit(
    table: Table,
    rows: pa.Table,
    offsets: Mapping[int, int],
    *,
    done: Mapping[int, int] | None = None,
) -> int:
    """Append ``rows`` and advance ``table``'s offsets to ``offsets``, in one transaction.

    Rows at or below the table's committed offset of their partition are dropped first, and
    so are duplicate keys, so committing the same rows again appends nothing. Offsets only
    move forward.

    Args:
        table: one of the archive's tables.
        rows: rows of that table (``partition`` and ``lsn`` say where each came from).
        offsets: the highest LSN of each partition these rows cover; it may be above the
            rows' own LSNs (a range with nothing for this table still moves it forward).
        done: ``table``'s offsets, when the caller has just read them (``committed_offsets``):
            the first attempt then skips reading them again. An append on top of someone
            else's commit since fails (Iceberg checks the snapshot it appends to) and the next
            attempt re-reads them; offsets moved without rows are not checked, as they are
            not when read just before either (keep one committer per archive).

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
        if attempt or done is None:
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
    return rows if pc.all(keep).as_py() else rows.filter(keep)  # no copy when all are new


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
    archive: Archive,
    rows: pa.Table,
    offsets: Mapping[int, int] | None = None,
    *,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> ArchiveResult:
    """Archive history rows: into ``history``, and the runs and activities they close into
    ``workflows`` and ``activities``; each table exactly once.

    Args:
        archive: the archive.
        rows: history rows (``archive_schema.history_rows`` or read from warm segments); may
            repeat rows archived before.
        offsets: the highest LSN of each partition the batch covers; default: the highest in
            ``rows``.
        connection: a DuckDB connection to derive ``workflows`` and ``activities`` rows on
            (default: a new one; opening one costs some 20 ms, so a caller that archives
            often keeps one). Not to be used by anyone else meanwhile.
    """
    rows = rows.select(HISTORY.arrow.names).cast(HISTORY.arrow)
    offsets = {int(p): int(o) for p, o in (offsets or max_lsns(rows)).items()}
    workflows_done = committed_offsets(archive.workflows)
    activities_done = committed_offsets(archive.activities)
    if all(
        min(workflows_done.get(p, -1), activities_done.get(p, -1)) >= o for p, o in offsets.items()
    ):
        return ArchiveResult(commit(archive.history, rows, offsets), 0, 0, offsets)
    # Deriving (DuckDB, mostly without the GIL) goes on beside the history commit (pyiceberg,
    # mostly Python); the derived tables are committed only after history, as before.
    with concurrent.futures.ThreadPoolExecutor(1, "duraflow-derive") as pool:
        derived = pool.submit(
            _derive_batch, connection, rows, archive, workflows_done, activities_done
        )
        history_rows = commit(archive.history, rows, offsets)
        workflows, activities = derived.result()
    return ArchiveResult(
        history_rows,
        commit(archive.workflows, workflows, offsets, done=workflows_done),
        commit(archive.activities, activities, offsets, done=activities_done),
        offsets,
    )


def _derive_batch(
    connection: duckdb.DuckDBPyConnection | None,
    rows: pa.Table,
    archive: Archive,
    workflows_done: Mapping[int, int],
    activities_done: Mapping[int, int],
) -> tuple[pa.Table, pa.Table]:
    with contextlib.nullcontext(connection) if connection else duckdb.connect() as con:
        con.register("_batch", rows)
        try:
            return derive(
                con,
                "_batch",
                archive,
                workflows_done,
                activities_done,
                history=lambda: archive.catalog.load_table(archive.history.name()),
            )
        finally:
            forget(con, "_batch")


def forget(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    """Drop what :func:`derive` made on ``con``, and ``names`` registered by the caller (so a
    kept connection does not hold on to a batch's rows)."""
    for name in (*names, "_lookup_runs"):
        con.unregister(name)
    con.execute("DROP TABLE IF EXISTS _facts")


def derive(
    con: duckdb.DuckDBPyConnection,
    known: str,
    archive: Archive,
    workflows_done: Mapping[int, int],
    activities_done: Mapping[int, int],
    *,
    history: Callable[[], Table] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """``workflows`` and ``activities`` rows for what closes in ``known`` above the offsets.

    Args:
        con: a DuckDB connection where ``known`` (a table or view of history rows) exists.
            Leaves a temporary table ``_facts`` on it (:func:`forget` drops it).
        known: the rows to look for closing events in; events of those runs that are not in
            it are looked up in the archived history.
        archive: the archive (its history table is read for the look-ups).
        workflows_done, activities_done: the offsets of the two tables; closing events at
            or below them already have their rows.
        history: gives the ``history`` table to look up in (default ``archive.history``):
            a thread of its own needs a table object of its own (pyiceberg fills caches
            inside a table's metadata as it reads, under another thread's copy of it).
    """
    after_workflows, after_activities = _after_sql(workflows_done), _after_sql(activities_done)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _facts AS " + FACTS_SQL.format(rows=known, in_batch="TRUE")
    )
    lookup = history if history is not None else lambda: archive.history
    after = f"(({after_workflows}) OR ({after_activities}))"
    _add_archived(con, known, archive, lookup, after)
    workflows = con.sql(WORKFLOWS_SQL.format(facts="_facts", after=after_workflows))
    activities = con.sql(ACTIVITIES_SQL.format(facts="_facts", after=after_activities))
    return _as(WORKFLOWS, workflows), _as(ACTIVITIES, activities)


def _add_archived(
    con: duckdb.DuckDBPyConnection,
    known: str,
    archive: Archive,
    history: Callable[[], Table],
    after: str,
) -> None:
    """Add to ``_facts`` the archived events of the runs whose events up to their last
    closing event above the offsets (``after``) are not all in ``known``."""
    incomplete = con.sql(
        f"""
        WITH closers AS ({CLOSERS_SQL.format(facts="_facts", after=after)}),
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
        return
    ids = set(runs["workflow_id"].to_pylist())
    row_filter: BooleanExpression = (
        In("workflow_id", ids) if len(ids) <= LOOKUP_FILTER_MAX_IDS else AlwaysTrue()
    )
    register_files(con, "_archived_history", archive, HISTORY, data_files(history(), row_filter))
    con.register("_lookup_runs", runs)
    archived = (
        "(SELECT * FROM _archived_history SEMI JOIN _lookup_runs USING (workflow_id, run_id) "
        "WHERE workflow_id IN (SELECT workflow_id FROM _lookup_runs))"
    )
    con.execute("INSERT INTO _facts " + FACTS_SQL.format(rows=archived, in_batch="FALSE"))


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

    Without a filter the answer comes from the snapshot's manifests, each read once per
    process (manifest lists and manifests never change once written), so asking again after
    a commit reads only what the commit wrote.

    Raises:
        ArchiveStateError: the table has delete files; reading its Parquet files alone would
            show deleted rows. (pyiceberg writes none; another writer might.)
    """
    if row_filter is None or isinstance(row_filter, AlwaysTrue):
        return _all_data_files(table)
    paths = []
    for task in table.scan(row_filter=row_filter).plan_files():
        if task.delete_files:
            raise _has_deletes(table, task.file.file_path)
        paths.append(task.file.file_path)
    return paths


MANIFEST_CACHE_ENTRIES = 20_000
"""Manifest lists and manifests whose contents :func:`data_files` keeps (a few hundred bytes
each; the cache starts over when full)."""
_manifest_lists: dict[str, tuple[tuple[str, int], ...]] = {}  # list -> (manifest, content)
_manifest_files: dict[str, tuple[str, ...]] = {}  # data manifest -> its live data files


def manifests_of(table: Table, snapshot: Any) -> tuple[tuple[str, int], ...]:
    """(path, content) of each manifest ``snapshot`` reads, its list read once per process."""
    found = _manifest_lists.get(snapshot.manifest_list)
    if found is None:
        found = tuple((m.manifest_path, int(m.content)) for m in snapshot.manifests(table.io))
        _remember(_manifest_lists, snapshot.manifest_list, found)
    return found


def _all_data_files(table: Table) -> list[str]:
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    manifests = manifests_of(table, snapshot)
    for path, content in manifests:
        if content != ManifestContent.DATA:
            raise _has_deletes(table, path)
    paths: list[str] = []
    by_path = None
    for path, _ in manifests:
        files = _manifest_files.get(path)
        if files is None:
            if by_path is None:
                by_path = {m.manifest_path: m for m in snapshot.manifests(table.io)}
            entries = by_path[path].fetch_manifest_entry(table.io, discard_deleted=True)
            files = tuple(e.data_file.file_path for e in entries)
            _remember(_manifest_files, path, files)
        paths.extend(files)
    return paths


def _remember(cache: dict[str, Any], key: str, value: Any) -> None:
    if len(cache) >= MANIFEST_CACHE_ENTRIES:
        cache.clear()
    cache[key] = value


def _has_deletes(table: Table, where: str) -> ArchiveStateError:
    return ArchiveStateError(
        f"table {'.'.join(table.name())} has delete files (for {where}); "
        "duraflow reads plain Parquet and cannot apply them"
    )


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
        local = ", ".join(_sql_text(p.removeprefix("file://")) for p in paths)
        source = f"read_parquet([{local}], union_by_name = true)"
    else:
        keys = [p.removeprefix("s3://") for p in paths]
        dataset = ds.dataset(keys, schema=spec.arrow, format="parquet", filesystem=filesystem)
        con.register(files, dataset)
        source = files
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {name} AS "
        f"SELECT * FROM {empty} UNION ALL BY NAME SELECT * FROM {source}"
    )


def _sql_text(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


# -- maintenance -------------------------------------------------------------------------------
