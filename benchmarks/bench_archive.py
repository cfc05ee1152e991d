"""Archive speed: events into warm Parquet and Iceberg, DuckDB over the archive, compaction.

Synthetic history events (made directly from ``duraflow.cdc.events``, no engine) go through
the same path the CDC consumer will use: ``history_rows`` -> warm segment per partition ->
``archive_batch`` (history + derived workflows / activities, offsets in the same commit).

  A1  --workflows runs (about 8 events each): events/s into warm segments and into Iceberg,
      and the time of one archive commit (p50 / p99).
  Q   --query-rows history rows (1 M; 10 M with --big) archived in batches of --batch-events,
      then DuckDB queries over the views (plan + refresh, a full-scan group-by, one
      workflow's history, a workflows summary, workflows joined with activities).
  C   every day of every table compacted, snapshots expired: data files and snapshots
      before / after, and the same queries again.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc

from benchmarks.common import RESULTS_DIR, print_table, summary_ms, write_json
from duraflow.cdc import events as ev
from duraflow.storage import codec
from duraflow.storage.archive_schema import history_rows
from duraflow.storage.catalog import Archive, open_archive
from duraflow.storage.iceberg import archive_batch, data_files
from duraflow.storage.iceberg_upkeep import compact, days, expire
from duraflow.storage.query import ArchiveQuery
from duraflow.storage.warm import write_segment

US_PER_S = 1_000_000
START_US = 1_772_323_200 * US_PER_S  # 2026-03-01T00:00:00Z
ARGS = codec.encode([{"order": 1, "items": ["sku-1", "sku-2"], "amount": 99.5}])
RESULT = codec.encode({"ok": True, "tracking": "TRK-0001"})

QUERIES = {
    "group by event_type (full scan)": (
        "SELECT event_type, count(*) FROM history GROUP BY 1 ORDER BY 2 DESC"
    ),
    "one workflow's history": (
        "SELECT event_id, event_type, event_time FROM history "
        "WHERE workflow_id = 'wf-00004242' ORDER BY event_id"
    ),
    "one day, by hour (date filter)": (
        "SELECT hour(event_time), count(*) FROM history "
        "WHERE event_date = DATE '2026-03-03' GROUP BY 1"
    ),
    "workflows by type and status": (
        "SELECT workflow_type, status, count(*), avg(duration_ms), sum(retry_count) "
        "FROM workflows GROUP BY ALL"
    ),
    "workflows join activities": (
        "SELECT a.activity, w.status, count(*), avg(a.attempts), avg(a.duration_ms) "
        "FROM workflows w JOIN activities a USING (workflow_id, run_id) GROUP BY ALL"
    ),
}


class Synthetic:
    """Runs of 3 activities: every 10th retries its first activity once, every 20th fails."""

    def __init__(self, partitions: int, span_s: float, workflows: int) -> None:
        self.partitions = partitions
        self.lsn = dict.fromkeys(range(partitions), 0)
        self.gap_us = max(1, int(span_s * US_PER_S / max(1, workflows)))

    def run(self, w: int) -> list[ev.Event]:
        wid = f"wf-{w:08d}"
        part = w % self.partitions
        at = START_US + w * self.gap_us
        made: list[ev.Event] = []

        def emit(cls: type[ev.Event], **fields: Any) -> None:
            nonlocal at
            self.lsn[part] += 1
            at += 15_000
            made.append(
                cls(
                    workflow_id=wid,
                    run_id=f"r{w}",
                    workflow_type=("order", "refund")[w % 4 == 3],
                    event_id=len(made) + 1,
                    partition=part,
                    lsn=self.lsn[part],
                    at_us=at,
                    **fields,
                )
            )

        failing = w % 20 == 7
        emit(ev.WorkflowStarted, args=ARGS, code_ref="shop:order", python="3.11")
        for seq, name in enumerate(("reserve", "charge", "ship"), start=1):
            emit(ev.ActivityScheduled, seq=seq, activity=name, args=ARGS)
            attempt = 1
            if seq == 1 and w % 10 == 0:
                emit(
                    ev.ActivityRetry,
                    seq=seq,
                    activity=name,
                    attempt=1,
                    error_type="TimeoutError",
                    error_message="slow",
                    next_attempt_at_us=at + US_PER_S,
                )
                attempt = 2
            if failing and seq == 2:
                emit(
                    ev.ActivityFailed,
                    seq=seq,
                    activity=name,
                    error_type="CardDeclined",
                    error_message="declined",
                    attempt=attempt,
                )
                emit(ev.WorkflowFailed, error_type="ActivityError", error_message="charge failed")
                return made
            emit(ev.ActivityCompleted, seq=seq, activity=name, result=RESULT, attempt=attempt)
        emit(ev.WorkflowCompleted, result=RESULT)
        return made

    def batches(self, workflows: int, batch_events: int) -> Iterator[list[ev.Event]]:
        batch: list[ev.Event] = []
        for w in range(workflows):
            batch += self.run(w)
            if len(batch) >= batch_events:
                yield batch
                batch = []
        if batch:
            yield batch


def archive_events(
    archive: Archive, warm_dir: Path | None, synthetic: Synthetic, workflows: int, batch_events: int
) -> dict[str, Any]:
    """Encoded events (as a partition stores them) -> decoded -> rows -> (warm segments) ->
    Iceberg, on one kept DuckDB connection as the consumer does; times each stage."""
    events = 0
    rows_s = warm_s = commit_s = 0.0
    commits: list[float] = []
    con = duckdb.connect()
    con.execute("SET threads = 1")
    for batch in synthetic.batches(workflows, batch_events):
        events += len(batch)
        bodies = [ev.encode_event(e) for e in batch]
        t0 = time.perf_counter()
        rows = history_rows([ev.decode_event(b) for b in bodies], bodies)
        t1 = time.perf_counter()
        if warm_dir is not None:
            for p in range(synthetic.partitions):
                mine = rows.filter(pc.equal(rows["partition"], p))
                if mine.num_rows:
                    write_segment(warm_dir, mine)
        t2 = time.perf_counter()
        archive_batch(archive, rows, connection=con)
        t3 = time.perf_counter()
        rows_s, warm_s, commit_s = rows_s + t1 - t0, warm_s + t2 - t1, commit_s + t3 - t2
        commits.append(t3 - t2)
    con.close()
    return {
        "events": events,
        "batches": len(commits),
        "rows_events_per_s": events / rows_s,
        "warm_events_per_s": events / warm_s if warm_dir is not None else None,
        "iceberg_events_per_s": events / commit_s,
        "end_to_end_events_per_s": events / (rows_s + warm_s + commit_s),
        "archive_batch": summary_ms(commits),
    }


def time_queries(archive: Archive, repeat: int = 3) -> dict[str, Any]:
    t0 = time.perf_counter()
    q = ArchiveQuery(archive)
    opened = time.perf_counter() - t0
    results: dict[str, Any] = {"open_and_plan_ms": opened * 1e3}
    with q:
        for title, sql in QUERIES.items():
            samples = []
            for _ in range(repeat):
                t = time.perf_counter()
                q.sql(sql).fetchall()
                samples.append(time.perf_counter() - t)
            results[title] = statistics.median(samples) * 1e3
        (rows,) = q.sql("SELECT count(*) FROM history").fetchall()[0]
    results["history_rows"] = rows
    return results


def file_counts(archive: Archive) -> dict[str, Any]:
    archive.refresh()
    counts: dict[str, Any] = {}
    for name, table in archive.tables.items():
        counts[name] = {
            "data_files": len(data_files(table)),
            "snapshots": len(table.metadata.snapshots),
        }
        if archive.s3 is None:
            folder = Path(table.location().removeprefix("file://"))
            counts[name]["parquet_on_disk"] = len(list(folder.rglob("*.parquet")))
    return counts


def compact_all(archive: Archive) -> dict[str, Any]:
    t0 = time.perf_counter()
    rewritten = 0
    for table in archive.tables.values():
        for day in days(table):
            rewritten += compact(table, day).files_before > 1
    t1 = time.perf_counter()
    for table in archive.tables.values():
        expire(table, time.time() + 1)
    t2 = time.perf_counter()
    return {"days_rewritten": rewritten, "compact_s": t1 - t0, "expire_s": t2 - t1}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks archive", description=__doc__)
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-events", type=int, default=20_000)
    parser.add_argument("--query-rows", type=int, default=1_000_000)
    parser.add_argument("--big", action="store_true", help="10 M history rows for the queries")
    parser.add_argument("--days", type=float, default=7.0, help="days the query rows span")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "archive.json")
    args = parser.parse_args(argv)
    query_rows = 10_000_000 if args.big else args.query_rows
    query_workflows = max(1, query_rows // 8)  # 8.0 events per run on average
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        archive = open_archive(Path(tmp) / "a1")
        synthetic = Synthetic(args.partitions, 3600.0, args.workflows)
        results["a1"] = archive_events(
            archive, Path(tmp) / "warm", synthetic, args.workflows, args.batch_events
        )
    with tempfile.TemporaryDirectory() as tmp:
        archive = open_archive(Path(tmp) / "q")
        synthetic = Synthetic(args.partitions, args.days * 86_400, query_workflows)
        results["load"] = archive_events(
            archive, None, synthetic, query_workflows, max(args.batch_events, 100_000)
        )
        results["files_before"] = file_counts(archive)
        results["queries_before"] = time_queries(archive)
        results["compaction"] = compact_all(archive)
        results["files_after"] = file_counts(archive)
        results["queries_after"] = time_queries(archive)
    _print(args, results)
    config = {
        "workflows": args.workflows,
        "partitions": args.partitions,
        "batch_events": args.batch_events,
        "query_rows": query_rows,
        "days": args.days,
    }
    path = write_json(args.json, {"config": config, "results": results})
    print(f"\nJSON: {path}")
    return results


def _print(args: argparse.Namespace, results: dict[str, Any]) -> None:
    a1, load = results["a1"], results["load"]
    before, after = results["queries_before"], results["queries_after"]
    fb, fa = results["files_before"]["history"], results["files_after"]["history"]
    rows = [
        (f"A1 {args.workflows} runs: events", f"{a1['events']} in {a1['batches']} batches"),
        ("A1 events -> history rows", f"{a1['rows_events_per_s']:,.0f} events/s"),
        ("A1 rows -> warm segments", f"{a1['warm_events_per_s']:,.0f} events/s"),
        ("A1 rows -> Iceberg (3 tables)", f"{a1['iceberg_events_per_s']:,.0f} events/s"),
        ("A1 end to end", f"{a1['end_to_end_events_per_s']:,.0f} events/s"),
        (
            "A1 archive_batch p50 / p99",
            "{p50_ms:.0f} / {p99_ms:.0f} ms".format(**a1["archive_batch"]),
        ),
        (
            f"Q load {before['history_rows']:,} rows",
            f"{load['end_to_end_events_per_s']:,.0f} events/s in {load['batches']} batches",
        ),
        ("", f"{'before':>12}  {'compacted':>12}"),
        (
            "Q open + plan files",
            f"{before['open_and_plan_ms']:>9.0f} ms  {after['open_and_plan_ms']:>9.0f} ms",
        ),
    ]
    for title in QUERIES:
        rows.append((f"Q {title}", f"{before[title]:>9.1f} ms  {after[title]:>9.1f} ms"))
    rows += [
        ("C history data files", f"{fb['data_files']:>12}  {fa['data_files']:>12}"),
        ("C history snapshots", f"{fb['snapshots']:>12}  {fa['snapshots']:>12}"),
        ("C history Parquet on disk", f"{fb['parquet_on_disk']:>12}  {fa['parquet_on_disk']:>12}"),
        (
            "C compact / expire (all tables)",
            "{compact_s:.1f} s / {expire_s:.1f} s".format(**results["compaction"]),
        ),
    ]
    print_table(f"duraflow archive ({args.partitions} partitions, local warehouse)", rows)


if __name__ == "__main__":
    main()
