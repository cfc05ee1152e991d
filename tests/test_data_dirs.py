"""Data directories copied, moved, edited, truncated or unusable: refused with an error naming
the path, never opened in a way that damages them or another data directory.

Every test works on real data directories: made by an engine, then copied with
``shutil.copytree``, moved with ``os.rename``, truncated or overwritten on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import duraflow as df
from duraflow.cli.main import main
from duraflow.config import DEFAULT_PARTITIONS
from duraflow.runtime import relocate_archive
from duraflow.storage.deployment import partition_stamp
from duraflow.storage.layout import partition_path
from duraflow.storage.sqlite_store import PartitionStore

PARTITIONS = 2
NOBODY = 65534


@df.activity(inline=True)
def dd_double(x: int) -> int:
    return 2 * x


@df.workflow
async def dd_flow(ctx: df.WorkflowContext, x: int) -> int:
    return await ctx.activity(dd_double, x)


def open_engine(data_dir: Path, **options: object) -> df.Engine:
    return df.Engine(
        data_dir,
        runtime="local",
        partitions=PARTITIONS,
        synchronous="NORMAL",
        archive_interval="1h",  # commits only when a test asks (commit_archive)
        **options,  # type: ignore[arg-type]  # reason: the options tests pass are typed by Engine
    )


def run_flows(data_dir: Path, prefix: str, count: int, **options: object) -> None:
    """Run ``count`` workflows to completion, archive them, and expire old snapshots (which
    deletes the files only they referenced: the writes and deletions a copy must not do to
    its original)."""
    with open_engine(data_dir, **options) as engine:
        client = engine.client()
        handles = [client.start(dd_flow, i, workflow_id=f"{prefix}-{i}") for i in range(count)]
        assert [2 * i for i in range(count)] == [h.result(timeout=30) for h in handles]
        assert engine.sync_archive(timeout=30)
        engine.commit_archive()
        engine.maintain_archive(keep_snapshots=0)


def archived(data_dir: Path) -> set[str]:
    """The workflow IDs in the archive's ``workflows`` table, read by a fresh engine."""
    with open_engine(data_dir) as engine:
        rows = engine.client().sql("SELECT workflow_id FROM workflows").to_pylist()
    return {row["workflow_id"] for row in rows}


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its SHA-256 and modification time."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def used_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory that ran and archived six workflows; tests copy it, never use it."""
    path = tmp_path_factory.mktemp("used") / "data"
    run_flows(path, "old", 6)
    return path


@pytest.fixture
def data_dir(used_data_dir: Path, tmp_path: Path) -> Path:
    """A copy of ``used_data_dir`` whose archive was pointed at its own files."""
    copy = shutil.copytree(used_data_dir, tmp_path / "data")
    assert 0 == main(["relocate-archive", "--data-dir", str(copy)])
    return copy


# -- copies and moves ----------------------------------------------------------------------------


