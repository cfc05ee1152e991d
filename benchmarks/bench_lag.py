"""Archive lag: from a run's ``workflow.completed`` to its row in ``workflows``, end to end.

  L1  --workflows runs (one activity each) started at --rate per second on an engine whose
      archive commits to Iceberg every --archive-interval seconds. A subscriber
      (``client.subscribe(["workflow.completed"])``) notes when each completion reaches it; a
      poller refreshes a DuckDB session over the archive (``engine.duckdb()``) every --poll
      seconds and notes when each run's row first shows in ``workflows`` (warm segments or
      Iceberg: what ``client.sql`` answers from), and a second session over the Iceberg tables
      alone notes when it is committed there. A watcher reads each new warm segment once and
      notes when each close reached Parquet on disk: when it can first be visible, whatever a
      query's refresh (listing and reading the warm segments, planning Iceberg files) costs.

Every lag counts from the event's own time (``at_us``: the partition stamps it when it commits
the run's close) to the start of the first poll that saw the row: an upper bound, which
includes up to one poll period (the poll's own duration is reported too); the lower bound is
the start of the poll before, which did not see it yet. Run on the in-process runtime and on
Ray side by side (``--runtimes``). On Ray the archive consumer's own process is measured too:
its CPU time (from /proc) per event it read while the runs went on.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duraflow as df
from benchmarks.common import RESULTS_DIR, print_table, summary_ms, write_json
from duraflow.storage.catalog import open_archive
from duraflow.storage.layout import archive_paths
from duraflow.storage.query import ArchiveQuery
from duraflow.storage.warm import list_segments, read_segments

WORKFLOW_TYPE = "bench_lag_order"
VISIBLE_SQL = f"SELECT run_id FROM workflows WHERE workflow_type = '{WORKFLOW_TYPE}'"


@df.activity(inline=True)
def bench_lag_step(i: int) -> int:
    return i


@df.workflow(name=WORKFLOW_TYPE)
async def bench_lag_order(ctx: df.WorkflowContext, i: int) -> int:
    return await ctx.activity(bench_lag_step, i)


class Watch:
    """When each run was closed, delivered to the subscriber, visible, and in Iceberg."""

    def __init__(self) -> None:
        self.closed: dict[str, float] = {}  # run_id -> event time (s since the epoch)
        self.delivered: dict[str, float] = {}
        self.segment: dict[str, float] = {}  # run_id -> when its close was seen in a segment
        self.visible: dict[str, float] = {}  # run_id -> start of the first poll that saw it
        self.iceberg: dict[str, float] = {}
        self.visible_missed: dict[str, float] = {}  # run_id -> start of the poll before that
        self.iceberg_missed: dict[str, float] = {}
        self.polls: list[float] = []
        self.cold_polls: list[float] = []
        self.stop = threading.Event()

    def lags(self, seen: dict[str, float]) -> list[float]:
        return [max(0.0, seen[r] - at) for r, at in self.closed.items() if r in seen]


def _subscriber(client: df.Client, watch: Watch, expected: int) -> None:
    with client.subscribe(
        ["workflow.completed"], workflow_type=WORKFLOW_TYPE, from_="earliest"
    ) as subscription:
        while len(watch.closed) < expected and not watch.stop.is_set():
            event = subscription.get(timeout=0.5)
            if event is not None and event.run_id not in watch.closed:
                watch.delivered[event.run_id] = time.time()
                watch.closed[event.run_id] = event.at_us / 1e6


def _poller(
    session: ArchiveQuery,
    seen: dict[str, float],
    missed: dict[str, float],
    polls: list[float],
    watch: Watch,
    expected: int,
    every: float,
) -> None:
    """Poll until ``expected`` runs were seen: a run became visible after the start of the
    poll before the first that saw it (``missed``) and by the start of that one (``seen``)."""
    previous = 0.0
    while len(seen) < expected and not watch.stop.is_set():
        started = time.time()
        session.refresh()
        for (run_id,) in session.sql(VISIBLE_SQL).fetchall():
            if run_id not in seen:
                seen[run_id], missed[run_id] = started, previous
        polls.append(time.time() - started)
        previous = started
        time.sleep(max(0.0, every - (time.time() - started)))


def _segment_watcher(warm_dir: Path, watch: Watch, expected: int, every: float) -> None:
    """Read each new warm segment once: when a run's close first reached Parquet on disk (the
    moment it can be visible, whatever a query's refresh costs)."""
    read: set[Path] = set()
    while len(watch.segment) < expected and not watch.stop.is_set():
        started = time.time()
        fresh = [s for s in list_segments(warm_dir) if s.path not in read]
        if fresh:
            rows = read_segments(fresh, missing_ok=True)  # committed ones may be deleted
            for run_id, kind in zip(
                rows["run_id"].to_pylist(), rows["event_type"].to_pylist(), strict=True
            ):
                if kind == "workflow.completed":
                    watch.segment.setdefault(run_id, started)
            read.update(s.path for s in fresh)
        time.sleep(max(0.0, every - (time.time() - started)))


