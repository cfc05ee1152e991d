"""Fencing of one partition file: a store opened second (after breaking the first's lock)
fences the first, which then writes nothing; epochs, migrations and the lock's holder record.

Real SQLite files in tmp_path; two stores of one file in one process stand for two owners (a
flock conflicts between two open descriptions of a file even within one process).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import duraflow as df
from benchmarks import bench_fencing
from duraflow.storage import fencing
from duraflow.storage.schema import MIGRATIONS, _statements
from duraflow.storage.sqlite_store import PartitionStore, is_storage_failure


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "p0000.sqlite"


@pytest.fixture
def first(path: Path) -> Iterator[PartitionStore]:
    store = PartitionStore(path, "NORMAL", create=True)
    yield store
    store.close()


def meta(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()


def test_a_store_opened_second_fences_the_first(path: Path, first: PartitionStore) -> None:
    with first.turn():
        first.set_meta("before", "1")
    fenced: list[df.PartitionFenced] = []
    holder = fencing.break_lock(path)
    assert holder is not None and holder.pid > 0
    second = PartitionStore(path, "NORMAL")
    try:
        assert (first.epoch, second.epoch) == (1, 2)
        first._on_fenced = fenced.append  # what a host sets with fenced_callback at opening
        ran = False
        refused = pytest.raises(
            df.PartitionFenced, match="epoch 2; this owner opened it at epoch 1"
        )
        with refused, first.turn():
            ran = True  # never: the turn is refused before its body
            first.set_meta("after", "1")
        assert not ran
        assert isinstance(first.fenced, df.PartitionFenced)
        assert [first.fenced] == fenced  # the host was told once
        # Fenced for good: every later turn is refused without touching the file, and so is
        # a write outside any turn (the connection is query-only); reads still work.
        with pytest.raises(df.PartitionFenced), first.turn():
            pass
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            first.set_meta("outside", "1")
        assert first.get_meta("before") == "1"
        assert len(fenced) == 1
        # The new owner writes as usual.
        with second.turn():
            second.set_meta("by_second", "1")
    finally:
        second.close()
    found = meta(path)
    assert {"before": "1", "by_second": "1"}.items() <= found.items()
    assert fencing.epoch_number(found["epoch"]) == 2
    assert "after" not in found and "outside" not in found


def test_an_owner_is_fenced_even_when_the_epoch_number_went_back(
    path: Path, first: PartitionStore
) -> None:
    """A file put back from a backup in place (epoch 1 again) and opened anew: the new owner's
    epoch number is the first's, but its record is not."""
    assert first.epoch == 1
    fencing.break_lock(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE meta SET value = '0 0a0b0c0d' WHERE key = 'epoch'")
    conn.close()
    second = PartitionStore(path, "NORMAL")
    try:
        assert second.epoch == first.epoch
        with pytest.raises(df.PartitionFenced), first.turn():
            pass
    finally:
        second.close()


def test_a_fenced_turn_counts_as_a_storage_failure_and_is_retriable(
    path: Path, first: PartitionStore
) -> None:
    fencing.break_lock(path)
    PartitionStore(path, "NORMAL").close()
    with pytest.raises(df.PartitionFenced) as raised, first.turn():
        pass
    assert is_storage_failure(raised.value)  # the partition fails the turn as retriable
    assert isinstance(raised.value, df.PartitionUnavailable)


def test_without_a_takeover_a_held_file_is_refused_naming_its_holder(
    path: Path, first: PartitionStore
) -> None:
    with pytest.raises(df.PartitionUnavailable, match="open in another live process") as raised:
        PartitionStore(path, "NORMAL")
    assert "a duraflow process (PID" in str(raised.value)
    assert "takeover=True" in str(raised.value)
    with first.turn():  # the refused opening claimed nothing
        first.set_meta("still_mine", "1")


def test_every_opening_increments_the_epoch(path: Path) -> None:
    epochs = []
    for _ in range(3):
        store = PartitionStore(path, "NORMAL", create=not path.exists())
        epochs.append(store.epoch)
        store.close()
    assert [1, 2, 3] == epochs
    number, tag = meta(path)["epoch"].split()
    assert number == "3" and len(tag) == 8


def test_a_file_made_before_epochs_gets_one(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.close()
    store = PartitionStore(path, "NORMAL")
    try:
        assert store.epoch == 1
        with store.turn():
            store.set_meta("x", "1")
    finally:
        store.close()
    assert fencing.epoch_number(meta(path)["epoch"]) == 1


def test_breaking_a_free_lock_does_nothing(path: Path) -> None:
    PartitionStore(path, "NORMAL", create=True).close()
    assert fencing.break_lock(path) is None
    assert fencing.lock_path(path).exists()
    PartitionStore(path, "NORMAL").close()  # and the file opens as usual


def test_the_lock_file_names_its_holder(path: Path) -> None:
    fencing.set_owner("Ray actor abc123")
    try:
        store = PartitionStore(path, "NORMAL", create=True)
    finally:
        fencing.set_owner("a duraflow process")
    try:
        holder = fencing.read_holder(path)
        assert holder is not None and holder.owner == "Ray actor abc123"
        assert fencing.lock_is_held(path)
    finally:
        store.close()
    assert not fencing.lock_is_held(path)


def test_closing_a_store_twice_is_harmless(path: Path) -> None:
    store = PartitionStore(path, "NORMAL", create=True)
    store.close()
    store.close()
    PartitionStore(path, "NORMAL").close()


def test_the_turn_benchmark_runs() -> None:
    row = bench_fencing.measure("OFF", 200)
    assert row["turns_each"] == 200
    assert row["checked_turn_us"] > 0 and row["unchecked_turn_us"] > 0
    assert 0 < row["epoch_read_us"] < 1000