def test_a_copy_never_writes_to_or_deletes_from_the_original(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = data_dir
    run_flows(original, "mine", 2)  # the original in use, before it is copied
    before = fingerprint(original)
    copy = shutil.copytree(original, tmp_path / "copy")

    # The copy's catalog names the original's tables: opening it is refused, ...
    with pytest.raises(df.ConfigurationError) as refused:
        open_engine(copy)
    message = str(refused.value)
    assert f"records its tables in file://{original}/archive/warehouse" in message
    assert f"duraflow relocate-archive --data-dir {copy}" in message
    assert 2 == main(["sql", "--data-dir", str(copy), "SELECT 1"])  # reading it too
    assert "copied or moved" in capsys.readouterr().err

    # ... until its archive is pointed at its own files; then it runs 24 workflows of its
    # own, commits, expires and compacts, and the original's files stay byte for byte.
    assert 0 == main(["relocate-archive", "--data-dir", str(copy)])
    assert f"Relocated the archive of {copy}" in capsys.readouterr().out
    run_flows(copy, "copy", 24)
    assert before == fingerprint(original)
    expected = {f"old-{i}" for i in range(6)} | {"mine-0", "mine-1"}
    assert expected | {f"copy-{i}" for i in range(24)} == archived(copy)
    assert expected == archived(original)  # both were opened again: still apart


def test_a_moved_data_dir_is_refused_until_relocated(used_data_dir: Path, tmp_path: Path) -> None:
    first = shutil.copytree(used_data_dir, tmp_path / "first")
    assert 0 == main(["relocate-archive", "--data-dir", str(first)])
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    os.rename(first, moved)

    with pytest.raises(df.ConfigurationError, match="copied or moved"):
        open_engine(moved)
    assert 0 == main(["relocate-archive", "--data-dir", str(moved)])
    assert 0 == main(["relocate-archive", "--data-dir", str(moved)])  # at its place: no-op
    run_flows(moved, "new", 3)
    assert {f"old-{i}" for i in range(6)} | {f"new-{i}" for i in range(3)} == archived(moved)


def test_relocating_refuses_an_incomplete_copy(used_data_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(used_data_dir, tmp_path / "copy")
    catalog = copy / "archive" / "catalog.sqlite"
    before = catalog.read_bytes()
    shutil.rmtree(copy / "archive" / "warehouse" / "duraflow" / "history" / "metadata")

    with pytest.raises(df.ConfigurationError, match=r"cannot relocate table history: .* missing"):
        relocate_archive(copy)
    assert before == catalog.read_bytes()  # the catalog is replaced only when all is done
    assert not (copy / "archive" / "catalog.sqlite.relocating").exists()


# -- deployment.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            lambda r: {**r, "partitions": 3}, "created for 2 partitions, but", id="more-partitions"
        ),
        pytest.param(
            lambda r: {**r, "partitions": 1}, "created for 2 partitions, but", id="fewer-partitions"
        ),
        pytest.param(lambda r: {**r, "partitions": 0}, r"Expected `int` >= 1", id="zero"),
        pytest.param(lambda r: {**r, "partitions": -2}, r"Expected `int` >= 1", id="negative"),
        pytest.param(lambda r: {**r, "id": "f" * 32}, "belongs to another deployment", id="id"),
        pytest.param(lambda r: b"\x00{not json", "not a valid deployment record", id="garbage"),
        pytest.param(lambda r: b"", "not a valid deployment record", id="empty"),
        pytest.param(lambda r: None, "no deployment.json", id="deleted"),
    ],
)
def test_an_edited_deployment_record_is_refused(data_dir: Path, edit: object, message: str) -> None:
    record = data_dir / "deployment.json"
    edited = edit(json.loads(record.read_bytes()))  # type: ignore[operator]  # reason: a lambda
    if edited is None:
        record.unlink()
    else:
        record.write_bytes(edited if isinstance(edited, bytes) else json.dumps(edited).encode())
    partitions = fingerprint(data_dir / "partitions")

    with pytest.raises(df.ConfigurationError, match=message) as refused:
        df.Engine(data_dir, runtime="local")  # no partition count: the recorded one
    assert str(data_dir) in str(refused.value)
    assert partitions == fingerprint(data_dir / "partitions")  # nothing started over
    assert [] == sorted(p.name for p in (data_dir / "partitions").glob("p0002*"))


def test_a_record_without_any_partition_file_is_refused(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "partitions")
    with pytest.raises(df.ConfigurationError, match="holds no partition file"):
        df.Engine(data_dir, runtime="local")
    assert not (data_dir / "partitions").exists()


def test_a_deployment_record_from_before_ids_is_given_one(data_dir: Path) -> None:
    record = data_dir / "deployment.json"
    record.write_text(json.dumps({"partitions": PARTITIONS, "format": 1}))
    for index in range(PARTITIONS):
        with sqlite3.connect(partition_path(data_dir, index)) as conn:
            conn.execute(
                "DELETE FROM meta WHERE key IN ('deployment_id', 'partition', 'partitions')"
            )

    run_flows(data_dir, "new", 2)
    new_id = json.loads(record.read_text())["id"]
    assert 32 == len(new_id)
    for index in range(PARTITIONS):
        with sqlite3.connect(partition_path(data_dir, index)) as conn:
            stamp = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        assert (new_id, str(index), "2") == (
            stamp["deployment_id"],
            stamp["partition"],
            stamp["partitions"],
        )


def test_a_first_start_cut_short_before_its_record_starts_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for index in range(PARTITIONS):  # files made, then the process died: no deployment.json
        PartitionStore(partition_path(data_dir, index), create=True).close()
    (data_dir / "partitions" / "p0001.sqlite").write_bytes(b"")  # even one made half way

    with df.Engine(data_dir, runtime="local", archive=False) as engine:
        assert DEFAULT_PARTITIONS == engine.deployment.partitions
        assert 2 == engine.client().start(dd_flow, 1, workflow_id="w").result(timeout=30)


# -- partition files -----------------------------------------------------------------------------


def _truncate_half(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)


def _drop_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE workflows; DROP TABLE meta; PRAGMA user_version = 0")
    conn.close()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)", id="zero-bytes"),
        pytest.param(
            lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
            "is not a SQLite database",
            id="garbage",
        ),
        pytest.param(_truncate_half, "is cut short", id="truncated-half"),
        pytest.param(lambda p: p.unlink(), "is missing", id="deleted"),
        pytest.param(
            lambda p: shutil.copyfile(p.with_name("p0000.sqlite"), p),
            "holds partition 0, not partition 1",
            id="swapped",
        ),
        pytest.param(
            _drop_schema,
            "not a duraflow partition file",
            id="other-sqlite",
        ),
    ],
)
def test_a_damaged_partition_file_is_refused_never_started_over(
    data_dir: Path, damage: object, message: str
) -> None:
    path = partition_path(data_dir, 1)
    damage(path)  # type: ignore[operator]  # reason: a lambda
    left = fingerprint(data_dir / "partitions")

    with pytest.raises(df.ConfigurationError, match=message) as refused:
        open_engine(data_dir)
    assert f"partition file {path}" in str(refused.value)
    assert left == fingerprint(data_dir / "partitions")  # not recreated, not touched
    with pytest.raises(df.ConfigurationError, match=message):  # nor by the partition itself
        PartitionStore(path, stamp=partition_stamp(data_dir, 1))
    assert left == fingerprint(data_dir / "partitions")


