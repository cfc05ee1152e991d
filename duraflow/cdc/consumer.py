"""Stream consumer: each partition's change log → warm Parquet segments → Iceberg.

One consumer per deployment (a thread of the engine in-process, a Ray actor on Ray). It
long-polls every partition for events after the last LSN it holds, writes each batch as a warm
Parquet segment at once (queryable within about a second), and every ``archive_interval_s``
commits the warm segments to the Iceberg tables ``history``, ``workflows`` and ``activities``
with their offsets in the same transaction (exactly once: after a crash anywhere it resumes
from the archive's offsets and the segments left on disk). After each commit it tells every
partition how far the archive reaches (``Archived``), so closed runs past their retention can
leave the partition's file. It reads partitions only through the Host, never their files.

Where the CPU goes, and what keeps it low: every read and every segment has a fixed cost, so
after a read that emptied a partition the consumer lingers (``READ_LINGER_S``) before the next;
a segment's rows stay in memory until their commit (the files are for crash recovery and for
readers); and since every Iceberg commit costs more the more snapshots a table keeps, the
consumer expires all but the last few (``KEEP_SNAPSHOTS``) after its commits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from duraflow.actors import messages as m
from duraflow.backoff import retry_async
from duraflow.cdc.events import decode_event
from duraflow.cdc.stream import POLL_WAIT_S, ChangeLogReader
from duraflow.config import EngineConfig
from duraflow.loop_thread import LoopThread
from duraflow.storage.archive_schema import history_rows
from duraflow.storage.catalog import Archive, open_archive
from duraflow.storage.iceberg import archive_batch, resume_offsets
from duraflow.storage.iceberg_upkeep import compact, days, expire, expire_all_but
from duraflow.storage.layout import archive_paths
from duraflow.storage.warm import (
    Segment,
    delete_segments,
    list_segments,
    read_segments,
    write_segment,
)

if TYPE_CHECKING:
    from duraflow.client.host import Host

log = logging.getLogger("duraflow.consumer")

READ_BATCH = 5000
"""Events read from one partition per request."""
READ_LINGER_S = 0.5
"""After a read that took everything a partition had, how long to wait before the next: each
read and each warm segment costs about a millisecond of CPU whatever its size, so reading
every few events would cost far more per event than reading larger batches less often. It
adds up to this much to the moment an event is queryable; :meth:`Consumer.caught_up` cuts it
short (see ``cdc/stream.py``)."""
KEEP_SNAPSHOTS = 8
"""Snapshots each table keeps: after a commit the consumer expires older ones (the cost of
every Iceberg commit grows with the snapshots a table holds, ~1 ms per snapshot per table)."""
SNAPSHOT_MIN_AGE_S = 10.0
"""Snapshots younger than this are never expired (a reader may be planning its files)."""
PENDING_ROWS_IN_MEMORY = 1_000_000
"""Warm rows kept in memory until their commit (above this, a commit reads them back from
their segments: the commit is behind, say a warehouse that is down)."""
OPEN_RETRY_FIRST_S = 0.5
"""First pause before opening again an archive that could not be opened."""
OPEN_RETRY_MAX_S = 10.0
"""Longest pause between attempts to open an archive that cannot be opened (S3 down, say)."""


@dataclass
class ConsumerStats:
    """Counters for status and benchmarks."""

    events_read: int = 0
    segments_written: int = 0
    commits: int = 0
    rows_committed: int = 0
    offsets: dict[int, int] = field(default_factory=dict)
    last_error: str | None = None


class Consumer:
    """Moves every partition's events into the archive of ``config`` (its ``data_dir``,
    ``warehouse``, ``s3``, ``archive_interval_s``). Run :meth:`run` on an event loop."""

    def __init__(self, host: Host, config: EngineConfig) -> None:
        self._host = host
        self.config = config
        self._root, self._warm = archive_paths(Path(config.data_dir))
        self._warehouse = config.warehouse
        self._s3 = config.s3
        self._interval = config.archive_interval_s
        self._archive: Archive | None = None
        self.stats = ConsumerStats()
        self._reader: ChangeLogReader | None = None  # made once the archive's offsets are known
        self._committed: dict[int, int] = {}  # what all three tables hold, for all we know
        self._pending: list[tuple[Segment, pa.Table | None]] = []  # rows: None = on disk only
        self._pending_rows = 0
        self._ready = asyncio.Event()
        self._committing = asyncio.Lock()  # one committer: the timer's round or a caller's
        self._duckdb: duckdb.DuckDBPyConnection | None = None  # used under _committing only

    def _scrub(self, text: str) -> str:
        """``text`` without the S3 credentials (for logs and status)."""
        return self._s3.scrub(text) if self._s3 is not None else text

    def _open_archive(self) -> tuple[Archive, dict[int, int]]:
        archive = open_archive(self._root, warehouse=self._warehouse, s3=self._s3)
        return archive, resume_offsets(archive)

    async def _open(self) -> tuple[Archive, dict[int, int]]:
        """Open the archive and read its offsets, retrying while that fails (a warehouse that
        is down or not there yet); ``last_error`` and the log say why meanwhile."""

        def note(exc: Exception) -> None:
            self.stats.last_error = self._scrub(f"open archive: {exc!r}")
            log.warning("cannot open the archive; retrying: %s", self.stats.last_error)

        return await retry_async(
            lambda: asyncio.to_thread(self._open_archive),
            retry_on=(Exception,),
            deadline=None,
            on_retry=note,
            first_wait_s=OPEN_RETRY_FIRST_S,
            max_wait_s=OPEN_RETRY_MAX_S,
        )

    async def run(self) -> None:
        """Read, write warm segments and commit, until cancelled."""
        self._archive, committed = await self._open()
        self._warm.mkdir(parents=True, exist_ok=True)
        self._committed = dict(committed)
        read_from = dict(committed)
        for segment in list_segments(self._warm):  # written before a crash, not committed yet
            read_from[segment.partition] = max(
                read_from.get(segment.partition, 0), segment.last_lsn
            )
            self._pending.append((segment, None))
        reader = self._reader = ChangeLogReader(
            self._host,
            read_from,
            limit=READ_BATCH,
            linger_s=READ_LINGER_S,
            on_read_error=self._read_failed,
        )
        self._ready.set()
        followers = [
            asyncio.create_task(reader.follow(p, self._write)) for p in range(self._host.partitions)
        ]
        try:
            await self._commit_forever()
        finally:
            for task in followers:
                task.cancel()
            for task in followers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _read_failed(self, partition: int, exc: Exception) -> None:
        """A read failed (a restarting partition, say): the reader tries again shortly."""
        self.stats.last_error = self._scrub(f"read partition {partition}: {exc!r}")

    async def _write(self, partition: int, batch: m.EventBatch) -> bool:
        """Write a batch of events as a warm segment; False (read them again later) when it
        cannot be written."""
        if not batch.events:
            return True
        rows = history_rows([decode_event(body) for body in batch.events], batch.events)
        try:
            segment = await asyncio.to_thread(write_segment, self._warm, rows)
        except OSError as exc:  # a full disk, say: read the same events again later
            self.stats.last_error = f"write warm segment of partition {partition}: {exc!r}"
            log.warning("%s; retrying", self.stats.last_error)
            await asyncio.sleep(POLL_WAIT_S)
            return False
        self._keep(segment, rows)
        self.stats.events_read += len(batch.events)
        self.stats.segments_written += 1
        return True

    def _keep(self, segment: Segment, rows: pa.Table) -> None:
        """Remember a segment until its commit, with its rows while memory allows."""
        if self._pending_rows + rows.num_rows <= PENDING_ROWS_IN_MEMORY:
            self._pending.append((segment, rows))
            self._pending_rows += rows.num_rows
        else:
            self._pending.append((segment, None))

    async def _commit_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round retries; nothing is lost
                self.stats.last_error = self._scrub(f"commit: {exc!r}")
                # no traceback: text from below may hold credentials; last_error is scrubbed
                log.warning("archive commit failed; retrying: %s", self.stats.last_error)
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    async def commit(self, timeout: float | None = None) -> dict[int, int]:
        """Commit the warm segments to Iceberg now; tell partitions how far the archive is.

        Waits (up to ``timeout`` seconds) for :meth:`run` to open the archive, and for a
        commit already under way.

        Raises:
            TimeoutError: the archive did not open within ``timeout`` (``last_error`` in
                :meth:`status` says why).
        """
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"the archive did not open within {timeout}s: {self.stats.last_error}"
                ) from None
        async with self._committing:
            return await self._commit()

    async def maintain(self, keep_snapshots_s: float) -> dict[str, Any]:
        """Expire snapshots older than ``keep_snapshots_s`` and compact every closed day (one
        file per day, sorted) in all three tables; between commits, never during one."""
        await self.commit()  # also waits until the archive is open
        archive = self._archive
        assert archive is not None
        before = time.time() - keep_snapshots_s
        today = dt.datetime.now(dt.timezone.utc).date()
        report: dict[str, Any] = {}
        async with self._committing:
            for name, table in archive.tables.items():
                compacted = []
                for day in await asyncio.to_thread(days, table):
                    if day < today:
                        done = await asyncio.to_thread(compact, table, day)
                        compacted.append((str(day), done.files_before, done.files_after))
                expired = await asyncio.to_thread(expire, table, before)
                report[name] = {
                    "compacted_days": compacted,
                    "snapshots_expired": expired.snapshots_expired,
                    "data_files_deleted": expired.data_files_deleted,
                }
        return report

    async def _commit(self) -> dict[int, int]:
        archive = self._archive
        assert archive is not None
        offsets = self._committed
        pending = [(s, r) for s, r in self._pending if s.last_lsn > offsets.get(s.partition, 0)]
        if pending:
            rows = await asyncio.to_thread(_pending_rows, pending)
            covered: dict[int, int] = {}
            for segment, _ in pending:
                covered[segment.partition] = max(
                    covered.get(segment.partition, 0), segment.last_lsn
                )
            if self._duckdb is None:
                self._duckdb = duckdb.connect()
                self._duckdb.execute("SET threads = 1")  # a background job: least CPU per row
            result = await asyncio.to_thread(
                archive_batch, archive, rows, covered, connection=self._duckdb
            )
            self.stats.commits += 1
            self.stats.rows_committed += result.history_rows
            # archive_batch brought all three tables at least to result.offsets
            for partition, lsn in result.offsets.items():
                offsets[partition] = max(offsets.get(partition, 0), lsn)
            try:
                await asyncio.to_thread(_trim_snapshots, archive)
            except Exception as exc:  # the next commit tries again; nothing is lost
                self.stats.last_error = self._scrub(f"expire snapshots: {exc!r}")
                log.warning("expiring old snapshots failed: %s", self.stats.last_error)
        done = [(s, r) for s, r in self._pending if s.last_lsn <= offsets.get(s.partition, -1)]
        if done:
            await asyncio.to_thread(delete_segments, [s for s, _ in done])
            gone = {id(s) for s, _ in done}
            self._pending = [(s, r) for s, r in self._pending if id(s) not in gone]
            self._pending_rows = sum(r.num_rows for _, r in self._pending if r is not None)
        self.stats.offsets = dict(offsets)
        await self._report(offsets)
        return dict(offsets)

    async def _report(self, offsets: dict[int, int]) -> None:
        for partition, lsn in offsets.items():
            if partition >= self._host.partitions:
                continue
            with contextlib.suppress(Exception):  # a restarting partition hears it next round
                await self._host.call(partition, m.Archived(lsn=lsn))

    async def caught_up(self, timeout: float) -> bool:
        """Wait until every event committed in the partitions before this call is in the
        archive's warm or cold tier (queryable); False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        assert self._reader is not None
        return await self._reader.caught_up(max(0.0, deadline - time.monotonic()))

    def status(self) -> dict[str, Any]:
        read_to = dict(self._reader.offsets) if self._reader is not None else {}
        return {**self.stats.__dict__, "read_to": read_to}


