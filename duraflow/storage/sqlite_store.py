"""PartitionStore: typed reads and writes over one partition's SQLite file.

One connection, WAL mode, ``synchronous`` FULL by default. The partition wraps everything one
turn changes in :meth:`PartitionStore.turn` (one ``BEGIN IMMEDIATE`` ... ``COMMIT``), which is
what makes group commit: many workflows' changes, one fsync. Workflow IDs only ever appear as
``?`` parameters. Each store is one owner of its file, fenced by a lock and an epoch
(``storage/fencing.py``): every turn checks the epoch first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from duraflow.cdc.events import AnyEvent, Event, decode_event, encode_event, event_type
from duraflow.config import SYNCHRONOUS_MODES
from duraflow.errors import ConfigurationError, PartitionFenced
from duraflow.storage import fencing
from duraflow.storage.partition_file import (
    FileStamp,
    check_file,
    check_stamp,
    damaged,
    read_stamp,
    schema_version,
    write_stamp,
)
from duraflow.storage.rows import ActivityRow, TimerRow, WorkflowRow
from duraflow.storage.schema import migrate

__all__ = ["ActivityRow", "PartitionStore", "TimerRow", "WorkflowRow", "is_storage_failure"]

BUSY_TIMEOUT_MS = 5000

log = logging.getLogger("duraflow.storage")


_WORKFLOW_COLUMNS = (
    "workflow_id, run_id, workflow_type, code_ref, status, parent_id, parent_run_id, parent_seq, "
    "started_at_us, closed_at_us, result, error_type, error_message, stuck, continued_from, "
    "next_run_id, attempt, search_attributes, first_run_id"
)
_WORKFLOW_MARKS = ",".join("?" * len(_WORKFLOW_COLUMNS.split(",")))
_ACTIVITY_COLUMNS = (
    "workflow_id, run_id, seq, activity, code_ref, args, options, attempt, state, "
    "scheduled_at_us, next_at_us, heartbeat"
)


class PartitionStore:
    """The SQLite file of one partition. Single writer: only its partition uses it."""

    def __init__(
        self,
        path: Path,
        synchronous: str = "FULL",
        *,
        stamp: FileStamp | None = None,
        create: bool = False,
        on_fenced: fencing.OnFenced | None = None,
    ) -> None:
        """Open (or with ``create``, make) the partition file at ``path``.

        Args:
            path: the file.
            synchronous: SQLite ``synchronous`` mode.
            stamp: the deployment, partition and count the file must belong to; a file made
                before stamps existed is stamped with it. None: not checked (tools, tests).
            create: make a new file (stamped with ``stamp``); without it a missing file is
                an error, never created.
            on_fenced: called once when a turn finds the file taken over by a newer owner
                (default: the one ``fencing.fenced_callback`` set around this opening).

        Raises:
            ConfigurationError: the file is missing, empty, damaged, not a partition file,
                or stamped for another deployment, partition or count (the message names
                it); an unknown ``synchronous`` mode.
            PartitionUnavailable: another live process holds the file, or an old owner
                stopped in the middle of a turn holds its write lock.
        """
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}"
            )
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            check_file(path)  # before connect(), which would make a missing file anew
        self.path = path
        self.epoch = 0
        """This owner's epoch, claimed at opening; a turn that finds another one is fenced."""
        self.fenced: PartitionFenced | None = None
        """Set once a turn found the file taken over: the store then writes nothing more."""
        self._epoch_text = ""
        self._found: str | None = None
        self._on_fenced = on_fenced or fencing.opening_callback()
        self._lock_fd = fencing.take_lock(path)
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except BaseException as exc:
            os.close(self._lock_fd)  # a failed open keeps no lock: a retry can take it
            if isinstance(exc, sqlite3.Error):
                raise damaged(path, exc) from None
            raise
        try:
            self._setup(mode, stamp, create)
        except BaseException as exc:
            self.close()
            if isinstance(exc, sqlite3.Error):
                raise damaged(path, exc) from None
            raise
        fencing.record_holder(self._lock_fd)

    def _setup(self, mode: str, stamp: FileStamp | None, create: bool) -> None:
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS:d}")
        if not create:  # first, so nothing is written to a file that is not ours
            schema_version(self._conn, self.path)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={mode}")
        migrate(self._conn)
        if stamp is not None:
            found = read_stamp(self._conn)
            check_stamp(self.path, found, stamp)
            if found is None:  # new, or made before stamps existed
                write_stamp(self._conn, stamp)
        self.epoch, self._epoch_text = fencing.claim_epoch(self._conn, self.path)

    def close(self) -> None:
        """Close the file and release its lock (a second call does nothing)."""
        self._conn.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    # -- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One transaction for everything one turn of the partition loop changed."""
        # IMMEDIATE takes the write lock before we read anything. A deferred transaction that
        # reads first can get SQLITE_BUSY_SNAPSHOT on its first write, and busy_timeout cannot
        # retry that.
        if self.fenced is not None:
            raise fencing.fenced_error(self.path, self.epoch, self._found)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Under the write lock: a new owner's opening either committed before (we see its
            # epoch) or waits until this turn is over.
            found = conn.execute(fencing.EPOCH_SQL).fetchone()
            if found is None or found[0] != self._epoch_text:
                raise self._fence(None if found is None else found[0])
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _fence(self, found: str | None) -> PartitionFenced:
        """Stop writing for good: another owner claimed the file."""
        self._conn.execute("PRAGMA query_only = ON")  # not one write more, turn or not
        self._found = found
        self.fenced = fencing.fenced_error(self.path, self.epoch, found)
        log.error("%s", self.fenced)
        if self._on_fenced is not None:
            try:
                self._on_fenced(self.fenced)
            except Exception:  # reason: the host's reaction must not keep the turn from failing
                log.exception("the fencing callback of %s raised", self.path)
        return self.fenced

    # -- meta -----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- workflows ------------------------------------------------------------------------

    def insert_workflow(self, row: WorkflowRow) -> None:
        self._conn.execute(
            f"INSERT INTO workflows ({_WORKFLOW_COLUMNS}) VALUES ({_WORKFLOW_MARKS})",
            msgspec.structs.astuple(row),
        )

    def close_workflow(
        self,
        workflow_id: str,
        run_id: str,
        status: str,
        closed_at_us: int,
        result: bytes | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        next_run_id: str | None = None,
    ) -> None:
        self._conn.execute(
            "UPDATE workflows SET status = ?, closed_at_us = ?, result = ?, error_type = ?, "
            "error_message = ?, next_run_id = ? WHERE workflow_id = ? AND run_id = ?",
            (
                status,
                closed_at_us,
                result,
                error_type,
                error_message,
                next_run_id,
                workflow_id,
                run_id,
            ),
        )

    def set_search_attributes(self, workflow_id: str, run_id: str, data: bytes) -> None:
        """Record a run's search attributes (msgpack)."""
        self._conn.execute(
            "UPDATE workflows SET search_attributes = ? WHERE workflow_id = ? AND run_id = ?",
            (data, workflow_id, run_id),
        )

    def set_stuck(self, workflow_id: str, run_id: str, stuck: str | None) -> None:
        """Record (or clear, with None) why an open run cannot progress."""
        self._conn.execute(
            "UPDATE workflows SET stuck = ? WHERE workflow_id = ? AND run_id = ?",
            (stuck, workflow_id, run_id),
        )

    def latest_run(self, workflow_id: str) -> WorkflowRow | None:
        row = self._conn.execute(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = ? "
            "ORDER BY rowid DESC LIMIT 1",
            (workflow_id,),
        ).fetchone()
        return None if row is None else WorkflowRow(*row)

    def get_run(self, workflow_id: str, run_id: str) -> WorkflowRow | None:
        row = self._conn.execute(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = ? AND run_id = ?",
            (workflow_id, run_id),
        ).fetchone()
        return None if row is None else WorkflowRow(*row)

    def open_runs(self) -> list[WorkflowRow]:
        rows = self._conn.execute(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE status = 'running'"
        ).fetchall()
        return [WorkflowRow(*r) for r in rows]

    def list_workflows(
        self, status: str | None, workflow_type: str | None, limit: int
    ) -> list[tuple[WorkflowRow, int]]:
        """Runs newest first, each with its history length (events recorded), in one query."""
        sql = f"SELECT {_WORKFLOW_COLUMNS} FROM workflows"
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if workflow_type is not None:
            clauses.append("workflow_type = ?")
            params.append(workflow_type)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY started_at_us DESC LIMIT ?"
        # Lengths only for the runs within the limit, each max() one seek in history_by_run
        # (100,000 runs: ~1.5-2.5 us a run over ~3.6 us for the rows alone). The outer query
        # keeps the inner one's order (SQLite runs it as a co-routine); the client re-sorts.
        sql = (
            f"SELECT w.*, (SELECT max(event_id) FROM workflow_history AS h "
            f"WHERE h.workflow_id = w.workflow_id AND h.run_id = w.run_id) FROM ({sql}) AS w"
        )
        rows = self._conn.execute(sql, (*params, limit)).fetchall()
        return [(WorkflowRow(*r[:-1]), int(r[-1] or 0)) for r in rows]

    # -- history ----------------------------------------------------------------------------

    def append_events(self, events: Iterable[Event]) -> None:
        self._conn.executemany(
            "INSERT INTO workflow_history "
            "(lsn, workflow_id, run_id, event_id, event_type, at_us, body) "
            "VALUES (?,?,?,?,?,?,?)",
            [
                (
                    e.lsn,
                    e.workflow_id,
                    e.run_id,
                    e.event_id,
                    event_type(e),
                    e.at_us,
                    encode_event(e),
                )
                for e in events
            ],
        )

    def history(self, workflow_id: str, run_id: str) -> list[AnyEvent]:
        rows = self._conn.execute(
            "SELECT body FROM workflow_history WHERE workflow_id = ? AND run_id = ? "
            "ORDER BY event_id",
            (workflow_id, run_id),
        ).fetchall()
        return [decode_event(r[0]) for r in rows]

    def last_event_id(self, workflow_id: str, run_id: str) -> int:
        row = self._conn.execute(
            "SELECT max(event_id) FROM workflow_history WHERE workflow_id = ? AND run_id = ?",
            (workflow_id, run_id),
        ).fetchone()
        return int(row[0] or 0)

    def max_lsn(self) -> int:
        row = self._conn.execute("SELECT max(lsn) FROM workflow_history").fetchone()
        return int(row[0] or 0)

    def read_events(self, after_lsn: int, limit: int) -> list[tuple[int, str, str, bytes]]:
        """(LSN, workflow ID, event type, encoded event) of events after ``after_lsn``, in
        LSN order: the history table read as the partition's change log (the CDC outbox)."""
        # The columns are INTEGER, TEXT, TEXT and BLOB NOT NULL: sqlite3 returns exactly
        # (int, str, str, bytes), no conversion needed.
        rows: list[tuple[int, str, str, bytes]] = self._conn.execute(
            "SELECT lsn, workflow_id, event_type, body FROM workflow_history "
            "WHERE lsn > ? ORDER BY lsn LIMIT ?",
            (after_lsn, limit),
        ).fetchall()
        return rows

    # -- activities -------------------------------------------------------------------------

    def insert_activity(self, row: ActivityRow) -> None:
        self._conn.execute(
            f"INSERT INTO workflow_activities ({_ACTIVITY_COLUMNS}) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            msgspec.structs.astuple(row),
        )

    def update_activity(
        self,
        workflow_id: str,
        run_id: str,
        seq: int,
        attempt: int,
        state: str,
        next_at_us: int | None,
    ) -> None:
        self._conn.execute(
            "UPDATE workflow_activities SET attempt = ?, state = ?, next_at_us = ? "
            "WHERE workflow_id = ? AND run_id = ? AND seq = ?",
            (attempt, state, next_at_us, workflow_id, run_id, seq),
        )

    def set_activity_heartbeat(
        self, workflow_id: str, run_id: str, seq: int, details: bytes
    ) -> None:
        self._conn.execute(
            "UPDATE workflow_activities SET heartbeat = ? "
            "WHERE workflow_id = ? AND run_id = ? AND seq = ?",
            (details, workflow_id, run_id, seq),
        )

    def delete_activity(self, workflow_id: str, run_id: str, seq: int) -> None:
        self._conn.execute(
            "DELETE FROM workflow_activities WHERE workflow_id = ? AND run_id = ? AND seq = ?",
            (workflow_id, run_id, seq),
        )

    def activities(
        self, workflow_id: str | None = None, run_id: str | None = None
    ) -> list[ActivityRow]:
        sql = f"SELECT {_ACTIVITY_COLUMNS} FROM workflow_activities"
        params: tuple[str, ...] = ()
        if workflow_id is not None:
            sql += " WHERE workflow_id = ? AND run_id = ?"
            params = (workflow_id, run_id or "")
        return [ActivityRow(*r) for r in self._conn.execute(sql, params).fetchall()]

    # -- timers -----------------------------------------------------------------------------

    def insert_timer(self, row: TimerRow) -> None:
        self._conn.execute(
            "INSERT INTO workflow_timers (workflow_id, run_id, seq, fire_at_us) VALUES (?,?,?,?)",
            msgspec.structs.astuple(row),
        )

    def delete_timer(self, workflow_id: str, run_id: str, seq: int) -> None:
        self._conn.execute(
            "DELETE FROM workflow_timers WHERE workflow_id = ? AND run_id = ? AND seq = ?",
            (workflow_id, run_id, seq),
        )

    def timers(self) -> list[TimerRow]:
        rows = self._conn.execute(
            "SELECT workflow_id, run_id, seq, fire_at_us FROM workflow_timers"
        ).fetchall()
        return [TimerRow(*r) for r in rows]

    def prunable_runs(
        self, closed_before_us: int, archived_lsn: int, limit: int
    ) -> list[tuple[str, str]]:
        """Closed runs closed before ``closed_before_us`` whose every event is archived."""
        rows = self._conn.execute(
            "SELECT w.workflow_id, w.run_id FROM workflows AS w "
            "WHERE w.status != 'running' AND w.closed_at_us <= ? AND NOT EXISTS ("
            "  SELECT 1 FROM workflow_history AS h "
            "  WHERE h.workflow_id = w.workflow_id AND h.run_id = w.run_id AND h.lsn > ?"
            ") LIMIT ?",
            (closed_before_us, archived_lsn, limit),
        ).fetchall()
        return [(str(w), str(r)) for w, r in rows]

    def delete_run(self, workflow_id: str, run_id: str) -> None:
        """Remove every row of a closed run (it lives on in the archive)."""
        # Table names are constants here; IDs stay parameters.
        for table in ("workflow_history", "workflow_signals", "workflows"):
            self._conn.execute(
                f"DELETE FROM {table} WHERE workflow_id = ? AND run_id = ?", (workflow_id, run_id)
            )

    def delete_run_state(self, workflow_id: str, run_id: str) -> None:
        """Drop the timers and activities of a run that closed."""
        # Table names are constants here; IDs stay parameters.
        for table in ("workflow_timers", "workflow_activities"):
            self._conn.execute(
                f"DELETE FROM {table} WHERE workflow_id = ? AND run_id = ?", (workflow_id, run_id)
            )

    # -- signals ----------------------------------------------------------------------------

    def signal_seen(self, request_id: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM workflow_signals WHERE request_id = ?", (request_id,)
        ).fetchone()
        return row is not None

    def insert_signal(self, request_id: str, workflow_id: str, run_id: str, lsn: int) -> None:
        self._conn.execute(
            "INSERT INTO workflow_signals (request_id, workflow_id, run_id, lsn) VALUES (?,?,?,?)",
            (request_id, workflow_id, run_id, lsn),
        )

    # -- outbox -----------------------------------------------------------------------------

    @staticmethod
    def failed(exc: BaseException) -> bool:
        """Whether ``exc`` is this file or its disk failing (:func:`is_storage_failure`)."""
        return is_storage_failure(exc)

    def insert_outbox(self, target_id: str, message: bytes) -> int:
        cursor = self._conn.execute(
            "INSERT INTO outbox (target_id, message) VALUES (?, ?)", (target_id, message)
        )
        return int(cursor.lastrowid or 0)

    def delete_outbox(self, ids: Iterable[int]) -> None:
        self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def outbox(self) -> list[tuple[int, str, bytes]]:
        rows = self._conn.execute("SELECT id, target_id, message FROM outbox ORDER BY id")
        return [(int(i), str(t), bytes(m)) for i, t, m in rows.fetchall()]


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the file or its disk failing (an I/O error, a full disk, a locked or
    damaged file, or the file taken over by a newer owner), which may pass, rather than a value
    the file cannot hold (an integer over 64 bits, a broken constraint, text that is not
    UTF-8), which fails the same way each time. Either way the whole turn was rolled back."""
    if isinstance(
        exc,
        (
            sqlite3.IntegrityError,
            sqlite3.DataError,
            sqlite3.ProgrammingError,
            sqlite3.InterfaceError,
        ),
    ):
        return False
    return isinstance(exc, (sqlite3.Error, OSError, MemoryError, PartitionFenced))
