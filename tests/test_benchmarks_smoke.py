"""The benchmark suite runs (tiny sizes of everything): it must not rot between full runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import restate_server, suite


@pytest.mark.timeout(600)
def test_the_suite_smoke_run_prints_the_table_and_writes_json(
    ray_session: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "suite.json"

    results = suite.main(["--smoke", "--json", str(out_file)])

    out = capsys.readouterr().out
    assert "| W1 20 x 3 activities, inline" in out
    assert "Ray vs DBOS" in out and "Ray vs Restate" in out
    assert "| W1 20 x 3 plain activities (default pool)" in out
    assert "| W1 20 with 32 in flight, plain activities" in out
    assert "| W1 default pool / inline, all at once" in out
    assert "| U update round trip p50/p99" in out and "| U update p50 / W2 signal p50" in out
    assert "| W5 archive, " in out and ">= 50,000/s: " in out  # one throughput row
    for system in ("local", "ray"):
        assert 20 == results[system]["w1_throughput_inline"]["workflows"]
        assert 200 == results[system]["w4_parked_200"]["workflows"]
        assert results[system]["w3_timer_lateness"]["p99_ms"] >= 0
        assert results[system]["u_update_unloaded"]["p50_ms"] > 0
    for system in ("local", "ray"):
        assert 20 == results[system]["w6_ping_pong"]["round_trips"]
        assert results[system]["w6_signal"]["p50_ms"] > 0
    assert 2 == results["dbos"]["w6_ping_pong"]["round_trips"]
    assert "| W6 ping-pong, per round trip (round trips)" in out
    assert 20 == results["dbos"]["w1_throughput"]["workflows"]
    assert 200 == results["dbos"]["w4_parked"]["200"]["workflows"]
    if restate_server.installed() is None:  # the smoke run never downloads the server
        assert "Restate skipped: restate-server " in out
    else:
        assert 20 == results["restate"]["w1_throughput"]["workflows"]
        assert 32 == results["restate"]["w1_in_flight"]["in_flight"]
        assert results["restate"]["w3_timer_lateness"]["p99_ms"] >= 0
        assert 200 == results["restate"]["w4_parked"]["200"]["workflows"]
        assert results["restate"]["w4_parked"]["200"]["rss_mib"] > 0
    assert results["ray"]["ray_floor"]["round_trip"]["p50_ms"] > 0
    assert (10, 10) == (
        results["lag"]["ray"]["closed_seen"],
        results["lag"]["ray"]["visible"]["runs"],
    )
    assert results["archive"]["5000"]["a1"]["events"] > 200 * 6
    assert "| R kill -9 -> served p50/max, 20 open, W1 10 in flight" in out
    restarted = results["restart"]["parked_20_load_10"]  # the smoke run kills under load only
    assert 1 == restarted["repeats"]
    assert restarted["open_runs"] >= 20  # the parked runs, the probes, the load's in flight
    assert 0 < restarted["kill_to"]["serving"]["p50_s"] < 60
    assert 0 < results["restart"]["ray_floor"]["kill_to"]["new_pid"]["max_s"] < 60
    written = json.loads(out_file.read_text())
    assert written["machine"]["cores"] >= 1
    assert written["table"][0][:5] == ["workload", "in-process", "Ray", "DBOS", "Restate"]


def test_the_smoke_run_skips_restate_when_its_server_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURAFLOW_BENCH_CACHE", str(tmp_path))  # an empty cache

    result = suite._restate(suite.parse(["--smoke"]))

    assert result["skipped"].startswith(f"restate-server {restate_server.VERSION} is not in")
    assert "does not download" in result["skipped"]
    assert [] == list(tmp_path.iterdir())  # nothing was installed
