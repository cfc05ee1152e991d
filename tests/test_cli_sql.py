"""``duraflow sql`` over a local data directory (``--data-dir``: no Ray), the way a user runs it,
and ``client.sql``: both run read-only SQL only.

The data directory is made once by an in-process engine (``runtime="local"``): runs that
complete, one that fails, one still waiting on a signal; part of the archive committed to
Iceberg, the rest still in warm segments.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

import duraflow as df
from duraflow.cli.main import main
from duraflow.runtime import relocate_archive


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
    completed = json.loads(rows[-1]["data"])
    assert {"result": 42.5, "status": "completed"} == {
        k: v for k, v in completed.items() if k != "duration_ms"
    }
    assert completed["duration_ms"] >= 0
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


def test_several_statements_and_repeated_names(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_the_command_as_a_process(data_dir: Path, tmp_path: Path) -> None:
    """Exit codes and output of the real process; errors, and a refused statement, without a
    traceback. (The other tests call the command's ``main`` in this process: the same code,
    without the second or so that starting a process and importing DuckDB costs each time.)"""
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
    target = tmp_path / "copied.csv"
    done = subprocess.run(
        [*command, f"COPY (SELECT * FROM workflows) TO '{target}' (FORMAT csv)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (2, "") == (done.returncode, done.stdout), done.stderr
    assert done.stderr.startswith("duraflow: error: "), done.stderr
    assert "COPY" in done.stderr and "Traceback" not in done.stderr
    assert not target.exists()


# -- read-only SQL: through `duraflow sql` and client.sql alike --------------------------------

WORKFLOWS = {"q-1": "completed", "q-2": "completed", "q-3": "failed", "w-1": "running"}
"""Every workflow of the data directory, by status: what a refused query must leave intact."""


def _open_engine(path: Path) -> df.Engine:
    return df.Engine(path, runtime="local", partitions=2, archive_interval="1h")


def _copy(data_dir: Path, dest: Path) -> Path:
    """A copy of the data directory whose archive is its own (Iceberg records absolute
    paths: without relocating, the copy's catalog names the original's files)."""
    shutil.copytree(data_dir, dest)
    relocate_archive(dest)
    return dest


@pytest.fixture(scope="module")
def sql_client(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[df.Client]:
    """A client of an engine over a copy of the data directory (the copy: the engine's own
    writes must not reach the tests that compare the data directory's files)."""
    copy = _copy(data_dir, tmp_path_factory.mktemp("cli-sql-engine") / "data")
    with _open_engine(copy) as engine:
        yield engine.client()


GOOD_SQL = [
    pytest.param("SELECT count(*) AS n FROM workflows", [{"n": 3}], id="select"),
    pytest.param(
        "WITH f AS (SELECT * FROM workflows WHERE status = 'failed') SELECT workflow_id FROM f",
        [{"workflow_id": "q-3"}],
        id="with",
    ),
    pytest.param(
        "FROM activities SELECT activity, count(*) AS n GROUP BY 1",
        [{"activity": "sql_price", "n": 4}],
        id="from-first",
    ),
    pytest.param("SELECT 1 AS one; SELECT 2 AS two", [{"two": 2}], id="two-selects"),
    pytest.param(
        "PIVOT (SELECT status FROM workflows) ON status USING count(*)",
        [{"completed": 2, "failed": 1}],
        id="pivot",
    ),
    pytest.param(
        "WITH w AS (SELECT status FROM workflows) PIVOT w ON status USING count(*)",
        [{"completed": 2, "failed": 1}],
        id="with-pivot",
    ),
    pytest.param(
        "SELECT column_name FROM (DESCRIBE workflows) WHERE column_name = 'status'",
        [{"column_name": "status"}],
        id="describe",
    ),
    pytest.param(
        "SELECT column_name, max FROM (SUMMARIZE SELECT activity_count FROM workflows)",
        [{"column_name": "activity_count", "max": "2"}],
        id="summarize",
    ),
]


@pytest.mark.parametrize(("query", "rows"), GOOD_SQL)
def test_read_only_statements_run(
    data_dir: Path,
    sql_client: df.Client,
    capsys: pytest.CaptureFixture[str],
    query: str,
    rows: list[dict[str, Any]],
) -> None:
    assert rows == sql_client.sql(query).to_pylist()
    assert 0 == main(["sql", "--data-dir", str(data_dir), "--json", query])
    out, err = capsys.readouterr()
    assert (rows, "") == ([json.loads(line) for line in out.splitlines()], err)


@pytest.mark.parametrize(
    "query",
    [
        "EXPLAIN SELECT * FROM history",
        "EXPLAIN ANALYZE SELECT count(*) FROM history",
        "EXPLAIN (FORMAT json) SELECT count(*) FROM workflows",
        "EXPLAIN ANALYZE (SELECT 1) UNION (SELECT 2)",  # a parenthesis, but no options
    ],
)
def test_explain_runs(
    data_dir: Path, sql_client: df.Client, capsys: pytest.CaptureFixture[str], query: str
) -> None:
    assert ["explain_key", "explain_value"] == sql_client.sql(query).column_names
    assert 0 == main(["sql", "--data-dir", str(data_dir), "--json", query])
    assert "explain_value" in capsys.readouterr().out


def test_parameters_bind(sql_client: df.Client) -> None:
    query = "SELECT workflow_id FROM workflows WHERE workflow_id = ? OR status = ? ORDER BY 1"
    rows = sql_client.sql(query, ["q-1", "failed"]).to_pylist()
    assert [{"workflow_id": "q-1"}, {"workflow_id": "q-3"}] == rows
    with pytest.raises(df.QueryError, match="parameter"):
        sql_client.sql(query, ["q-1"])  # one value for two parameters


PARTITION_FILE = "{data}/partitions/p0000.sqlite"
BAD_SQL = [
    # query ({data}: the data directory, {tmp}: the folder around it), the refused statement's
    # type (None: a DuckDB error), what the message names
    pytest.param(
        f"COPY (SELECT 1 AS a) TO '{PARTITION_FILE}' (FORMAT csv)", "COPY", "COPY", id="copy"
    ),
    pytest.param(
        f"SELECT 1; COPY (SELECT 1 AS a) TO '{PARTITION_FILE}' (FORMAT csv)",
        "COPY",
        "statement 2 of 2: COPY",
        id="select-then-copy",
    ),
    pytest.param(
        f"EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{PARTITION_FILE}' (FORMAT csv)",
        "COPY",
        "EXPLAIN COPY",
        id="explain-analyze-copy",
    ),
    pytest.param("ATTACH '{tmp}/attached.duckdb' AS other", "ATTACH", "ATTACH", id="attach"),
    pytest.param("EXPORT DATABASE '{tmp}/exported'", "EXPORT", "EXPORT", id="export"),
    pytest.param("SET threads = 1", "SET", "SET", id="set"),
    pytest.param("RESET threads", "SET", "SET", id="reset"),
    pytest.param("CREATE TABLE kept AS SELECT 1 AS a", "CREATE", "CREATE", id="create-table"),
    pytest.param(
        "CREATE TABLE kept AS PIVOT workflows ON status USING count(*)",
        "CREATE",
        "CREATE",
        id="create-table-as-pivot",
    ),
    pytest.param("INSTALL httpfs", "LOAD", "INSTALL httpfs", id="install"),
    pytest.param("LOAD httpfs", "LOAD", "LOAD", id="load"),
    pytest.param("PRAGMA enable_profiling", "PRAGMA", "PRAGMA", id="pragma"),
    pytest.param("CALL enable_logging()", "CALL", "CALL", id="call"),
    pytest.param(
        "SELECT * FROM read_text('/etc/hostname')", None, "Permission Error", id="read-text"
    ),
    pytest.param(
        "SELECT * FROM read_csv('{data}/deployment.json')", None, "Permission Error", id="read-csv"
    ),
    pytest.param(
        "SELECT * FROM read_text('{data}/archive/warehouse/duraflow/history/metadata/*.json')",
        None,
        "Permission Error",
        id="archive-metadata",
    ),
    pytest.param(
        "SELECT * FROM read_text('{tmp}/.tmp/secret.txt')",
        None,
        "Permission Error",
        id="duckdb-default-spill-folder",
    ),
    pytest.param("SELECT * FROM glob('/etc/*')", None, "Permission Error", id="glob"),
    pytest.param(
        "SELECT * FROM enable_profiling()", None, "configuration has been locked", id="setting"
    ),
    pytest.param("SELEC 1", None, "Parser Error: syntax error", id="syntax-error"),
    pytest.param("", None, "no SQL statement", id="empty"),
]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _assert_every_workflow_intact(data: Path) -> None:
    """The engine reopens the partition files, finds every workflow, and the open one runs."""
    with _open_engine(data) as engine:
        client = engine.client()
        assert WORKFLOWS == {wid: client.get_handle(wid).describe().status for wid in WORKFLOWS}
        waiting = client.get_handle("w-1")
        waiting.signal("never", "still here")
        assert "still here" == waiting.result(timeout=30)


@pytest.mark.parametrize(("template", "statement", "named"), BAD_SQL)
def test_sql_that_does_more_than_read_is_refused_and_changes_nothing(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    template: str,
    statement: str | None,
    named: str,
) -> None:
    """``duraflow sql`` (its ``main``, in this process: test_the_command_as_a_process runs a
    refused statement in a real process) and ``client.sql`` refuse the query, name what they
    refused, and leave every file and every workflow as they were."""
    data = _copy(data_dir, tmp_path / "data")
    (tmp_path / ".tmp").mkdir()  # DuckDB's default spill folder, in the current directory
    (tmp_path / ".tmp" / "secret.txt").write_text("not the archive's")
    monkeypatch.chdir(tmp_path)
    query = template.format(data=data, tmp=tmp_path)
    before = _files(tmp_path)

    code = main(["sql", "--data-dir", str(data), query])
    out, err = capfd.readouterr()  # file descriptors: DuckDB's own output would show too
    assert (2, "") == (code, out), err
    assert err.startswith("duraflow: error: "), err
    assert named in err
    assert "Traceback" not in err
    assert before == _files(tmp_path)  # nothing written, nothing changed

    with _open_engine(data) as engine:
        client = engine.client()
        with pytest.raises(df.QueryError) as caught:
            client.sql(query)
        assert named in str(caught.value)
        if statement is None:
            assert not isinstance(caught.value, df.StatementNotAllowed)
        else:
            assert isinstance(caught.value, df.StatementNotAllowed)
            assert statement == caught.value.statement
        # nothing the query did reaches the next one (a SET, a table)
        assert [{"n": 3}] == client.sql("SELECT count(*) AS n FROM workflows").to_pylist()
    written = set(_files(tmp_path)) - set(before)
    assert set() == {name for name in written if not name.startswith("data/")}
    _assert_every_workflow_intact(data)


@pytest.mark.parametrize(
    ("query", "statement"),
    [
        ("EXPLAIN ANALYZE (FORMAT json) COPY (SELECT 1) TO '{tmp}/x.csv'", "COPY"),
        ("WITH s AS (SELECT 1 AS a) PIVOT s ON a USING count(*); DETACH memory", "DETACH"),
        ("USE memory", "SET"),
        ("SET VARIABLE x = 1", "SET"),
        ("IMPORT DATABASE '{tmp}'", "PRAGMA"),
        ("CHECKPOINT", "CALL"),
        ("VACUUM", "VACUUM"),
        ("BEGIN", "TRANSACTION"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("INSERT INTO workflows SELECT * FROM workflows", "INSERT"),
        ("UPDATE EXTENSIONS", "UNKNOWN"),  # a type the duckdb module has no name for
    ],
)
def test_each_statement_type_is_told_before_anything_runs(
    sql_client: df.Client, tmp_path: Path, query: str, statement: str
) -> None:
    with pytest.raises(df.StatementNotAllowed, match="is not allowed") as caught:
        sql_client.sql(query.format(tmp=tmp_path))
    assert statement == caught.value.statement
    assert [] == list(tmp_path.iterdir())


@pytest.mark.parametrize("query", [None, 42, b"SELECT 1"])
def test_a_query_that_is_not_text(sql_client: df.Client, query: Any) -> None:
    with pytest.raises(df.QueryError, match=f"must be text .str., not {type(query).__name__}"):
        sql_client.sql(query)


def test_a_duckdb_session_is_locked_and_its_own(sql_client: df.Client) -> None:
    with sql_client.duckdb() as session:
        count = "SELECT count(*) AS n FROM workflows"
        assert [{"n": 3}] == session.fetch_arrow(count).to_pylist()
        assert [(3,)] == session.sql(count).fetchall()
        with pytest.raises(df.StatementNotAllowed, match="CREATE is not allowed"):
            session.sql("CREATE TABLE mine AS SELECT 1 AS a")
        # .con is the holder's raw connection: no statement check, but the same locks
        session.con.execute("CREATE TABLE mine AS SELECT 1 AS a")
        with pytest.raises(duckdb.Error, match="configuration has been locked"):
            session.con.execute("SET threads = 1")
        with pytest.raises(duckdb.Error, match="Permission Error"):
            session.con.execute("SELECT * FROM read_text('/etc/hostname')")
    with pytest.raises(df.QueryError, match="mine"):  # the session's own database is gone
        sql_client.sql("SELECT * FROM mine")
