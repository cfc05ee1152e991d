"""Start by type name from anywhere, and the operator verbs of the ``duraflow`` command
(``start``, ``query``, ``pause``, ``unpause``, ``reset``), the way a user runs them: the
deployment is served on the session's Ray with ``app_modules=["tests.operator_app"]`` (each
partition actor imports it), and the verbs run in a driver process of their own that never
imports that module, so only the partitions can resolve the type name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duraflow import runtime, serving

REPO = Path(__file__).resolve().parent.parent
DRIVER_TIMEOUT_S = 120.0

DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from duraflow.cli.main import main

    address, namespace, fixed = sys.argv[1:4]

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([*argv, "--address", address, "--namespace", namespace])
            except SystemExit as exc:  # argparse refused the arguments
                code = exc.code
        return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

    order = json.dumps({"id": 7, "fixed": fixed})
    steps = {
        "start": run("start", "op_app_order", f"[{order}]", "--id", "cli-op-1"),
        "again": run("start", "op_app_order", f"[{order}]", "--id", "cli-op-1"),
        "unknown": run("start", "op_app_nope", "--id", "cli-op-2"),
        "query": run("query", "cli-op-1", "stage"),
        "pause": run("pause", "cli-op-1", "--reason", "deploying"),
        "described": run("describe", "cli-op-1"),
        "signal": run("signal", "cli-op-1", "go"),
        "unpause": run("unpause", "cli-op-1"),
        "failed": run("result", "cli-op-1", "--timeout", "60"),
    }
    open(fixed, "w").close()  # the fix is deployed
    steps["reset"] = run("reset", "cli-op-1", "--reason", "fixed")
    steps["result"] = run("result", "cli-op-1", "--timeout", "60")
    steps["never_failed"] = run("reset", "cli-op-1")
    steps["bad_to"] = run("reset", "cli-op-1", "--to", "soon")
    steps["bad_args"] = run("start", "op_app_order", '{"id": 1}')
    steps["imported"] = "tests.operator_app" in sys.modules
    print(json.dumps(steps))
""")


@pytest.fixture
def served(ray_session: None, data_dir: Path) -> Iterator[tuple[str, str]]:
    """The app served in a namespace of its own: (Ray address, namespace)."""
    import ray

    namespace = f"opcli-{uuid.uuid4().hex[:12]}"
    config = runtime.engine_config(
        data_dir,
        partitions=1,  # one actor starts faster; crossing partitions is not what this tests
        namespace=namespace,
        synchronous="NORMAL",
        archive=False,
        app_modules=["tests.operator_app"],
    )
    serving.serve(config)
    try:
        yield ray.get_runtime_context().gcs_address, namespace
    finally:
        serving.stop_serving(namespace=namespace)


@pytest.mark.timeout(180)
def test_a_driver_without_the_app_starts_by_name_and_steers_runs(
    served: tuple[str, str], tmp_path: Path
) -> None:
    address, namespace = served
    fixed = tmp_path / "fixed"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, address, namespace, str(fixed)],
        cwd=tmp_path,  # not the repository: `tests` is not importable from there
        capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr[-3000:]
    steps: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])

    def ok(name: str) -> str:
        step = steps[name]
        assert 0 == step["code"], (name, step)
        return str(step["out"])

    def refused(name: str) -> str:
        step = steps[name]
        assert 2 == step["code"], (name, step)
        assert "Traceback" not in step["err"]
        return str(step["err"])

    started = json.loads(ok("start"))
    assert "cli-op-1" == started["workflow_id"]
    assert "already running" in refused("again")
    err = refused("unknown")
    assert "unknown workflow type 'op_app_nope'" in err and "'op_app_order'" in err
    assert '"waiting"' in ok("query")
    assert "paused 'cli-op-1'" in ok("pause")
    described = json.loads(ok("described"))
    assert (True, "deploying") == (described["paused"], described["pause_reason"])
    assert described["code_hash"] and described["code_hash"] == described["current_code_hash"]
    ok("signal")
    assert "unpaused 'cli-op-1'" in ok("unpause")
    assert 1 == steps["failed"]["code"] and "cannot ship 7 yet" in steps["failed"]["err"]
    new_run = json.loads(ok("reset"))["run_id"]
    assert new_run != started["run_id"]
    assert {"id": 7, "shipped": "shipped 7"} == json.loads(ok("result"))
    assert "never failed" in refused("never_failed")
    assert "expected 'last_failure' or an event ID" in refused("bad_to")
    assert "expected a JSON array of arguments" in refused("bad_args")
    assert steps["imported"] is False
