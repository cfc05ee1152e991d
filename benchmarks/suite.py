"""The whole benchmark suite: every workload on duraflow in-process, duraflow on a local Ray,
DBOS Transact on its SQLite system database and Restate 1.7 with its Python SDK, in one run,
with the floors beneath them.

  W1  1,000 workflows of 3 no-op activities at once: workflows/s, p50/p99 start-to-result;
      one at a time (unloaded); the same 1,000 with 32 in flight. duraflow's no-op activities
      run inline (``inline=True``, the choice for cheap steps); on Ray also as plain
      ``@df.activity`` (the default worker pool) and as Ray tasks (``num_cpus=1``).
  W2  200 workflows parked on a signal, all signalled: send-to-completion p50/p99; unloaded.
  W3  200 workflows sleeping 1 s: lateness p50/p99.
  W4  10,000 and 100,000 workflows parked on a signal: time to start, total RSS of every
      process while parked, time to signal and complete all.
  W6  workflows talking to workflows: a workflow's signal to one on the other partition,
      command-to-received p50/p99; two workflows signalling each other N times (ping-pong),
      beside DBOS's send/recv twin (fewer round trips: each DBOS recv waits for its 1 s poll).
  W5  archive: events/s into Iceberg, lag from ``workflow.completed`` to visible in SQL,
      DuckDB query times over 1 M and 10 M history rows (duraflow only: neither peer has one).
  R   restart: a partition actor killed with kill -9 -> a signal to it served again, idle and
      under W1 load, by open runs on that partition (Ray only; benchmarks/bench_restart.py).
  Floors: raw SQLite on the partition schema, Ray's actor call.

Every duraflow figure is printed beside DBOS's and Restate's from the same run, as ratios
("x better": throughput divided, latency and memory inverted), and the Ray column beside its
target. ``--smoke`` runs tiny sizes of everything (the test suite does, so the suite cannot
rot); it runs Restate only if its server binary is already cached (~100 MB from the npm
registry, which a full run or ``./dev bench restate`` installs), and otherwise prints why not.
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
    bench_messages,
    bench_parked,
    bench_restart,
    bench_restate,
)
from benchmarks.common import RESULTS_DIR, write_json
from benchmarks.floors import sqlite_floor
from benchmarks.restate_server import RestateUnavailable
from benchmarks.suite_table import render, table

DBOS_DEFAULT_POOL_MAX = 10_000
"""Above this many parked workflows DBOS runs with a bounded thread pool: with its default
(unbounded) pool it grew to ~22,000 threads at ~23,000 parked and failed workflows with
``can't start new thread`` on this machine (see benchmarks/bench_dbos.py)."""
DBOS_BOUNDED_POOL = 64
RESTATE_PARKED_MAX = 10_000
"""Restate's W4 runs at sizes up to this; at 10,000 it took ~45 s on this machine, while each
parked run holds an HTTP/2 stream to the SDK for its first minute (see bench_restate.py)."""

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
    "ping_pongs": 20,
    "dbos_ping_pongs": 2,
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
    parser.add_argument("--ping-pongs", type=int, default=1000, help="W6 round trips")
    parser.add_argument(
        "--dbos-ping-pongs", type=int, default=20, help="W6 DBOS round trips (~1.7 s each)"
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
    parser.add_argument(
        "--systems", default="local,ray,dbos,restate", help="comma-separated: local, ray, ..."
    )
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


def _restate(args: argparse.Namespace) -> dict[str, Any]:
    """Restate's results, or ``{"skipped": why}`` when it cannot run here (a smoke run never
    downloads the server)."""
    try:
        return bench_restate.run(
            workflows=args.workflows,
            samples=args.samples,
            signals=args.signals,
            timers=args.timers,
            in_flight=args.in_flight,
            parked_sizes=tuple(n for n in args.parked if n <= RESTATE_PARKED_MAX),
            parked_budget_s=args.dbos_parked_budget,
            parked_settle_s=args.parked_settle,
            install_missing=not args.smoke,
        )
    except RestateUnavailable as exc:
        _step(f"Restate skipped: {exc}")
        return {"skipped": str(exc)}


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
            _step(f"duraflow {system}: W6 workflow-to-workflow signals, ping-pong")
            results[system].update(
                bench_messages.run(
                    system,
                    signals=args.signals,
                    rounds=args.ping_pongs,
                    partitions=args.partitions,
                    synchronous=args.synchronous,
                )
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
        _step(f"DBOS: W6 ping-pong, {args.dbos_ping_pongs} round trips")
        results["dbos"]["w6_ping_pong"] = bench_dbos.ping_pong(args.dbos_ping_pongs)
        for n in args.parked:
            if n > DBOS_DEFAULT_POOL_MAX:
                _step(f"DBOS: W4 {n} parked, max_executor_threads={DBOS_BOUNDED_POOL}")
                results["dbos"]["w4_parked"][str(n)] = bench_dbos.parked(
                    n,
                    args.dbos_big_budget,
                    max_executor_threads=DBOS_BOUNDED_POOL,
                    idle_window_s=args.dbos_idle_window,
                )
    if "restate" in args.systems:
        _step("Restate: W1-W3 on one server, W4 on a fresh one per size")
        results["restate"] = _restate(args)
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results = run(args)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    rows = table(args, results)
    config = {k: v for k, v in vars(args).items() if k not in ("json",) and not callable(v)}
    path = write_json(args.json, {"config": config, "results": results, "table": rows})
    restate = results.get("restate", {})
    print(
        f"\nduraflow vs DBOS Transact {results.get('dbos', {}).get('version', '')} "
        f"and Restate {restate.get('version', '')} "
        f"({args.partitions} partitions, synchronous={args.synchronous}; "
        f"{time.perf_counter() - started:,.0f} s; load average {load_before:.1f} before, "
        f"{results['load_average']['after']:.1f} after)\n"
    )
    print(render(rows))
    if "skipped" in restate:
        print(f"\nRestate skipped: {restate['skipped']}")
    print(f"\nJSON (with the machine's facts): {path}")
    return results