def test_a_partition_file_of_another_deployment_is_refused(data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    df.Engine(other, runtime="local", partitions=PARTITIONS, archive=False).close()
    shutil.copyfile(partition_path(other, 1), partition_path(data_dir, 1))

    with pytest.raises(df.ConfigurationError, match="belongs to another deployment"):
        open_engine(data_dir)


def test_a_partition_file_restored_from_a_backup_opens(data_dir: Path, tmp_path: Path) -> None:
    """The README's recipe: with no engine open, put the file back from a backup of the same
    data directory."""
    backup = shutil.copytree(data_dir / "partitions", tmp_path / "backup")
    path = partition_path(data_dir, 0)
    path.write_bytes(b"")
    with pytest.raises(df.ConfigurationError, match="is empty"):
        open_engine(data_dir)

    shutil.copyfile(backup / path.name, path)
    with open_engine(data_dir) as engine:
        client = engine.client()
        assert {f"old-{i}" for i in range(6)} == {d.workflow_id for d in client.list()}
        assert 14 == client.start(dd_flow, 7, workflow_id="after").result(timeout=30)


def test_a_partition_file_older_than_the_archive_numbers_new_events_above_it(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A partition file put back from an older backup while the archive is newer: the
    archive holds LSNs the file never reached, and new events numbered from the file's own
    end would be taken for archived ones and dropped (1 of 6 new runs went missing)."""
    path = partition_path(data_dir, 0)
    backup = shutil.copyfile(path, tmp_path / "p0000.backup")
    run_flows(data_dir, "later", 6)  # archived: the archive's offsets move past the backup
    shutil.copyfile(backup, path)

    run_flows(data_dir, "again", 6)
    assert "is older than the archive" in caplog.text
    expected = {f"{prefix}-{i}" for prefix in ("old", "later", "again") for i in range(6)}
    assert expected == archived(data_dir)


# -- data directories that cannot be used -------------------------------------------------------


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory")
    with pytest.raises(df.ConfigurationError, match=f"data directory {re.escape(str(file))} is"):
        df.Engine(file, runtime="local")
    with pytest.raises(df.ConfigurationError, match="or a folder above it, is a file"):
        df.Engine(file / "below", runtime="local")
    assert "not a directory" == file.read_text()


def test_a_data_dir_path_with_a_nul_is_refused(tmp_path: Path) -> None:
    bad = f"{tmp_path}/da\0ta"
    with pytest.raises(df.ConfigurationError, match="NUL character") as refused:
        df.Engine(bad, runtime="local")
    assert repr(bad) in str(refused.value)
    assert 2 == main(["serve", "--data-dir", bad, "--address", "127.0.0.1:1"])


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="duraflow-ro-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.rglob("*"):
            sub.chmod(0o755)
        shutil.rmtree(path)


def _open_as(uid: int, data_dir: Path) -> str:
    """Open an engine over ``data_dir`` in a child process running as ``uid``; returns the
    error's type and message (or "opened")."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery past this point, always os._exit
        try:
            os.close(read)
            if uid != os.getuid():
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(uid)
            try:
                df.Engine(data_dir, runtime="local", archive=False).close()
                outcome = "opened"
            except Exception as exc:  # reason: report any error to the parent
                outcome = f"{type(exc).__name__}: {exc}"
            os.write(write, outcome.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


def test_a_read_only_data_dir_is_refused(shared_dir: Path) -> None:
    """chmod does not stop root, so as root the engine is opened by a child process that
    first becomes the unprivileged user ``nobody`` (the data directories are its own)."""
    uid, gid = (NOBODY, NOBODY) if os.getuid() == 0 else (os.getuid(), os.getgid())
    read_only = shared_dir / "read-only"
    read_only.mkdir()
    parent = shared_dir / "parent"
    parent.mkdir()
    for path in (read_only, parent):
        os.chown(path, uid, gid)
        path.chmod(0o555)

    outcome = _open_as(uid, read_only)
    assert outcome.startswith("ConfigurationError: "), outcome
    assert f"data directory {read_only} is not writable by this process (uid {uid})" in outcome
    outcome = _open_as(uid, parent / "data")
    assert outcome.startswith("ConfigurationError: "), outcome
    assert f"cannot create data directory {parent / 'data'}: Permission denied" in outcome
    assert [] == list(read_only.iterdir())
