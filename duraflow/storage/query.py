"""DuckDB over the archive: views ``history``, ``workflows`` and ``activities``, cold and warm.

Cold rows come from the Iceberg tables' current snapshots: pyiceberg plans the files and
DuckDB reads the Parquet itself (no iceberg or httpfs extension needed, so it works offline;
S3 files go through a pyarrow filesystem). Warm rows come from the warm segments not yet
committed: a segment row shows only if its LSN is above the ``history`` table's offset for its
partition, so nothing appears twice. ``workflows`` and ``activities`` rows for runs and
activities that closed in those warm rows are derived on the fly, the way the cold tier will
derive them when it archives the segments.

The views show the archive as it was at :meth:`ArchiveQuery.refresh` (called when opening).
A refresh reads only what changed since the last one: warm segments are read once (their rows
never change), Iceberg manifests once per process (``iceberg.data_files``), and the warm
``workflows`` / ``activities`` rows are derived again only when the warm segments or the
offsets moved. :class:`ArchiveReader` keeps one catalog and one DuckDB database for all its
sessions (a cursor each), so a ``client.sql`` call opens neither.

Users' SQL only reads (``storage/readonly.py``): every database here is a
:func:`~duraflow.storage.readonly.locked_database` that reads files only in the archive's data
folders, and :meth:`ArchiveQuery.sql` runs read-only statements only.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import EqualTo

from duraflow.storage.archive_schema import (
    ACTIVITIES,
    HISTORY,
    RUN_CLOSING,
    WORKFLOWS,
    drop_duplicates,
)
from duraflow.storage.catalog import Archive, S3Config, open_archive
from duraflow.storage.iceberg import (
    committed_offsets,
    data_files,
    derive,
    register_files,
    rows_after,
)
from duraflow.storage.readonly import fetch_arrow, locked_database, readable_folders, run
from duraflow.storage.warm import Segment, list_segments, read_segments

VIEWS = ("history", "workflows", "activities")


class WarmCache:
    """What sessions over one warm folder keep between refreshes: each segment's rows, by
    file name (a segment never changes once written), and the ``workflows`` and
    ``activities`` rows last derived from them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._segments: dict[str, pa.Table] = {}
        self._rows: tuple[tuple[str, ...], pa.Table] | None = None
        self._derived: tuple[object, tuple[pa.Table, pa.Table]] | None = None

    def rows(self, segments: list[Segment]) -> tuple[tuple[str, ...], pa.Table]:
        """(names of the segments read, their rows: one per partition and LSN), reading only
        segments not read before; segments deleted since they were listed are skipped (the
        archiver deletes a segment only after its rows are committed)."""
        with self._lock:
            names, tables = [], []
            for segment in segments:
                name = segment.path.name
                table = self._segments.get(name)
                if table is None:
                    try:
                        table = pq.read_table(segment.path, schema=HISTORY.arrow)
                    except FileNotFoundError:
                        continue
                    self._segments[name] = table
                names.append(name)
                tables.append(table)
            key = tuple(names)
            for gone in self._segments.keys() - set(key):
                del self._segments[gone]
            if self._rows is None or self._rows[0] != key:
                rows = pa.concat_tables(tables) if tables else HISTORY.empty()
                if len(tables) > 1:
                    rows = drop_duplicates(rows, ("partition", "lsn"))
                self._rows = (key, rows)
            return self._rows

    def derived(self, key: object) -> tuple[pa.Table, pa.Table] | None:
        """The rows :meth:`keep_derived` kept under ``key``, if it was the last key."""
        with self._lock:
            found = self._derived
        return found[1] if found is not None and found[0] == key else None

    def keep_derived(self, key: object, rows: tuple[pa.Table, pa.Table]) -> None:
        with self._lock:
            self._derived = (key, rows)


