"""DDL and numbered migrations of a partition's SQLite file (``PRAGMA user_version``)."""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: the seed schema.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    -- One row per run. The latest run of an ID is the one with the highest rowid.
    CREATE TABLE workflows (
        workflow_id    TEXT NOT NULL,
        run_id         TEXT NOT NULL,
        workflow_type  TEXT NOT NULL,
        code_ref       TEXT NOT NULL,
        status         TEXT NOT NULL,   -- running | completed | failed | cancelled | terminated
        parent_id      TEXT,
        parent_run_id  TEXT,
        parent_seq     INTEGER,
        started_at_us  INTEGER NOT NULL,
        closed_at_us   INTEGER,
        result         BLOB,
        error_type     TEXT,
        error_message  TEXT,
        UNIQUE (workflow_id, run_id)
    );
    CREATE INDEX workflows_by_id ON workflows (workflow_id);
    CREATE INDEX workflows_open ON workflows (status) WHERE status = 'running';
    -- The event history of every run; the LSN is the partition's log order (the CDC outbox).
    CREATE TABLE workflow_history (
        lsn          INTEGER PRIMARY KEY,
        workflow_id  TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        event_id     INTEGER NOT NULL,
        event_type   TEXT NOT NULL,
        at_us        INTEGER NOT NULL,
        body         BLOB NOT NULL
    );
    CREATE UNIQUE INDEX history_by_run ON workflow_history (workflow_id, run_id, event_id);
    -- Activities scheduled and not yet resolved (state: running | backoff).
    CREATE TABLE workflow_activities (
        workflow_id      TEXT NOT NULL,
        run_id           TEXT NOT NULL,
        seq              INTEGER NOT NULL,
        activity         TEXT NOT NULL,
        code_ref         TEXT NOT NULL,
        args             BLOB NOT NULL,
        options          BLOB NOT NULL,
        attempt          INTEGER NOT NULL,
        state            TEXT NOT NULL,
        scheduled_at_us  INTEGER NOT NULL,
        next_at_us       INTEGER,
        heartbeat        BLOB,
        PRIMARY KEY (workflow_id, run_id, seq)
    ) WITHOUT ROWID;
    -- Durable timers of open runs.
    CREATE TABLE workflow_timers (
        workflow_id  TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        fire_at_us   INTEGER NOT NULL,
        PRIMARY KEY (workflow_id, run_id, seq)
    ) WITHOUT ROWID;
    -- Signals accepted, by the client's request ID, so a retried signal is appended once.
    CREATE TABLE workflow_signals (
        request_id   TEXT PRIMARY KEY,
        workflow_id  TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        lsn          INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Messages to other workflows (child start, child closed, terminate child), sent after
    -- commit and deleted once the receiving partition has committed them.
    CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY,
        target_id  TEXT NOT NULL,
        message    BLOB NOT NULL
    );
    """,
    # 2: why an open run cannot progress (non-determinism, missing code), retried on open.
    """
    ALTER TABLE workflows ADD COLUMN stuck TEXT;
    """,
    # 3: closed runs by close time, for pruning archived runs.
    """
    CREATE INDEX workflows_closed ON workflows (closed_at_us) WHERE status != 'running';
    """,
    # 4: the owner's epoch (storage/fencing.py): each opening increments it, each write turn
    # checks it.
    """
    INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', '0');
    """,
    # 5: the chain of runs of an ID (continue-as-new, workflow retries) and typed search
    # attributes (msgpack).
    """
    ALTER TABLE workflows ADD COLUMN continued_from TEXT;
    ALTER TABLE workflows ADD COLUMN next_run_id TEXT;
    ALTER TABLE workflows ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE workflows ADD COLUMN search_attributes BLOB;
    ALTER TABLE workflows ADD COLUMN first_run_id TEXT;
    """,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a partition file to the newest schema version; returns that version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number:d}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
