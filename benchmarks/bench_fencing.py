"""What fencing costs a turn: ``PartitionStore.turn()`` (which reads the epoch inside its
transaction) against the same turn without the check, on the same file, interleaved.

For each ``synchronous`` mode, ``--turns`` turns each way that each write one history row (W1 at
1,500 workflows/s makes about 1,500 turns/s at most: one turn carries many workflows) are timed
two ways, alternating in blocks so that both see the same disk and cache:

  checked    ``with store.turn(): store.append_events([...])``: BEGIN IMMEDIATE, the epoch
             read and compared, the insert, COMMIT (what every partition turn does)
  unchecked  the same, through a copy of ``turn()`` without the epoch read (on the store's
             own connection)

and the epoch read alone (``SELECT value FROM meta WHERE key = 'epoch'`` and the compare,
inside an open transaction) is timed over many repetitions.

  python -m benchmarks fencing [--turns 3000] [--modes OFF,NORMAL,FULL]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, write_json
from duraflow.cdc.events import SignalReceived
from duraflow.storage import fencing
from duraflow.storage.sqlite_store import PartitionStore

BLOCK = 100
"""Turns per block; checked and unchecked blocks alternate."""


def _event(lsn: int) -> SignalReceived:
    return SignalReceived(
        workflow_id="bench",
        run_id="run",
        workflow_type="bench",
        event_id=lsn,
        lsn=lsn,
        at_us=lsn,
        name="go",
        payload=b"x" * 100,
    )


def measure(synchronous: str, turns: int) -> dict[str, Any]:
    """µs per turn, checked and unchecked, and µs per epoch read, for one mode."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p0000.sqlite"
        store = PartitionStore(path, synchronous, create=True)
        try:
            checked, unchecked, lsn = [], [], 0
            ways = [(store.turn, checked), (lambda: _unchecked_turn(store), unchecked)]
            for block in range(max(1, turns // BLOCK)):
                for turn, times in ways[block % 2 :] + ways[: block % 2]:  # each goes first
                    began = time.perf_counter()
                    for _ in range(BLOCK):
                        lsn += 1
                        with turn():
                            store.append_events([_event(lsn)])
                    times.append((time.perf_counter() - began) / BLOCK)
            read_us = _epoch_read_us(store, store.get_meta("epoch") or "")
        finally:
            store.close()
    checked_us = statistics.median(checked) * 1e6
    unchecked_us = statistics.median(unchecked) * 1e6
    return {
        "synchronous": synchronous,
        "turns_each": BLOCK * len(checked),
        "checked_turn_us": round(checked_us, 2),
        "unchecked_turn_us": round(unchecked_us, 2),
        "difference_us": round(checked_us - unchecked_us, 2),
        "epoch_read_us": round(read_us, 2),
    }


@contextlib.contextmanager
def _unchecked_turn(store: PartitionStore) -> Iterator[None]:
    """``PartitionStore.turn()`` as it was before fencing: no epoch read."""
    conn = store._conn  # reason: the benchmark compares the store's own turn with and without
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _epoch_read_us(store: PartitionStore, mine: str, repeats: int = 20_000) -> float:
    conn = store._conn  # reason: the read alone, as turn() makes it, inside a transaction
    conn.execute("BEGIN IMMEDIATE")
    try:
        began = time.perf_counter()
        for _ in range(repeats):
            found = conn.execute(fencing.EPOCH_SQL).fetchone()
            if found is None or found[0] != mine:
                raise AssertionError(f"epoch {found} is not {mine}")
        return (time.perf_counter() - began) / repeats * 1e6
    finally:
        conn.execute("ROLLBACK")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fencing", description=__doc__)
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--modes", default="OFF,NORMAL,FULL")
    args = parser.parse_args(argv)
    rows = [measure(mode, args.turns) for mode in args.modes.split(",")]
    print(f"{'synchronous':<12}{'turns':>7}{'checked':>11}{'unchecked':>11}{'diff':>9}{'read':>8}")
    for r in rows:
        print(
            f"{r['synchronous']:<12}{r['turns_each']:>7}{r['checked_turn_us']:>9.1f}us"
            f"{r['unchecked_turn_us']:>9.1f}us{r['difference_us']:>7.1f}us"
            f"{r['epoch_read_us']:>6.1f}us"
        )
    results = {"fencing": rows}
    write_json(RESULTS_DIR / "fencing.json", results)
    return results


if __name__ == "__main__":
    main()
