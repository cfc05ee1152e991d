"""What makes a file a partition file of this deployment: its header, schema and stamp.

Every partition file records, in its ``meta`` table, the deployment it was created for (the
random ID in ``deployment.json``), its partition number and the partition count. A file is
checked before it is used: a missing, empty, truncated or overwritten file, a SQLite file
that is not a partition file, and a partition file of another deployment, another partition
or another count are each refused with a :class:`ConfigurationError` naming the file. None
is ever started empty over: its runs, and the LSNs the archive's offsets count on, would be
lost.

Note:
    SQLite's ``PRAGMA quick_check`` reads every page: on this project's 2-core VM it took
    0.4-0.6 s for a 100 MB file with a warm page cache and 1.8 s cold. That is too slow for
    every open, so opening checks the header (magic, page size, the size it records against
    the file's) and reads the schema version and the stamp; damage deeper in the file shows
    up as a ``sqlite3.DatabaseError`` when the page is read.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgspec

from duraflow.errors import ConfigurationError

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
STAMP_KEYS = ("deployment_id", "partition", "partitions")
RESTORE_HINT = (
    "stop every engine using this data directory and put the file back from a backup of this "
    "same data directory (README: 'Backups, copies and moves')"
)


class FileStamp(msgspec.Struct, frozen=True):
    """The deployment a partition file belongs to, as its ``meta`` table records it."""

    deployment_id: str
    partition: int
    partitions: int


def check_file(path: Path) -> None:
    """Check, without opening it with SQLite (which would create a missing file), that
    ``path`` is a whole SQLite file this process can read and write.

    Raises:
        ConfigurationError: the file is missing, not a file, empty, not a SQLite database,
            shorter than its header says, or not readable and writable by this process.
    """
    if not path.exists():
        raise ConfigurationError(
            f"partition file {path} is missing, but the deployment says it exists: it was "
            f"deleted, moved or never copied; {RESTORE_HINT}"
        )
    if not path.is_file():
        raise ConfigurationError(f"partition file {path} is not a regular file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConfigurationError(
            f"partition file {path} is not readable and writable by this process "
            f"(uid {os.getuid()}): fix its owner or mode"
        )
    size = path.stat().st_size
    if size == 0:
        raise ConfigurationError(
            f"partition file {path} is empty (0 bytes): it was truncated; {RESTORE_HINT}"
        )
    with path.open("rb") as file:
        header = file.read(HEADER_BYTES)
    if not header.startswith(SQLITE_MAGIC):
        raise ConfigurationError(
            f"partition file {path} is not a SQLite database (it starts with "
            f"{header[:16]!r}): it was overwritten or damaged; {RESTORE_HINT}"
        )
    expected = _recorded_size(header)
    if len(header) < HEADER_BYTES or (expected is not None and size < expected):
        raise ConfigurationError(
            f"partition file {path} is cut short: {size} bytes, its header says "
            f"{expected if expected is not None else 'at least 100'}: it was truncated; "
            f"{RESTORE_HINT}"
        )


def _recorded_size(header: bytes) -> int | None:
    """The file size the SQLite header records, when the header says it is valid."""
    if len(header) < HEADER_BYTES:
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    change_counter = header[24:28]
    pages = int.from_bytes(header[28:32], "big")
    valid_for = header[92:96]
    if pages == 0 or change_counter != valid_for:
        return None  # written by an old SQLite: the size field is not maintained
    return pages * page_size


def read_stamp(conn: sqlite3.Connection) -> FileStamp | None:
    """The stamp in ``meta`` (None for a file made before stamps, or not stamped yet)."""
    rows = conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?, ?)", STAMP_KEYS).fetchall()
    values = dict(rows)
    if set(values) != set(STAMP_KEYS):
        return None
    try:
        return FileStamp(
            str(values["deployment_id"]), int(values["partition"]), int(values["partitions"])
        )
    except ValueError:
        return None


def write_stamp(conn: sqlite3.Connection, stamp: FileStamp) -> None:
    """Record ``stamp`` in ``meta`` (one transaction)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [
                ("deployment_id", stamp.deployment_id),
                ("partition", str(stamp.partition)),
                ("partitions", str(stamp.partitions)),
            ],
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def check_stamp(path: Path, found: FileStamp | None, expected: FileStamp) -> None:
    """Refuse a file stamped for another deployment, partition or partition count (an
    unstamped file, made before stamps existed, passes).

    Raises:
        ConfigurationError: naming the file and what differs.
    """
    if found is None:
        return
    if found.deployment_id != expected.deployment_id:
        raise ConfigurationError(
            f"partition file {path} belongs to another deployment (ID {found.deployment_id}), "
            f"not to this data directory's (ID {expected.deployment_id} in deployment.json): "
            f"was it copied in from another data directory? {RESTORE_HINT}"
        )
    if found.partitions != expected.partitions:
        raise ConfigurationError(
            f"partition file {path} was created for {found.partitions} partitions, but "
            f"deployment.json says partitions={expected.partitions}: deployment.json was "
            f"edited or replaced; restore it (the partition count cannot change: workflow "
            f"IDs are routed by it)"
        )
    if found.partition != expected.partition:
        raise ConfigurationError(
            f"partition file {path} holds partition {found.partition}, not partition "
            f"{expected.partition}: partition files were renamed or swapped; give each its "
            f"own name back (p{found.partition:04d}.sqlite)"
        )


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of a partition file, refusing a SQLite file with none.

    Raises:
        ConfigurationError: a SQLite database without a partition schema.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version < 1:
        raise ConfigurationError(
            f"partition file {path} is a SQLite database but not a duraflow partition file "
            f"(it has no partition schema); {RESTORE_HINT}"
        )
    return version


def damaged(path: Path, exc: sqlite3.Error) -> ConfigurationError:
    """The error for a partition file SQLite cannot read."""
    return ConfigurationError(
        f"partition file {path} cannot be read by SQLite ({exc}): it is damaged; {RESTORE_HINT}"
    )


def inspect_file(path: Path) -> tuple[FileStamp | None, int]:
    """Check ``path`` as :func:`check_file` does, open it and return its stamp and its
    highest LSN (the partition's own, or the archived one it recorded, whichever is higher).
    Reads only.

    Raises:
        ConfigurationError: as :func:`check_file`, or SQLite cannot read the file, or it has
            no partition schema.
    """
    check_file(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise damaged(path, exc) from None
    try:
        schema_version(conn, path)
        stamp = read_stamp(conn)
        top = conn.execute("SELECT max(lsn) FROM workflow_history").fetchone()[0] or 0
        archived = conn.execute("SELECT value FROM meta WHERE key = 'archived_lsn'").fetchone()
        return stamp, max(int(top), int(archived[0]) if archived else 0)
    except sqlite3.Error as exc:
        raise damaged(path, exc) from None
    finally:
        conn.close()
