"""The ``duraflow`` command, the way a user runs it.

A Ray cluster started on its own (``ray start --head``, in a private temp dir, with a token of
its own), ``duraflow serve`` creating detached partition actors on it and exiting, two driver
processes sharing the deployment, ``duraflow status``, the thin client commands, a partition
process killed and restarted by Ray, ``duraflow stop`` and serving again.

The head runs with ``--block`` in a session of its own; teardown kills exactly that session's
processes (never ``ray stop``, which would stop every Ray of the user on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from duraflow.actors.router import partition_of
from duraflow.cli.main import main

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "cli-test"
CLUSTER_START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0


@dataclass
class RayCluster:
    address: str
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_members(session: int) -> list[int]:
    """PIDs of the processes in ``session`` (Ray's workers get process groups of their own but
    stay in the session of the ``ray start`` that spawned the raylet)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
        if int(fields[3]) == session and fields[0] != "Z":  # zombies are dead already
            members.append(int(entry.name))
    return members


def _kill_session(session: int) -> None:
    assert session != os.getsid(0), "refusing to kill the test's own session"
    deadline = time.monotonic() + 15
    while (members := _session_members(session)) and time.monotonic() < deadline:
        for pid in members:
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A one-node Ray cluster started with ``ray start --head``, as a user would."""
    temp = Path(tempfile.mkdtemp(prefix="dfcli", dir="/tmp"))  # short: socket path limit
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_TMPDIR=str(temp),  # `--address auto` finds this cluster, and no other
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        PYTHONUNBUFFERED="1",
    )
    log = temp / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [
                str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                "--disable-usage-stats", "--include-dashboard=false",
                f"--dashboard-port={_free_port()}", f"--temp-dir={temp / 'ray'}", "--block",
            ],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp,
        )  # fmt: skip
    try:
        address_file = temp / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while not address_file.exists():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield RayCluster(address=f"127.0.0.1:{port}", env=env)
    finally:
        _kill_session(head.pid)
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def duraflow(cluster: RayCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``duraflow`` console script from the repository root (where tests.cli_app is)."""
    return subprocess.run(
        [str(BIN / "duraflow"), *args, "--namespace", NAMESPACE],
        env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert 0 == result.returncode, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def fails(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a command that failed on purpose (exit 2, no traceback)."""
    assert 2 == result.returncode, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stderr


def driver(cluster: RayCluster, address: str, body: str) -> list[str]:
    """The argv of a separate Ray driver: a Python process with a connected Client."""
    script = textwrap.dedent(f"""
        import json, sys
        import duraflow as df
        from tests.cli_app import cli_greet
        client = df.Client.connect({address!r}, namespace={NAMESPACE!r})
    """) + textwrap.dedent(body)
    return [sys.executable, "-c", script]


STARTER = """
    handles = [client.start(cli_greet, f"n{i}", workflow_id=f"cli-{i}") for i in range(5)]
    print("started", flush=True)
    results = {h.workflow_id: h.result(timeout=50) for h in handles[:3]}
    print(json.dumps(results))
"""

SIGNALLER = """
    results = {}
    for i in range(3):
        handle = client.get_handle(f"cli-{i}")
        handle.signal("go", f"hi-{i}")
        results[handle.workflow_id] = handle.result(timeout=50)
    print(json.dumps(results))
"""


def status_rows(output: str, first: str = "PARTITION") -> dict[str, list[str]]:
    """The rows of the status table whose header starts with ``first`` (partitions, or the
    worker pools with "POOL"), by their first column (partition index or 'total', queue)."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(first))
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():  # the end of the table
            break
        rows[line.split()[0]] = line.split()
    return rows


@pytest.mark.timeout(180)
def test_serve_two_drivers_status_stop_and_serve_again(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    address = ray_cluster.address
    serve = ("serve", "--address", address, "--data-dir", str(data_dir), "--app", "tests.cli_app")

    # serve: detached partition actors, then the command exits
    out = ok(duraflow(ray_cluster, *serve, "--partitions", "2", "--synchronous", "NORMAL"))
    assert f"Serving {data_dir} (2 partitions, app modules: tests.cli_app)" in out
    assert f'df.Client.connect("{address}", namespace="{NAMESPACE}")' in out
    recorded = json.loads((data_dir / "deployment.json").read_text())
    assert {"partitions", "format", "id"} == set(recorded)
    assert (2, 1, 32) == (recorded["partitions"], recorded["format"], len(recorded["id"]))

    # driver 1 (joins with --address auto) starts five workflows and waits for three results
    starter = subprocess.Popen(
        driver(ray_cluster, "auto", STARTER), env=ray_cluster.env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert starter.stdout is not None
        ready, _, _ = select.select([starter.stdout], [], [], COMMAND_TIMEOUT_S)
        assert ready, "driver 1 did not start its workflows in time"
        assert "started" == starter.stdout.readline().strip()

        table = status_rows(ok(duraflow(ray_cluster, "status", "--address", address)))
        assert {"0", "1", "total"} == set(table)
        # PARTITION NODE(ip id) PID OPEN RESIDENT PARKED LSN
        assert 5 == int(table["total"][1]) == sum(int(table[p][4]) for p in "01")
        for p in "01":
            assert int(table[p][6]) == int(table[p][4]) - int(table[p][5])
            assert int(table[p][7]) > 0

        # the worker pools: the default one, and one whose worker no node can host (not alive)
        nowhere = ("--queue", "cli-nowhere", "--size", "1", "--resources", '{"cli-nowhere": 1}')
        assert "did not start within 1s" in fails(
            duraflow(ray_cluster, "worker", *nowhere, "--timeout", "1")
        )
        pools = status_rows(ok(duraflow(ray_cluster, "status", "--timeout", "3")), "POOL")
        # POOL SIZE ALIVE RUNNING OUTSTANDING (every run parked on its signal: none running)
        assert ["default", "2", "2", "0", "0"] == pools["default"]
        assert ["cli-nowhere", "1", "0", "0", "0"] == pools["cli-nowhere"]

        # a partition's process dies: Ray restarts it; it imports the app and recovers
        statuses = json.loads(ok(duraflow(ray_cluster, "status", "--json")))
        owner = statuses[partition_of("cli-0", 2)]
        os.kill(owner["pid"], signal.SIGKILL)

        # driver 2 (joins with the head's address) signals them and gets the results
        second = subprocess.run(
            driver(ray_cluster, address, SIGNALLER), env=ray_cluster.env, cwd=REPO,
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        )  # fmt: skip
        results = json.loads(ok(second))
        first_out, first_err = starter.communicate(timeout=COMMAND_TIMEOUT_S)
        assert 0 == starter.returncode, first_err
    finally:
        starter.kill()
    assert results == json.loads(first_out)
    assert ["HI-0 N0", "HI-1 N1", "HI-2 N2"] == [results[f"cli-{i}"]["greeting"] for i in range(3)]
    after = json.loads(ok(duraflow(ray_cluster, "status", "--json")))
    assert owner["pid"] != after[owner["index"]]["pid"]  # a new process hosts it

    described = json.loads(ok(duraflow(ray_cluster, "describe", "cli-3")))
    assert ("cli_greet", "running") == (described["workflow_type"], described["status"])
    ok(duraflow(ray_cluster, "cancel", "cli-4", "--reason", "not needed"))
    cancelled = duraflow(ray_cluster, "result", "cli-4", "--timeout", "30")
    assert 1 == cancelled.returncode, cancelled.stderr  # the workflow did not complete
    assert "cancelled" in cancelled.stderr and "Traceback" not in cancelled.stderr

    # the partition count is fixed; a namespace serves one data directory
    err = fails(duraflow(ray_cluster, *serve, "--partitions", "3"))
    assert "partitions=2" in err and "partitions=3" in err
    other = ("serve", "--address", address, "--data-dir", str(tmp_path / "other"))
    err = fails(duraflow(ray_cluster, *other, "--app", "tests.cli_app"))
    assert f"already serves {data_dir}, not {tmp_path / 'other'}" in err

    # stop: actors gone, files kept; serving again resumes the open workflow
    assert "Stopped 2 partition actors" in ok(duraflow(ray_cluster, "stop"))
    assert "no duraflow deployment" in fails(duraflow(ray_cluster, "status"))
    assert "Serving" in ok(duraflow(ray_cluster, *serve))
    renamed = ok(duraflow(ray_cluster, "update", "cli-3", "rename", '"n9"', "--timeout", "30"))
    assert "n3 -> n9" == json.loads(renamed)
    assert "a name cannot be empty" in fails(
        duraflow(ray_cluster, "update", "cli-3", "rename", '""')
    )
    assert "sent" in ok(duraflow(ray_cluster, "signal", "cli-3", "go", '"cli"'))
    result = json.loads(ok(duraflow(ray_cluster, "result", "cli-3", "--timeout", "30")))
    assert "CLI N3" == result["greeting"]
    listed = ok(duraflow(ray_cluster, "list", "--status", "completed")).splitlines()
    assert {f"cli-{i}" for i in range(4)} == {json.loads(line)["workflow_id"] for line in listed}
    assert "" == ok(duraflow(ray_cluster, "list", "--search", '{"customer": "nobody"}'))
    assert "Stopped 2 partition actors" in ok(duraflow(ray_cluster, "stop"))


# -- errors caught before any Ray is joined ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["signal", "wf", "go", "{not json"], "not valid JSON"),
        (["update", "wf", "add", "{not json"], "not valid JSON"),
        (["update", "wf", "add", "--timeout", "soon"], "not a number"),
        (["signal", "wf", "go", "[" * 100_000 + "]" * 100_000], "JSON nested too deeply"),
        (["serve", "--data-dir", "d", "--partitions", "0"], "must be > 0"),
        (["serve", "--data-dir", "d", "--synchronous", "SOMETIMES"], "invalid choice"),
        (["serve", "--data-dir", "d", "--retention", "soon"], "'soon' is not a duration"),
        (["serve", "--data-dir", "d", "--hibernate-after", "-5"], "non-negative"),
        (["serve"], "--data-dir"),
        (["result", "wf", "--timeout", "soon"], "not a number"),
        (["list", "--search", "[1]"], "must be a JSON object"),
    ],
)
def test_bad_arguments_exit_2_with_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert 2 == exit_info.value.code
    assert message in capsys.readouterr().err


def test_serve_checks_partitions_and_app_before_joining_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "deployment.json").write_text('{"partitions": 2, "format": 1}')
    unreachable = ["--address", f"127.0.0.1:{_free_port()}", "--data-dir", str(data_dir)]

    assert 2 == main(["serve", *unreachable, "--partitions", "3"])
    err = capsys.readouterr().err
    assert "created with partitions=2" in err and "partitions=3" in err

    assert 2 == main(["serve", *unreachable, "--app", "tests.no_such_module"])
    assert "cannot import app module 'tests.no_such_module'" in capsys.readouterr().err


def test_the_command_starts_without_the_archives_modules() -> None:
    """Only ``duraflow sql`` reads an archive in the command's process: the other commands do
    not import DuckDB, pyiceberg or pyarrow, which cost each of them 1-2 s to start here."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "duraflow.cli", "--help"],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "duraflow.runtime" in imported  # the command's own modules were loaded
    heavy = {name for name in imported if name.split(".")[0] in {"duckdb", "pyiceberg", "pyarrow"}}
    assert set() == heavy
