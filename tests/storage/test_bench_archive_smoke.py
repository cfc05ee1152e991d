"""The archive benchmark runs (tiny sizes): it must not rot between full runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_archive


def test_archive_benchmark_smoke_run_prints_a_table_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "archive.json"
    argv = ["--workflows", "200", "--query-rows", "5000", "--days", "2", "--json", str(out_file)]

    results = bench_archive.main(argv)

    assert "events/s" in capsys.readouterr().out
    assert results["a1"]["events"] > 200 * 6
    assert results["queries_before"]["history_rows"] == results["queries_after"]["history_rows"]
    before, after = results["files_before"]["history"], results["files_after"]["history"]
    assert after["data_files"] <= before["data_files"]
    assert 1 == after["snapshots"]
    written = json.loads(out_file.read_text())
    assert written["machine"]["cores"] >= 1
    assert 200 == written["config"]["workflows"]
