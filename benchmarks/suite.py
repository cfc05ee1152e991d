"""The whole benchmark suite: every workload on duraflow in-process, duraflow on a local Ray,
and DBOS Transact on its SQLite system database, in one run, with the floors beneath them.

  W1  1,000 workflows of 3 no-op activities at once: workflows/s, p50/p99 start-to-result;
      one at a time (unloaded). duraflow's no-op activities run inline (``inline=True``, the
      choice for cheap steps); on Ray also as Ray tasks (the default for real work).
  W2  200 workflows parked on a signal, all signalled: send-to-completion p50/p99; unloaded.
  W3  200 workflows sleeping 1 s: lateness p50/p99.
  W4  10,000 and 100,000 workflows parked on a signal: time to start, total RSS of every
      process while parked, time to signal and complete all.
  W5  archive: events/s into Iceberg, lag from ``workflow.completed`` to visible in SQL,
      DuckDB query times over 1 M and 10 M history rows (duraflow only: DBOS has no archive).
  R   restart: a partition actor killed with kill -9 -> a signal to it served again, idle and
      under W1 load, by open runs on that partition (Ray only; benchmarks/bench_restart.py).
  Floors: raw SQLite on the partition schema, Ray's actor call.

Every duraflow figure is printed beside DBOS's from the same run, as a ratio ("x better":
throughput divided, latency and memory inverted), and the Ray column beside its target.
``--smoke`` runs tiny sizes of everything (the test suite does, so the suite cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_archive,
    bench_core,
    bench_dbos,
    bench_lag,
    bench_parked,
    bench_restart,
)
from benchmarks.common import RESULTS_DIR, write_json
from benchmarks.floors import sqlite_floor

DBOS_DEFAULT_POOL_MAX = 10_000
"""Above this many parked workflows DBOS runs with a bounded thread pool: with its default
(unbounded) pool it grew to ~22,000 threads at ~23,000 parked and failed workflows with
``can't start new thread`` on this machine (see benchmarks/bench_dbos.py)."""
DBOS_BOUNDED_POOL = 64