class ArchiveQuery:
    """A DuckDB connection whose views ``history``, ``workflows`` and ``activities`` show the
    archive: the cold tier plus warm segments not yet committed.

    Args:
        archive: the archive (``catalog.open_archive``).
        warm_dir: the warm tier's folder, if there is one.
        connection: a DuckDB connection to add the views to (default: a new
            :func:`~duraflow.storage.readonly.locked_database`; one given should be one too,
            or a cursor of one).
        cache: warm rows already read, shared by sessions over the same warm folder.
        lock: held while ``archive``'s tables are refreshed and read, when sessions in
            several threads share them.
    """

    def __init__(
        self,
        archive: Archive,
        warm_dir: str | Path | None = None,
        *,
        connection: duckdb.DuckDBPyConnection | None = None,
        cache: WarmCache | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.archive = archive
        self.warm_dir = Path(warm_dir) if warm_dir is not None else None
        self.con = (
            connection if connection is not None else locked_database(readable_folders(archive))
        )
        self._cache = cache if cache is not None else WarmCache()
        self._lock = lock if lock is not None else threading.Lock()
        self._cold: dict[str, list[str]] = {}  # the files each cold view reads now
        self.refresh()

    def sql(self, query: str, params: Any = None) -> duckdb.DuckDBPyRelation | None:
        """Run read-only SQL against the views (``?`` parameters bind ``params``): DuckDB's
        relation, run lazily (errors met while fetching it are DuckDB's own).

        Raises:
            StatementNotAllowed: a statement that does more than read (nothing has run).
            QueryError: DuckDB refused the query (its message), or ``query`` is not text.
        """
        return run(self.con, query, params)

    def fetch_arrow(self, query: str, params: Any = None) -> pa.Table:
        """The result of read-only ``query`` as a pyarrow Table (see :meth:`sql`); every DuckDB
        error, also one met while running the query, is a ``QueryError``."""
        return fetch_arrow(self.con, query, params)

    def refresh(self) -> None:
        """Rebuild the views over what the archive and the warm folder hold now."""
        con = self.con
        # Warm first, cold second: a segment deleted in between was committed before its
        # deletion, so the cold snapshot taken afterwards has its rows.
        segments = list_segments(self.warm_dir) if self.warm_dir is not None else []
        names, warm = self._cache.rows(segments)
        with self._lock:
            self.archive.refresh()
            done = {n: committed_offsets(self.archive.tables[n], refresh=False) for n in VIEWS}
            cold = {name: data_files(self.archive.tables[name]) for name in VIEWS}
        for spec in (HISTORY, WORKFLOWS, ACTIVITIES):
            if self._cold.get(spec.name) != cold[spec.name]:
                register_files(con, f"_cold_{spec.name}", self.archive, spec, cold[spec.name])
                self._cold[spec.name] = cold[spec.name]
        con.register("_warm_history", rows_after(warm, done["history"]))
        key = (names, tuple(tuple(sorted(done[n].items())) for n in VIEWS))
        derived = self._cache.derived(key)
        if derived is None:
            with self._lock:
                derived = self._derive_warm(done)
            self._cache.keep_derived(key, derived)
        con.register("_warm_workflows", derived[0])
        con.register("_warm_activities", derived[1])
        for name in VIEWS:
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW {name} AS "
                f"SELECT * FROM _cold_{name} UNION ALL BY NAME SELECT * FROM _warm_{name}"
            )

    def _derive_warm(self, done: dict[str, dict[int, int]]) -> tuple[pa.Table, pa.Table]:
        """Rows of runs and activities that closed in history not yet in workflows/activities:
        the warm rows, and cold history rows above the derived tables' offsets (left by a
        crash between the history commit and theirs)."""
        con = self.con
        parts = ["SELECT * FROM _warm_history"]
        for partition, top in sorted(done["history"].items()):
            low = min(done["workflows"].get(partition, -1), done["activities"].get(partition, -1))
            if low < top:
                parts.append(
                    f"SELECT * FROM _cold_history "
                    f"WHERE partition = {int(partition)} AND lsn > {int(low)}"
                )
        con.execute(f"CREATE OR REPLACE TEMP TABLE _known AS {' UNION ALL BY NAME '.join(parts)}")
        if not con.execute("SELECT 1 FROM _known LIMIT 1").fetchall():
            return WORKFLOWS.empty(), ACTIVITIES.empty()
        return derive(con, "_known", self.archive, done["workflows"], done["activities"])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> ArchiveQuery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


