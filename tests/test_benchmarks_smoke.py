"""The benchmark suite runs (tiny sizes): it must not rot between full runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_core


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
