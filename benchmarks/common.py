"""Shared benchmark plumbing: percentiles, machine facts, the table and the JSON file."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) of ``values`` by nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    """p50 / p99 / mean of samples in seconds, as milliseconds."""
    return {
        "p50_ms": percentile(samples_s, 50) * 1e3,
        "p99_ms": percentile(samples_s, 99) * 1e3,
        "mean_ms": statistics.fmean(samples_s) * 1e3 if samples_s else float("nan"),
    }


async def in_flight_runs(
    n: int, in_flight: int, timed_run: Callable[[int], Awaitable[float]]
) -> dict[str, Any]:
    """``n`` runs of ``timed_run`` (it returns one run's seconds), ``in_flight`` at a time (a
    new one starts as one finishes): throughput and latency, as W1 with 32 in flight reports
    them on every system."""
    todo = iter(range(n))
    latencies: list[float] = []

    async def client() -> None:
        for i in todo:
            latencies.append(await timed_run(i))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    elapsed = time.perf_counter() - t0
    return {
        "workflows": n,
        "in_flight": in_flight,
        "seconds": elapsed,
        "workflows_per_s": n / elapsed,
        **summary_ms(latencies),
    }


def round_trips(rounds: int, seconds: float) -> dict[str, Any]:
    """W6 ping-pong's figures: ``rounds`` round trips in ``seconds``."""
    return {
        "round_trips": rounds,
        "seconds": seconds,
        "round_trips_per_s": rounds / seconds,
        "ms_per_round_trip": seconds / rounds * 1e3,
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        mem_kib = int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
        )
    except (OSError, StopIteration):
        mem_kib = 0
    versions = {}
    for package in ("duraflow", "msgspec", "ray", "pyiceberg", "duckdb", "pyarrow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def rss_mib(pids: list[int]) -> float:
    """Total resident memory of ``pids`` in MiB (from /proc)."""
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 24))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with the machine's facts to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path