def _trim_snapshots(archive: Archive) -> None:
    """Expire the old snapshots of at most one table: one expiry per commit keeps up with
    three tables (each needs one every ``KEEP_SNAPSHOTS`` commits) without making any one
    commit round, and so the next commit, much longer than the others."""
    for table in archive.tables.values():
        if expire_all_but(table, KEEP_SNAPSHOTS, SNAPSHOT_MIN_AGE_S) is not None:
            return


def _pending_rows(pending: list[tuple[Segment, pa.Table | None]]) -> pa.Table:
    """The rows of pending segments: kept in memory, or read back from their files."""
    tables = [rows if rows is not None else read_segments([s]) for s, rows in pending]
    return pa.concat_tables(tables)  # rows repeated across segments: archive_batch drops them


CLOSE_WAIT_S = 30.0
"""How long closing the in-process consumer waits for it to end (a commit in progress)."""


class ConsumerThread:
    """Runs a Consumer on an event loop of its own thread (the in-process runtime)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self._loop_thread = LoopThread("duraflow-consumer")
        self._running = self._loop_thread.submit(consumer.run())
        self._running.add_done_callback(_report_end)

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine of the consumer's on its loop and wait for it.

        Raises:
            RuntimeError: the consumer is closed or has failed.
            TimeoutError: ``timeout`` seconds passed first.
        """
        if not self._loop_thread.running or self._running.done():
            coro.close()
            raise RuntimeError("the archive consumer is not running (closed, or it failed)")
        future = self._loop_thread.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the coroutine's own TimeoutError (the same class since 3.11)
                raise
            future.cancel()
            raise TimeoutError(f"the archive consumer did not answer within {timeout}s") from None

    def close(self) -> None:
        """Cancel the consumer and wait until it no longer touches files: a cancelled commit
        or segment write may still run in an executor thread (:meth:`LoopThread.stop`)."""
        self._loop_thread.stop(CLOSE_WAIT_S)


def _report_end(running: concurrent.futures.Future[None]) -> None:
    if not running.cancelled() and running.exception() is not None:
        log.error("the archive consumer stopped", exc_info=running.exception())