def run_lag(runtime: str, args: argparse.Namespace) -> dict[str, Any]:
    # ignore_cleanup_errors: an archive commit may still be finishing when the engine closes
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        data_dir = Path(tmp) / "data"
        with df.Engine(
            data_dir,
            runtime=runtime,
            partitions=args.partitions,
            synchronous=args.synchronous,
            archive_interval=args.archive_interval,
        ) as engine:
            client = engine.client()
            watch = Watch()
            root, warm_dir = archive_paths(data_dir)
            engine.sync_archive(60)  # the consumer has made the archive: open it beside it
            consumer_before = _consumer_cpu(engine)
            warm_and_cold = engine.duckdb()
            cold_only = ArchiveQuery(open_archive(root))  # Iceberg tables, no warm segments
            n = args.workflows
            threads = [
                threading.Thread(target=_subscriber, args=(client, watch, n), daemon=True),
                threading.Thread(
                    target=_segment_watcher, args=(warm_dir, watch, n, args.poll), daemon=True
                ),
                threading.Thread(
                    target=_poller,
                    args=(
                        warm_and_cold,
                        watch.visible,
                        watch.visible_missed,
                        watch.polls,
                        watch,
                        n,
                        args.poll,
                    ),
                    daemon=True,
                ),
                threading.Thread(
                    target=_poller,
                    args=(
                        cold_only,
                        watch.iceberg,
                        watch.iceberg_missed,
                        watch.cold_polls,
                        watch,
                        n,
                        args.poll,
                    ),
                    daemon=True,
                ),
            ]
            for thread in threads:
                thread.start()
            started = time.perf_counter()
            for i in range(n):  # paced: lag under a steady stream, not behind one burst
                client.start(bench_lag_order, i)
                time.sleep(max(0.0, started + (i + 1) / args.rate - time.perf_counter()))
            deadline = time.monotonic() + args.timeout
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            watch.stop.set()
            for thread in threads:
                thread.join(5)
            consumer = _consumer_cpu(engine)
            warm_and_cold.close()
            cold_only.close()
    return {
        "workflows": n,
        "closed_seen": len(watch.closed),
        "subscriber": summary_ms(watch.lags(watch.delivered)),
        "warm_segment": {"runs": len(watch.segment), **summary_ms(watch.lags(watch.segment))},
        "visible": {"runs": len(watch.visible), **summary_ms(watch.lags(watch.visible))},
        "visible_lower_bound": summary_ms(watch.lags(watch.visible_missed)),
        "iceberg": {"runs": len(watch.iceberg), **summary_ms(watch.lags(watch.iceberg))},
        "iceberg_lower_bound": summary_ms(watch.lags(watch.iceberg_missed)),
        "poll": summary_ms(watch.polls),
        "iceberg_poll": summary_ms(watch.cold_polls),
        "consumer": _cpu_per_event(consumer_before, consumer),
    }


def _us(consumer: dict[str, float]) -> str:
    return f"{consumer['us_per_event']:.0f} us"


def _consumer_cpu(engine: df.Engine) -> tuple[float, int] | None:
    """(CPU seconds, events read) of the archive consumer's process on Ray; None in-process
    (the consumer is a thread of this process there)."""
    if engine.runtime != "ray":
        return None
    from duraflow.actors.ray_host import call_actor

    status = call_actor(engine._consumer_actor, "status", timeout=30)
    fields = Path(f"/proc/{status['pid']}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), status["events_read"]


def _cpu_per_event(
    before: tuple[float, int] | None, after: tuple[float, int] | None
) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    cpu_s, events = after[0] - before[0], after[1] - before[1]
    return {"cpu_s": cpu_s, "events": events, "us_per_event": cpu_s / max(1, events) * 1e6}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks lag", description=__doc__)
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="workflows started per second")
    parser.add_argument("--archive-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between polls")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"))
    parser.add_argument("--runtimes", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for rows")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "lag.json")
    args = parser.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    results = {runtime: run_lag(runtime, args) for runtime in runtimes}
    lat = "{p50_ms:>7.0f} / {p99_ms:<6.0f} ms"
    rows = [("", "  ".join(f"{r:>20}" for r in runtimes))]
    for title, key in (
        ("workflow.completed -> subscriber", "subscriber"),
        ("-> in a warm Parquet segment", "warm_segment"),
        ("-> visible in workflows (client.sql)", "visible"),
        ("   (lower bound: the poll before)", "visible_lower_bound"),
        ("-> committed to Iceberg workflows", "iceberg"),
        ("   (lower bound: the poll before)", "iceberg_lower_bound"),
        ("one poll (refresh + query)", "poll"),
        ("one poll, Iceberg only", "iceberg_poll"),
    ):
        rows.append(
            (
                f"{title} p50/p99",
                "  ".join(f"{lat.format(**results[r][key]):>20}" for r in runtimes),
            )
        )
    rows.append(
        (
            "runs seen visible / in Iceberg",
            "  ".join(
                f"{results[r]['visible']['runs']:>9} / {results[r]['iceberg']['runs']:<8}"
                for r in runtimes
            ),
        )
    )
    rows.append(
        (
            "archive consumer CPU per event (Ray)",
            "  ".join(
                f"{'-' if results[r]['consumer'] is None else _us(results[r]['consumer']):>20}"
                for r in runtimes
            ),
        )
    )
    print_table(
        f"duraflow archive lag ({args.workflows} runs at {args.rate:g}/s, {args.partitions} "
        f"partitions, archive_interval={args.archive_interval:g}s, poll={args.poll:g}s)",
        rows,
    )
    config = {
        "workflows": args.workflows,
        "rate": args.rate,
        "archive_interval_s": args.archive_interval,
        "poll_s": args.poll,
        "partitions": args.partitions,
        "synchronous": args.synchronous,
        "runtimes": runtimes,
    }
    path = write_json(args.json, {"config": config, "results": results})
    print(f"\nJSON: {path}")
    return results


if __name__ == "__main__":
    main()
