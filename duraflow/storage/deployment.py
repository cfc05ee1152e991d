"""The deployment record (``deployment.json``) and the partition files it vouches for.

A data directory is created once: its partition files first, each stamped with a new random
deployment ID, then ``deployment.json`` (partition count and that ID), written last and
atomically. So a ``deployment.json`` means every partition file it counts was made: a file
that is missing, empty or damaged, a file of another deployment, and a record edited to
another count are refused (``storage/partition_file.py``) rather than started empty over.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated

import msgspec

from duraflow.config import DEFAULT_PARTITIONS, check_partitions
from duraflow.errors import ConfigurationError
from duraflow.storage import layout
from duraflow.storage.partition_file import FileStamp, check_stamp, inspect_file
from duraflow.storage.sqlite_store import PartitionStore

log = logging.getLogger("duraflow.deployment")

DATA_FORMAT = 1


class Deployment(msgspec.Struct, frozen=True):
    """What a data directory was created with; fixed for its lifetime.

    Attributes:
        partitions: the partition count (workflow IDs are routed by it).
        format: the data format version.
        id: a random ID, also stamped in every partition file ("" in records written before
            IDs existed: the next opening gives it one).
    """

    partitions: Annotated[int, msgspec.Meta(ge=1)]
    format: int = DATA_FORMAT
    id: str = ""

    def stamp(self, index: int) -> FileStamp:
        """What partition ``index``'s file must record."""
        return FileStamp(self.id, index, self.partitions)


