"""Who may write a partition file: an exclusive lock on a side file, and an epoch in the file.

The lock (``flock`` on ``pNNNN.sqlite.lock``) keeps a second owner out while the first one
lives, and a killed owner releases it at once. But an owner that is stopped (SIGSTOP, a frozen
VM) or cut off from its cluster still holds it, and Ray restarts a partition whose node it
declared dead while the old process may live on. So every owner also claims the file's
*epoch*, a counter (with a random tag) in its ``meta`` table, incrementing it in the
transaction that opens the file (:func:`claim_epoch`), and every write turn reads it inside
its own transaction (``PartitionStore.turn``): an owner that finds a newer epoch than its own
rolls the turn back, raises :class:`~duraflow.errors.PartitionFenced`, and its store writes
nothing more. The epoch and the turns are serialized by SQLite's write lock, so once a new
owner's opening transaction has committed, no write of the old owner can commit.

A host that knows the holder of a lock is replaced breaks the lock (:func:`break_lock`): the
side file is unlinked, the stalled holder keeps its lock on a file nobody looks at any more,
and the new owner locks a new side file and claims the next epoch. The side file names its
holder (:class:`Holder`), so a Ray actor can tell its own earlier incarnation from another
deployment's process.

The host learns that its store was fenced through the callback it sets with
:func:`fenced_callback` around the opening (a context variable, so that the Partition, which
opens the store, need not pass it along).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import secrets
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from duraflow.errors import PartitionFenced, PartitionUnavailable

EPOCH_KEY = "epoch"
EPOCH_SQL = "SELECT value FROM meta WHERE key = 'epoch'"
"""What every write turn reads inside its transaction (a cached statement: a few µs)."""
LOCK_SUFFIX = ".lock"

OnFenced = Callable[[PartitionFenced], None]
_on_fenced: contextvars.ContextVar[OnFenced | None] = contextvars.ContextVar(
    "duraflow_on_fenced", default=None
)
_owner = "a duraflow process"


class Holder(msgspec.Struct, frozen=True):
    """Who holds a partition file's lock, as its side file records it.

    Attributes:
        pid: the holder's process ID.
        host: the host name of the machine it runs on.
        owner: what the process is (``"Ray actor <actor ID>"``, or ``"a duraflow process"``).
    """

    pid: int
    host: str
    owner: str

    def __str__(self) -> str:
        return f"{self.owner} (PID {self.pid} on {self.host})"


def set_owner(owner: str) -> None:
    """Name this process in the lock files it takes (a Ray actor gives its actor ID, which
    its restarts keep, so a restart can recognise its own earlier incarnation)."""
    global _owner  # one identity per process, set once at start
    _owner = owner


def lock_path(path: Path) -> Path:
    """The side file whose flock makes one writer of partition file ``path``."""
    return path.with_name(path.name + LOCK_SUFFIX)


def take_lock(path: Path) -> int:
    """Hold an exclusive flock on the side file of ``path`` while the store is open; the open
    descriptor, which releases the lock when closed (:func:`record_holder` then names us).

    A killed process releases it at once. (fcntl/lockf locks on the database file itself are
    silently dropped when any other connection to it closes, so they cannot be used.)

    Raises:
        PartitionUnavailable: another live process (or another store of this one) holds it.
    """
    side = lock_path(path)
    while True:
        fd = os.open(side, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(path)
            by = f" (by {holder})" if holder is not None else ""
            raise PartitionUnavailable(
                f"{path} is open in another live process{by}: a partition file has exactly "
                "one writer. If that owner is stalled and being replaced, open with "
                "takeover=True (README: 'Fencing')"
            ) from None
        # A takeover may have unlinked the side file between our open and our lock: then we
        # hold a lock on a file nobody looks at. Lock the file at the path instead.
        if _same_file(fd, side):
            return fd
        os.close(fd)


def record_holder(fd: int) -> None:
    """Name this process in the side file it holds the lock of (``fd``, from
    :func:`take_lock`), once the file is opened: a refused opening leaves it untouched."""
    record = msgspec.json.encode(Holder(os.getpid(), socket.gethostname(), _owner))
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)


def _same_file(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def read_holder(path: Path) -> Holder | None:
    """Who holds (or last held) the lock of partition file ``path``; None if unknown."""
    try:
        data = lock_path(path).read_bytes()
        return msgspec.json.decode(data, type=Holder)
    except (OSError, msgspec.DecodeError):
        return None


def lock_is_held(path: Path) -> bool:
    """Whether a live process (or another store of this one) holds the lock of ``path``."""
    try:
        fd = os.open(lock_path(path), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if we got it
    return False


def break_lock(path: Path) -> Holder | None:
    """Unlink the lock of ``path`` held by an owner the caller knows to be replaced, so the
    next opening takes a lock of its own and claims a newer epoch (which fences the old owner
    at its next write turn). Only a host that knows the holder is gone or stalled may call it.

    Returns:
        The holder whose lock was broken; None when no one held it (nothing is done).
    """
    if not lock_is_held(path):
        return None
    holder = read_holder(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path(path))
    return holder or Holder(0, "?", "an unknown owner")


def claim_epoch(conn: sqlite3.Connection, path: Path) -> tuple[int, str]:
    """Increment the epoch of the file behind ``conn`` in a transaction of its own.

    Returns:
        The new epoch, and the ``meta`` value that records it: the number and a random tag,
        so that no two openings record the same value, even of a file put back from a backup
        (whose number went back). Turns compare that value.

    Waits (``busy_timeout``) for a turn of the old owner in progress.

    Raises:
        PartitionUnavailable: an old owner stopped in the middle of a turn still holds the
            file's write lock (it commits that turn when it resumes; kill it to go on now).
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):  # SQLITE_BUSY: "database is locked" (3.10 has no code)
            raise
        raise PartitionUnavailable(
            f"{path} is being written by another owner that holds its write lock (stopped in "
            f"the middle of a turn?): it cannot be taken over until that owner resumes or is "
            f"killed; retry then"
        ) from None
    try:
        row = conn.execute(EPOCH_SQL).fetchone()
        epoch = epoch_number(None if row is None else row[0]) + 1
        value = f"{epoch} {secrets.token_hex(4)}"
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (EPOCH_KEY, value),
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return epoch, value


def epoch_number(value: str | None) -> int:
    """The epoch number in a ``meta`` epoch value (0 for none)."""
    try:
        return int((value or "0").split()[0])
    except ValueError:
        return 0


def fenced_error(path: Path, epoch: int, found: str | None) -> PartitionFenced:
    """The error of an owner of epoch ``epoch`` that found the ``meta`` value ``found``."""
    return PartitionFenced(
        f"partition file {path} was taken over by a newer owner (epoch {epoch_number(found)}; "
        f"this owner opened it at epoch {epoch}): this owner writes nothing more and stops"
    )


@contextlib.contextmanager
def fenced_callback(callback: OnFenced) -> Iterator[None]:
    """Within this block, a store opened (``PartitionStore(...)``) calls ``callback`` once,
    on the thread of the turn that found it fenced, before that turn raises."""
    token = _on_fenced.set(callback)
    try:
        yield
    finally:
        _on_fenced.reset(token)


def opening_callback() -> OnFenced | None:
    """The callback set by :func:`fenced_callback` around the current opening, if any."""
    return _on_fenced.get()
