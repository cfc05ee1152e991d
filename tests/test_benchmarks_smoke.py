"""The benchmark suite runs (tiny sizes): it must not rot between full runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_core, bench_lag


def test_core_benchmark_smoke_run_prints_a_table_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "core.json"
    results = bench_core.main(
        [
            "--workflows",
            "20",
            "--samples",
            "3",
            "--timers",
            "3",
            "--synchronous",
            "NORMAL",
            "--runtimes",
            "local",
            "--json",
            str(out_file),
        ]
    )
    out = capsys.readouterr().out
    assert "wf/s" in out
    assert 20 == results["local"]["w1_throughput_inline"]["workflows"]
    assert results["local"]["w3_timer_lateness"]["p99_ms"] >= 0
    written = json.loads(out_file.read_text())
    assert 20 == written["results"]["local"]["w1_throughput_inline"]["workflows"]
    assert written["machine"]["cores"] >= 1


def test_lag_benchmark_smoke_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "lag.json"
    results = bench_lag.main(
        [
            "--workflows",
            "10",
            "--rate",
            "50",
            "--archive-interval",
            "0.5",
            "--synchronous",
            "NORMAL",
            "--runtimes",
            "local",
            "--timeout",
            "60",
            "--json",
            str(out_file),
        ]
    )
    assert "visible in workflows" in capsys.readouterr().out
    local = results["local"]
    assert (10, 10, 10) == (
        local["closed_seen"],
        local["visible"]["runs"],
        local["iceberg"]["runs"],
    )
    assert 0 <= local["visible"]["p50_ms"] <= local["iceberg"]["p99_ms"] + 1000
    assert 10 == json.loads(out_file.read_text())["results"]["local"]["workflows"]