LIVE_WORKFLOWS = pa.schema(
    [
        ("workflow_id", pa.string()),
        ("run_id", pa.string()),
        ("workflow_type", pa.string()),
        ("status", pa.string()),
        ("start_time", pa.timestamp("us", tz="UTC")),
        ("close_time", pa.timestamp("us", tz="UTC")),
        ("parent_workflow_id", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("stuck", pa.string()),
        ("history_length", pa.int64()),
        ("pending_activities", pa.list_(pa.string())),
        ("partition", pa.int32()),
        ("attempt", pa.int32()),
        ("continued_from", pa.string()),
        ("next_run_id", pa.string()),
        ("search_attributes", pa.string()),
    ]
)
"""The ``live_workflows`` view: runs still in the partitions' files (open ones, and closed
ones not yet past their retention)."""


def add_live_workflows(query: ArchiveQuery, rows: list[dict[str, Any]]) -> ArchiveQuery:
    """Register ``live_workflows`` (rows from the partitions, newest first) on ``query``."""
    table = pa.Table.from_pylist(
        [
            {
                **{name: row.get(name) for name in LIVE_WORKFLOWS.names},
                # JSON text (datetimes as ISO 8601): json_extract_string(search_attributes, ...)
                "search_attributes": _json_text(row.get("search_attributes")),
            }
            for row in rows
        ],
        schema=LIVE_WORKFLOWS,
    )
    query.con.register("_live_workflows", table)
    query.con.execute("CREATE OR REPLACE TEMP VIEW live_workflows AS SELECT * FROM _live_workflows")
    return query


def _json_text(value: object) -> str | None:
    return msgspec.json.encode(value).decode() if value else None


def open_query(
    archive_dir: Path,
    warm_dir: Path | None,
    live_rows: list[dict[str, Any]],
    *,
    warehouse: str | None = None,
    s3: S3Config | None = None,
) -> ArchiveQuery:
    """Open the archive in ``archive_dir`` and a DuckDB session with all four views."""
    archive = open_archive(archive_dir, warehouse=warehouse, s3=s3)
    return add_live_workflows(ArchiveQuery(archive, warm_dir), live_rows)


def connect(archive: Archive, warm_dir: str | Path | None = None) -> ArchiveQuery:
    """An :class:`ArchiveQuery` over ``archive`` and the warm segments in ``warm_dir``."""
    return ArchiveQuery(archive, warm_dir)


class ArchiveReader:
    """The archive as a client reads it: DuckDB sessions over its views (:meth:`open`) and
    the events of one archived run (:meth:`run_events`), for runs that left the partitions.

    Args:
        archive_dir, warm_dir: the archive's folder and its warm tier's.
        warehouse, s3: as for ``catalog.open_archive``.
    """

    def __init__(
        self,
        archive_dir: Path,
        warm_dir: Path | None,
        *,
        warehouse: str | None = None,
        s3: S3Config | None = None,
    ) -> None:
        self._dir = archive_dir
        self._warm = warm_dir
        self._warehouse = warehouse
        self._s3 = s3
        # Kept between calls: opening the catalog costs ~30 ms and a DuckDB database ~20 ms
        # (each session gets a cursor of it: ~0.5 ms), and warm segments are read once.
        self._archive: Archive | None = None
        self._db: duckdb.DuckDBPyConnection | None = None
        self._con: duckdb.DuckDBPyConnection | None = None  # run_events' own cursor
        self._lock = threading.Lock()  # guards the above and the archive's pyiceberg tables
        self._cache = WarmCache()
        self._segment_ids: dict[str, frozenset[str]] = {}
        """Workflow IDs in each warm segment, by file name (a segment's rows never change)."""

    def __repr__(self) -> str:
        return f"ArchiveReader({str(self._dir)!r}, warehouse={self._warehouse!r})"

    def _opened(self) -> tuple[Archive, duckdb.DuckDBPyConnection]:
        """The archive and the DuckDB database, opened on first use (call under the lock)."""
        if self._archive is None:
            self._archive = open_archive(self._dir, warehouse=self._warehouse, s3=self._s3)
        if self._db is None:
            self._db = locked_database(readable_folders(self._archive))
        return self._archive, self._db

    def open(self, live_rows: list[dict[str, Any]], *, own_database: bool = False) -> ArchiveQuery:
        """A DuckDB session with the views ``history``, ``workflows``, ``activities`` and
        ``live_workflows`` (``live_rows``).

        Args:
            own_database: give the session a database of its own (locked the same way)
                instead of a cursor of the one kept for all sessions: for a session whose
                ``.con`` its holder may use, so nothing made there reaches other sessions.
        """
        with self._lock:
            archive, db = self._opened()
            connection = None if own_database else db.cursor()
            folders = readable_folders(archive)
        if connection is None:
            connection = locked_database(folders)  # ~30 ms: not under the lock
        session = ArchiveQuery(
            archive, self._warm, connection=connection, cache=self._cache, lock=self._lock
        )
        return add_live_workflows(session, live_rows)

    __call__ = open

    def run_events(self, workflow_id: str, run_id: str | None = None) -> list[bytes]:
        """The events (msgpack, ``events.encode_event``) of one closed run in the archive, in
        order: run ``run_id``, or the latest run of ``workflow_id`` that has closed. Empty if
        the archive has no such closed run."""
        with self._lock:  # one look-up at a time per reader: pyiceberg tables are refreshed
            archive, db = self._opened()
            if self._con is None:
                self._con = db.cursor()
            # Warm first, cold second (as in ArchiveQuery.refresh): a segment deleted in
            # between was committed before, so the cold snapshot read afterwards has its rows.
            warm = self._warm_rows(workflow_id)
            return run_events(archive, warm, workflow_id, run_id, connection=self._con)

    def _warm_rows(self, workflow_id: str) -> pa.Table:
        """The warm rows of ``workflow_id``, reading only the segments that hold it."""
        segments = list_segments(self._warm) if self._warm is not None else []
        known = self._segment_ids
        for name in known.keys() - {s.path.name for s in segments}:
            del known[name]  # committed and deleted
        holding = []
        for segment in segments:
            ids = known.get(segment.path.name)
            if ids is None:
                try:
                    column = pq.read_table(segment.path, columns=["workflow_id"])["workflow_id"]
                except FileNotFoundError:
                    continue  # committed and deleted since it was listed
                ids = known[segment.path.name] = frozenset(column.to_pylist())
            if workflow_id in ids:
                holding.append(segment)
        rows = read_segments(holding, missing_ok=True)
        return rows.filter(pc.equal(rows["workflow_id"], workflow_id))


def run_events(
    archive: Archive,
    warm: pa.Table,
    workflow_id: str,
    run_id: str | None = None,
    *,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> list[bytes]:
    """The events of one closed run of ``workflow_id`` (see :meth:`ArchiveReader.run_events`)
    in the cold tier and ``warm`` (warm history rows; those the cold tier has are ignored).
    ``connection``: a DuckDB connection to use (its views ``_cold`` and ``_warm`` replaced)."""
    history = archive.history
    history.refresh()
    warm = rows_after(warm, committed_offsets(history, refresh=False))
    paths = data_files(history, EqualTo("workflow_id", workflow_id))
    with contextlib.nullcontext(connection) if connection else duckdb.connect() as con:
        register_files(con, "_cold", archive, HISTORY, paths)
        con.register("_warm", warm)
        found = (
            con.sql(
                "SELECT DISTINCT ON (run_id, event_id) run_id, event_id, event_type, lsn, raw "
                "FROM (SELECT run_id, event_id, event_type, lsn, raw FROM _cold "
                "      WHERE workflow_id = $1 "
                "      UNION ALL SELECT run_id, event_id, event_type, lsn, raw FROM _warm) "
                "ORDER BY run_id, event_id",
                params=[workflow_id],
            )
            .to_arrow_table()
            .to_pylist()
        )
    closed = {row["run_id"] for row in found if row["event_type"] in RUN_CLOSING}
    if run_id is None:  # the closed run of this ID that started last (one partition: LSNs)
        latest = max(
            (row for row in found if row["run_id"] in closed), key=lambda r: r["lsn"], default=None
        )
        if latest is None:
            return []
        run_id = latest["run_id"]
    if run_id not in closed:
        return []
    return [bytes(row["raw"]) for row in found if row["run_id"] == run_id]