SMOKE = {
    "workflows": 20,
    "samples": 3,
    "signals": 5,
    "timers": 5,
    "parked": "200",
    "archive_workflows": 200,
    "query_rows": "5000",
    "lag_workflows": 10,
    "restart_parked": "20",
    "restart_loads": "10",
    "restart_repeats": 1,
    "restart_settle": 0.2,
    "parked_settle": 0.1,
    "dbos_idle_window": 0.5,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    bench_core.add_size_options(parser)
    parser.add_argument("--parked", default="10000,100000", help="W4 sizes, comma-separated")
    parser.add_argument(
        "--dbos-parked-budget", type=float, default=900.0, help="DBOS W4 s per phase, <= 10,000"
    )
    parser.add_argument(
        "--dbos-big-budget", type=float, default=300.0, help="DBOS W4 s per phase, > 10,000"
    )
    parser.add_argument(
        "--parked-settle", type=float, default=bench_parked.SETTLE_S, help="W4 s before RSS"
    )
    parser.add_argument(
        "--dbos-idle-window",
        type=float,
        default=bench_dbos.IDLE_WINDOW_S,
        help="DBOS W4 s of idle CPU measured while parked",
    )
    parser.add_argument("--archive-workflows", type=int, default=10_000, help="W5 throughput")
    parser.add_argument("--query-rows", default="1000000,10000000", help="W5 DuckDB sizes")
    parser.add_argument("--lag-workflows", type=int, default=500, help="W5 lag")
    parser.add_argument(
        "--restart-parked", default="0,1000,10000", help="R: open runs on the killed partition"
    )
    parser.add_argument("--restart-loads", default="0,300", help="R: W1 in flight (0: idle)")
    parser.add_argument("--restart-repeats", type=int, default=5, help="R: kills per scenario")
    parser.add_argument(
        "--restart-settle", type=float, default=bench_restart.SETTLE_S, help="R: s around kills"
    )
    parser.add_argument("--systems", default="local,ray,dbos", help="comma-separated")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes of everything")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "suite.json")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        args.synchronous = "NORMAL"
    args.systems = [s for s in args.systems.split(",") if s]
    args.parked = [int(n) for n in args.parked.split(",") if n]
    args.query_rows = [int(n) for n in args.query_rows.split(",") if n]
    args.restart_parked = [int(n) for n in str(args.restart_parked).split(",") if n]
    args.restart_loads = [int(n) for n in str(args.restart_loads).split(",") if n]
    return args


def _quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a sub-benchmark whose own table would clutter the suite's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def _step(title: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {title}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    _step("floors: SQLite on the partition schema")
    results["sqlite_floor"] = sqlite_floor(args.synchronous)
    for system in ("local", "ray"):
        if system in args.systems:
            _step(f"duraflow {system}: W1-W3")
            results[system] = bench_core.run(system, args)
            for n in args.parked:
                _step(f"duraflow {system}: W4 {n} parked")
                results[system][f"w4_parked_{n}"] = bench_parked.run(
                    system,
                    n,
                    partitions=args.partitions,
                    synchronous=args.synchronous,
                    settle_s=args.parked_settle,
                )
    if "ray" in args.systems:
        _step("duraflow ray: restart after kill -9 of a partition actor")
        results["restart"] = bench_restart.run(
            argparse.Namespace(
                parked=args.restart_parked,
                loads=args.restart_loads,
                repeats=args.restart_repeats,
                synchronous=args.synchronous,
                settle=args.restart_settle,
            )
        )
    if "dbos" in args.systems:
        _step("DBOS: W1-W4, each workload in its own process")
        results["dbos"] = bench_dbos.run(
            workflows=args.workflows,
            samples=args.samples,
            signals=args.signals,
            timers=args.timers,
            parked_sizes=tuple(n for n in args.parked if n <= DBOS_DEFAULT_POOL_MAX),
            parked_budget_s=args.dbos_parked_budget,
            idle_window_s=args.dbos_idle_window,
        )
        for n in args.parked:
            if n > DBOS_DEFAULT_POOL_MAX:
                _step(f"DBOS: W4 {n} parked, max_executor_threads={DBOS_BOUNDED_POOL}")
                results["dbos"]["w4_parked"][str(n)] = bench_dbos.parked(
                    n,
                    args.dbos_big_budget,
                    max_executor_threads=DBOS_BOUNDED_POOL,
                    idle_window_s=args.dbos_idle_window,
                )
    archive: dict[str, Any] = {}
    for rows in args.query_rows:
        _step(f"duraflow archive: throughput and DuckDB over {rows} history rows")
        archive[str(rows)] = _quiet(
            bench_archive.main,
            [
                "--workflows",
                str(args.archive_workflows),
                "--query-rows",
                str(rows),
                "--json",
                str(RESULTS_DIR / f"archive-{rows}.json"),
            ],
        )
    results["archive"] = archive
    runtimes = ",".join(s for s in ("local", "ray") if s in args.systems)
    if runtimes:
        _step("duraflow archive: lag from workflow.completed to visible in SQL")
        results["lag"] = _quiet(
            bench_lag.main,
            [
                "--workflows",
                str(args.lag_workflows),
                "--synchronous",
                args.synchronous,
                "--runtimes",
                runtimes,
                "--json",
                str(RESULTS_DIR / "lag.json"),
            ],
        )
    return results


# -- the table ------------------------------------------------------------------------------


def _get(results: dict[str, Any], system: str, *path: str) -> Any:
    value: Any = results.get(system)
    if system == "dbos":  # DBOS has one kind of step: its keys carry no "_inline"
        path = tuple(key.removesuffix("_inline") for key in path)
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _pair(result: Any, fmt: str = "{:.1f}") -> str:
    if not isinstance(result, dict) or "p50_ms" not in result:
        return "-" if not isinstance(result, dict) else _dnf(result)
    return f"{fmt.format(result['p50_ms'])} / {fmt.format(result['p99_ms'])} ms"


def _dnf(result: dict[str, Any]) -> str:
    return "did not finish" if "did_not_finish" in result else "-"


def _ratio(ours: Any, theirs: Any, higher_is_better: bool) -> str:
    if not ours or not theirs:
        return "-"
    times = ours / theirs if higher_is_better else theirs / ours
    return f"{times:,.1f}x"


def _mark(value: Any, target: float, higher_is_better: bool) -> str:
    if value is None:
        return ""
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def table(args: argparse.Namespace, r: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows: workload, in-process, Ray, DBOS, Ray vs DBOS, target for Ray (met or not)."""
    rows: list[tuple[str, ...]] = [
        ("workload", "in-process", "Ray", "DBOS", "Ray vs DBOS", "target (Ray)")
    ]

    def throughput(label: str, key: str, target: float | None) -> None:
        vals = [_get(r, s, key, "workflows_per_s") for s in ("local", "ray", "dbos")]
        goal = f">= {target:,.0f}: {_mark(vals[1], target, True)}" if target else ""
        rows.append(
            (label, *(_num(v, "{:,.0f} wf/s") for v in vals), _ratio(vals[1], vals[2], True), goal)
        )

    def latency(label: str, key: str, stat: str = "p50_ms", target: float | None = None) -> None:
        cells = [_pair(_get(r, s, key)) for s in ("local", "ray", "dbos")]
        ours, theirs = _get(r, "ray", key, stat), _get(r, "dbos", key, stat)
        goal = ""
        if target is not None:
            goal = f"{stat[:3]} <= {target:g} ms: {_mark(ours, target, False)}"
        rows.append((label, *cells, f"{_ratio(ours, theirs, False)} ({stat[:3]})", goal))

    n = args.workflows
    throughput(f"W1 {n} x 3 activities, inline", "w1_throughput_inline", 1100)
    latency("W1 latency under load p50/p99", "w1_throughput_inline")
    latency("W1 unloaded p50/p99", "w1_unloaded_inline", target=10)
    ray_tasks = _get(r, "ray", "w1_throughput_ray_tasks", "workflows_per_s")
    rows.append(
        (
            "W1 with activities as Ray tasks",
            "",
            f"{_num(ray_tasks, '{:,.0f} wf/s')}, {_pair(_get(r, 'ray', 'w1_unloaded_ray_tasks'))}"
            " unloaded",
            "",
            "",
            "",
        )
    )
    latency(f"W2 {args.signals} signalled at once p50/p99", "w2_signal_loaded")
    latency("W2 signal unloaded p50/p99", "w2_signal_unloaded", target=5)
    latency(
        f"W3 {args.timers} x 1 s timers, lateness p50/p99",
        "w3_timer_lateness",
        "p99_ms",
        target=20,
    )
    for size in args.parked:
        key = f"w4_parked_{size}"
        dbos = _get(r, "dbos", "w4_parked", str(size)) or {}
        unfinished = dbos.get("did_not_finish")
        cells = {}
        for metric, ours, theirs, fmt in (
            ("start all", "start_s", "start_s", "{:,.1f} s"),
            ("total RSS", "rss_parked_mib", "rss_mib", "{:,.0f} MiB"),
            ("signal, complete all", "signal_and_complete_s", "complete_s", "{:,.1f} s"),
        ):
            vals = [_get(r, s, key, ours) for s in ("local", "ray")] + [dbos.get(theirs)]
            texts = [_num(v, fmt) for v in vals]
            if unfinished and vals[2] is None:
                texts[2] = "did not finish"
                if metric == "start all":
                    texts[2] = f"{dbos.get('started', 0):,} started, then {unfinished}"
                elif metric == "total RSS" and dbos.get("rss_mib_at_stop"):
                    texts[2] = f"{dbos['rss_mib_at_stop']:,.0f} MiB at stop"
            goal = ""
            if metric == "total RSS" and size >= 100_000:
                goal = f"<= 4,096 MiB: {_mark(vals[1], 4096, False)}"
            rows.append(
                (f"W4 {size:,} parked: {metric}", *texts, _ratio(vals[1], vals[2], False), goal)
            )
    rows.extend(_restart_rows(r.get("restart") or {}))
    archives = r.get("archive") or {}
    if archives:  # each DuckDB size is archived by a throughput run of its own: one row for all
        rates = [archived["a1"]["end_to_end_events_per_s"] for archived in archives.values()]
        events = next(iter(archives.values()))["a1"]["events"]
        runs = f" ({len(rates)} runs)" if len(rates) > 1 else ""
        rows.append(
            (
                f"W5 archive, {events:,} events into Iceberg{runs}",
                " / ".join(f"{rate:,.0f}" for rate in rates) + " events/s",
                "",
                "n/a",
                "",
                f">= 50,000/s: {_mark(min(rates), 50_000, True)}",
            )
        )
    for size, archived in archives.items():
        queries = archived["queries_after"]
        for title in ("group by event_type (full scan)", "workflows join activities"):
            rows.append(
                (
                    f"W5 DuckDB, {int(size):,} rows: {title}",
                    _num(queries.get(title), "{:,.0f} ms"),
                    "",
                    "n/a",
                    "",
                    "",
                )
            )
    lag = r.get("lag") or {}
    if lag:
        cells = [_pair(_get(lag, s, "visible"), "{:,.0f}") for s in ("local", "ray")]
        p99 = _get(lag, "ray", "visible", "p99_ms")
        rows.append(
            (
                "W5 lag completed -> in SQL p50/p99",
                *cells,
                "n/a",
                "",
                f"p99 <= 5,000 ms: {_mark(p99, 5000, False)}",
            )
        )
    floor = r["sqlite_floor"]
    rows.append(
        (
            "floor: SQLite 1-row commits",
            f"{floor['commits_per_s']:,.0f}/s",
            "",
            "",
            "",
            "",
        )
    )
    rows.append(
        (
            "floor: SQLite W1 rows, 1 / 50 per commit",
            f"{floor['w1_one_per_commit_workflows_per_s']:,.0f} / "
            f"{floor['w1_batched_workflows_per_s']:,.0f} wf/s",
            "",
            "",
            "",
            "",
        )
    )
    ray_floor = _get(r, "ray", "ray_floor")
    if ray_floor:
        rows.append(
            (
                "floor: Ray actor call",
                "",
                f"{_pair(ray_floor['round_trip'], '{:.2f}')} round trip, "
                f"{ray_floor['pipelined_calls_per_s']:,.0f} calls/s pipelined, "
                f"{ray_floor['batched_us_per_request']:.0f} us/request in batches of 100",
                "",
                "",
                "",
            )
        )
    restart_floor = (r.get("restart") or {}).get("ray_floor")
    if restart_floor:
        rows.append(
            (
                "floor: Ray restarts a bare actor p50/max",
                "",
                _seconds(restart_floor, "new_pid"),
                "",
                "",
                "",
            )
        )
    return rows


def _seconds(result: dict[str, Any], measure: str) -> str:
    value = result["kill_to"][measure]
    return f"{value['p50_s']:.1f} / {value['max_s']:.1f} s"


def _restart_rows(restart: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per restart scenario: kill -9 -> a signal served again (and the new PID seen)."""
    rows: list[tuple[str, ...]] = []
    for key, result in restart.items():
        if not key.startswith("parked_"):
            continue
        load = result["load_in_flight"]
        where = f"{result['parked']:,} open, " + (f"W1 {load} in flight" if load else "idle")
        rows.append(
            (
                f"R kill -9 -> served p50/max, {where}",
                "",
                f"{_seconds(result, 'serving')} (new PID in status {_seconds(result, 'new_pid')})",
                "n/a",
                "",
                "",
            )
        )
    return rows


def render(rows: list[tuple[str, ...]]) -> str:
    """The rows as a Markdown table (README's Performance section takes it as it is)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results = run(args)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    rows = table(args, results)
    config = {k: v for k, v in vars(args).items() if k not in ("json",) and not callable(v)}
    path = write_json(args.json, {"config": config, "results": results, "table": rows})
    print(
        f"\nduraflow vs DBOS Transact {results.get('dbos', {}).get('version', '')} "
        f"({args.partitions} partitions, synchronous={args.synchronous}; "
        f"{time.perf_counter() - started:,.0f} s; load average {load_before:.1f} before, "
        f"{results['load_average']['after']:.1f} after)\n"
    )
    print(render(rows))
    print(f"\nJSON (with the machine's facts): {path}")
    return results
