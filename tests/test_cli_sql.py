"""``duraflow sql`` over a local data directory (``--data-dir``: no Ray), the way a user runs it.

The data directory is made once by an in-process engine (``runtime="local"``): runs that
complete, one that fails, one still waiting on a signal; part of the archive committed to
Iceberg, the rest still in warm segments.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

import duraflow as df
from duraflow.cli import main


@df.activity(retry=df.RetryPolicy(maximum_attempts=1))
def sql_price(sku: str) -> float:
    if sku == "broken":
        raise ValueError("no price for 'broken'")
    return {"book": 12.5, "lamp": 30.0}.get(sku, 1.0)


@df.workflow
async def sql_quote(ctx: df.WorkflowContext, skus: list[str]) -> float:
    prices = [await ctx.activity(sql_price, sku) for sku in skus]
    return sum(prices)


@df.workflow
async def sql_wait(ctx: df.WorkflowContext) -> str:
    return await ctx.wait_for_signal("never")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-sql") / "data"
    # archive_interval: no commit of its own, so what follows commit_archive() stays warm
    with df.Engine(path, runtime="local", partitions=2, archive_interval="1h") as engine:
        client = engine.client()
        client.execute(sql_quote, ["book", "lamp"], workflow_id="q-1", timeout=30)
        client.execute(sql_quote, ["book"], workflow_id="q-2", timeout=30)
        assert engine.sync_archive(30)
        engine.commit_archive()  # these are in Iceberg; what follows stays warm
        with pytest.raises(df.WorkflowFailedError):
            client.execute(sql_quote, ["broken"], workflow_id="q-3", timeout=30)
        client.start(sql_wait, workflow_id="w-1")
        assert engine.sync_archive(30)
    return path


def test_table_output(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "sql",
            "--data-dir",
            str(data_dir),
            "SELECT workflow_id, status, activity_count, error_type "
            "FROM workflows ORDER BY workflow_id",
        ]
    )
    out, err = capsys.readouterr()
    assert (0, "") == (code, err)
    lines = out.splitlines()
    assert ["workflow_id", "status", "activity_count", "error_type"] == lines[0].split()
    assert {"-", " "} == set(lines[1])
    assert [
        ["q-1", "completed", "2", "NULL"],
        ["q-2", "completed", "1", "NULL"],
        ["q-3", "failed", "1", "ActivityError"],
    ] == [line.split() for line in lines[2:5]]
    assert ["(3 rows)"] == lines[5:]  # w-1 is still open: not a closed run
    assert lines[2].index("2") > lines[0].index("activity_count")  # numbers right-aligned


def test_json_lines(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = (
        "SELECT workflow_id, event_id, event_type, event_time, data, raw, "
        "CAST(1.5 AS DECIMAL(4, 2)) AS price FROM history "
        "WHERE workflow_id = 'q-1' ORDER BY event_id"
    )
    assert 0 == main(["sql", "--data-dir", str(data_dir), "--json", query])
    out, err = capsys.readouterr()
    assert "" == err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [
        "workflow.started",
        "workflow.activity_scheduled",
        "workflow.activity_completed",
        "workflow.activity_scheduled",
        "workflow.activity_completed",
        "workflow.completed",
    ] == [r["event_type"] for r in rows]
    assert {"result": 42.5} == json.loads(rows[-1]["data"])
    assert rows[0]["event_time"].endswith("Z")  # RFC 3339, UTC
    assert base64.b64decode(rows[0]["raw"])  # binary as base64
    assert 1.5 == rows[0]["price"]  # decimals as numbers


def test_all_four_views_and_both_tiers(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = (
        "SELECT (SELECT count(DISTINCT workflow_id) FROM history) AS ids, "
        "(SELECT count(*) FROM workflows) AS closed, "
        "(SELECT count(*) FROM activities) AS activities, "
        "(SELECT count(*) FROM live_workflows) AS live"
    )
    assert 0 == main(["sql", "--data-dir", str(data_dir), "--json", query])
    warm = data_dir / "archive" / "warm"
    cold = data_dir / "archive" / "warehouse" / "duraflow" / "history" / "data"
    assert list(warm.rglob("*.parquet")) and list(cold.rglob("*.parquet"))  # both tiers read
    # live_workflows needs the partitions: empty when reading a data directory
    assert {"ids": 4, "closed": 3, "activities": 4, "live": 0} == json.loads(
        capsys.readouterr().out
    )


def test_bad_queries_exit_2_with_duckdbs_message(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "SELEC 1": "Parser Error: syntax error",
        "SELECT nope FROM workflows": 'Binder Error: Referenced column "nope" not found',
        "SELECT * FROM no_such_view": "Catalog Error: Table with name no_such_view",
    }
    for query, message in cases.items():
        assert 2 == main(["sql", "--data-dir", str(data_dir), query])
        out, err = capsys.readouterr()
        assert "" == out
        assert err.startswith(f"duraflow: error: {message}"), err
        assert "Traceback" not in err


def test_statements_other_than_select(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for statement in ("SET threads = 1", "CREATE VIEW v AS SELECT 1 AS one; SELECT * FROM v"):
        assert 0 == main(["sql", "--data-dir", str(data_dir), statement])
        assert "" == capsys.readouterr().err
    assert 0 == main(["sql", "--data-dir", str(data_dir), "--json", "SELECT 1 AS one; SELECT 2"])
    assert '{"2":2}' == capsys.readouterr().out.strip()  # the last statement's result
    assert 0 == main(["sql", "--data-dir", str(data_dir), "--json", "SELECT 1 AS a, 2 AS a"])
    assert '{"a":1,"a_1":2}' == capsys.readouterr().out.strip()  # repeated names kept apart


def test_no_archive_or_misplaced_options_exit_2(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 2 == main(["sql", "--data-dir", str(tmp_path / "missing"), "SELECT 1"])
    assert "duraflow: error: no archive in" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()  # nothing created
    assert 2 == main(["sql", "--warehouse", "s3://b/p", "SELECT 1"])  # only with --data-dir
    assert "--warehouse and --s3-endpoint go with --data-dir" in capsys.readouterr().err
    assert 2 == main(["sql", "--data-dir", str(data_dir), "--s3-endpoint", "http://x", "SELECT 1"])
    assert "--s3-endpoint needs an s3:// --warehouse" in capsys.readouterr().err


def test_reading_leaves_the_data_directory_unchanged(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def files() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(data_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in data_dir.rglob("*")
            if p.is_file()
        }

    before = files()
    assert 0 == main(["sql", "--data-dir", str(data_dir), "SELECT count(*) FROM history"])
    capsys.readouterr()
    assert before == files()


def test_the_command_as_a_process(data_dir: Path) -> None:
    """Exit codes and output of the real process; errors without a traceback."""
    command = [sys.executable, "-m", "duraflow.cli", "sql", "--data-dir", str(data_dir)]
    done = subprocess.run(
        [*command, "SELECT workflow_type, count(*) AS runs FROM workflows GROUP BY 1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr
    assert ["sql_quote", "3"] == done.stdout.splitlines()[2].split()
    done = subprocess.run(
        [*command, "SELECT * FROM workflows WHERE"], capture_output=True, text=True, timeout=60
    )
    assert 2 == done.returncode
    assert done.stderr.startswith("duraflow: error: Parser Error:"), done.stderr
    assert "Traceback" not in done.stderr
