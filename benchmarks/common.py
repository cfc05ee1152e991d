"""Shared benchmark plumbing: percentiles, machine facts, the table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
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