def read_deployment(data_dir: Path) -> Deployment | None:
    """The deployment record of ``data_dir``, None when it has none. Writes nothing.

    Raises:
        ConfigurationError: the record cannot be read or says something impossible (the
            message names the file).
    """
    path = layout.deployment_path(data_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise ConfigurationError(
            f"data directory {data_dir} is not a directory (it, or a folder above it, is a file)"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        recorded = msgspec.json.decode(data, type=Deployment)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ConfigurationError(
            f"{path} is not a valid deployment record ({exc}): restore it from a backup of "
            'this data directory; it reads like {"partitions": 4, "format": 1, "id": "..."}, '
            "with the partition count the data directory was created with"
        ) from None
    if recorded.format > DATA_FORMAT:
        raise ConfigurationError(
            f"{path} has data format {recorded.format}; this duraflow reads format "
            f"{DATA_FORMAT} and older: upgrade duraflow"
        )
    return recorded


def recorded_partitions(data_dir: Path, partitions: int | None) -> int:
    """The partition count of ``data_dir``: the recorded one, or for a new data directory
    ``partitions`` (default 4). Writes nothing.

    Raises:
        ConfigurationError: ``partitions`` differs from the recorded count, or is not a whole
            number from 1 to 1,024; the record cannot be read.
    """
    if partitions is not None:
        check_partitions(partitions)
    recorded = read_deployment(data_dir)
    if recorded is not None:
        if partitions is not None and partitions != recorded.partitions:
            raise ConfigurationError(
                f"{data_dir} was created with partitions={recorded.partitions}; it cannot be "
                f"opened with partitions={partitions} (workflow IDs are routed by that number)"
            )
        return recorded.partitions
    return DEFAULT_PARTITIONS if partitions is None else partitions


def open_deployment(
    data_dir: Path,
    partitions: int | None,
    synchronous: str,
    archived: Mapping[int, int] | None = None,
) -> Deployment:
    """Check ``data_dir`` and its partition files; on first start, create them.

    ``archived`` is the highest LSN the archive holds of each partition. A partition file
    whose LSNs end below it is older than the archive (put back from an older backup): its
    new events must be numbered above what the archive holds, or the archive would take
    them for events it has and drop them. Such a file records the archive's LSN as its
    ``archived_lsn``, from which the partition numbers its events (a warning says so).

    Raises:
        ConfigurationError: the data directory is a file, cannot be created or written;
            ``partitions`` differs from the recorded count; the record or a partition file
            is missing, damaged or from another deployment (the message names the file).
        PartitionUnavailable: another live process holds a partition file being created.
    """
    check_data_dir(data_dir)
    count = recorded_partitions(data_dir, partitions)
    with _deployment_lock(data_dir):
        recorded = read_deployment(data_dir)
        if recorded is None:
            recorded = _create(data_dir, count, synchronous)
        elif not recorded.id:  # written before deployment IDs: files are stamped at open
            recorded = msgspec.structs.replace(recorded, id=uuid.uuid4().hex)
            _write_record(data_dir, recorded)
        tops = check_partition_files(data_dir, recorded)
        for index, top in tops.items():
            floor = (archived or {}).get(index, 0)
            if floor > top:
                _raise_lsn(layout.partition_path(data_dir, index), recorded, index, top, floor)
    return recorded


def partition_stamp(data_dir: Path, index: int) -> FileStamp:
    """What partition ``index``'s file must record, from ``data_dir``'s deployment record.

    Raises:
        ConfigurationError: the record is missing, cannot be read, or has no ID yet.
    """
    recorded = read_deployment(data_dir)
    if recorded is None or not recorded.id:
        raise ConfigurationError(
            f"{layout.deployment_path(data_dir)} is missing or has no deployment ID: open the "
            "data directory with df.Engine or 'duraflow serve', which create and check it"
        )
    return recorded.stamp(index)


def check_partition_files(data_dir: Path, recorded: Deployment) -> dict[int, int]:
    """Refuse partition files that are missing, damaged, extra or from another deployment.

    Returns:
        Each partition's highest LSN (its own, or the archived one it recorded).

    Raises:
        ConfigurationError: naming the first file that is wrong and how.
    """
    present = layout.partition_files(data_dir)
    if not present:
        raise ConfigurationError(
            f"{layout.deployment_path(data_dir)} says {recorded.partitions} partitions, but "
            f"{layout.partitions_dir(data_dir)} holds no partition file: restore that folder "
            "from a backup of this data directory; if this data directory never ran a "
            "workflow, remove deployment.json to start it anew"
        )
    extra = sorted(i for i in present if i >= recorded.partitions)
    tops = {}
    for index in range(recorded.partitions):
        path = layout.partition_path(data_dir, index)
        stamp, tops[index] = inspect_file(path)
        check_stamp(path, stamp, recorded.stamp(index))
    if extra:
        raise ConfigurationError(
            f"{layout.deployment_path(data_dir)} says partitions={recorded.partitions}, but "
            f"{present[extra[0]]} exists too: deployment.json was edited or replaced; restore "
            "it (the partition count cannot change: workflow IDs are routed by it)"
        )
    return tops


def _raise_lsn(path: Path, recorded: Deployment, index: int, top: int, floor: int) -> None:
    log.warning(
        "partition file %s ends at LSN %d, but the archive holds its events up to LSN %d: "
        "it is older than the archive (put back from a backup?); its new events are "
        "numbered from %d on, and the runs it lost since its backup are only in the archive",
        path,
        top,
        floor,
        floor + 1,
    )
    store = PartitionStore(path, "FULL", stamp=recorded.stamp(index))
    try:
        with store.turn():
            store.set_meta("archived_lsn", str(floor))
    finally:
        store.close()


def check_data_dir(data_dir: Path) -> None:
    """Make sure ``data_dir`` is a directory this process can write, creating it if needed.

    Raises:
        ConfigurationError: it (or a parent) is a file, it cannot be created, or it is not
            writable.
    """
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigurationError(f"data directory {data_dir} is a file, not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create data directory {data_dir}: {exc.strerror or exc}"
        ) from None
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"data directory {data_dir} is not writable by this process (uid {os.getuid()}): "
            "fix its owner or mode, or choose another data directory"
        )


@contextlib.contextmanager
def _deployment_lock(data_dir: Path) -> Iterator[None]:
    """Two processes opening a new data directory at once: one creates, the other waits."""
    fd = os.open(layout.deployment_lock_path(data_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create(data_dir: Path, count: int, synchronous: str) -> Deployment:
    """Make the partition files, then the record (last, so a record means the files exist)."""
    present = layout.partition_files(data_dir)
    for path in present.values():
        _remove_unused(data_dir, path)
    recorded = Deployment(partitions=count, id=uuid.uuid4().hex)
    for index in range(count):
        store = PartitionStore(
            layout.partition_path(data_dir, index),
            synchronous,
            stamp=recorded.stamp(index),
            create=True,
        )
        store.close()
    _write_record(data_dir, recorded)
    return recorded


def _remove_unused(data_dir: Path, path: Path) -> None:
    """Remove a partition file left by a first opening that stopped before writing
    ``deployment.json``; refuse to touch one that holds anything."""
    if path.stat().st_size > 0:
        try:
            _, top = inspect_file(path)
        except ConfigurationError:
            top = -1
        if top != 0:  # a run's start records events: no LSN, no run
            raise ConfigurationError(
                f"{data_dir} has partition files ({path} first) but no deployment.json: it "
                "was deleted, or never copied; restore it from a backup of this data "
                "directory (it names the partition count and the deployment ID, which each "
                "partition file records in its meta table)"
            )
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _write_record(data_dir: Path, recorded: Deployment) -> None:
    path = layout.deployment_path(data_dir)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as file:
        file.write(msgspec.json.encode(recorded))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives power loss
    finally:
        os.close(fd)
