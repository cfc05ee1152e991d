"""Workflows for the crash tests, and the process that the tests start and SIGKILL.

    python tests/actors/crash_flows.py DATA_DIR N       # start N workflows, then sleep forever
    python tests/actors/crash_flows.py DATA_DIR resume  # reopen, signal, wait, write results.json

Each workflow ``crash-NNN`` runs three activities one after another, sleeps on a durable timer,
then waits for a signal with a timeout and returns what it saw. Every activity attempt appends
one line ``"<workflow ID> <seq> <attempt> <pid>"`` (fsync'd) to ``DATA_DIR/executions.log`` when
it starts, so a test can count executions per process. Everything is a pure function of the
workflow number ``n``, so a test can compute each expected result.

Signals: workflows with ``n % 4 == 0`` are signalled by the first process right after they
start (buffered durably before the kill); those with ``n % 4 == 2`` are signalled by the
``resume`` process (after the restart); odd ones are never signalled and time out.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run as a script: import this file under its package name, so that history records
    # ``tests.actors.crash_flows:...`` as the code ref, never ``__main__:...``.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.actors.crash_flows import main

    sys.exit(main(sys.argv[1:]))

import duraflow as df

PARTITIONS = 2
PREFIX = "crash-"
SIGNAL = "crash_bonus"
STEPS = 3
EXECUTIONS_FILE = "executions.log"
READY_FILE = "ready.json"
RESULTS_FILE = "results.json"
SIGNALLED_TIMEOUT_S = 30.0
UNSIGNALLED_TIMEOUT_S = 1.0
RESUME_TIMEOUT_S = 40.0

_executions_log: Path | None = None


def workflow_id(n: int) -> str:
    return f"{PREFIX}{n:03d}"


def number_of(wid: str) -> int:
    return int(wid[len(PREFIX) :])


def step_ms(n: int, i: int) -> int:
    """How long step ``i`` of workflow ``n`` takes: 50-300 ms."""
    return 50 + 50 * ((n * 7 + i * 3) % 6)


def sleep_s(n: int) -> float:
    """The durable sleep of workflow ``n``: 0.5-2 s."""
    return 0.5 + 0.5 * (n % 4)


def signalled_early(n: int) -> bool:
    """Signalled by the first process, before the kill."""
    return n % 4 == 0


def signalled_late(n: int) -> bool:
    """Signalled by the resume process, after the restart."""
    return n % 4 == 2


def bonus(n: int) -> int:
    return 1000 + n


def step_value(n: int, i: int) -> int:
    return n * 10 + i


def expected_result(n: int) -> dict[str, Any]:
    got = bonus(n) if signalled_early(n) or signalled_late(n) else None
    return {"n": n, "steps": [step_value(n, i) for i in range(STEPS)], "bonus": got}


def _record_execution(line: str) -> None:
    assert _executions_log is not None, "crash_flows.main() sets the executions log"
    fd = os.open(_executions_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@df.activity(retry=df.RetryPolicy(initial_interval=0.1, maximum_attempts=10))
def crash_step(n: int, i: int) -> int:
    info = df.activity_info()
    _record_execution(f"{info.workflow_id} {info.seq} {info.attempt} {os.getpid()}\n")
    time.sleep(step_ms(n, i) / 1000)
    return step_value(n, i)


@df.workflow
async def crash_order(ctx: df.WorkflowContext, n: int, signal_timeout: float) -> dict[str, Any]:
    steps = [await ctx.activity(crash_step, n, i) for i in range(STEPS)]
    await ctx.sleep(sleep_s(n))
    got = await ctx.wait_for_signal(SIGNAL, timeout=signal_timeout, default=None)
    return {"n": n, "steps": steps, "bonus": got}


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _start(engine: df.Engine, data_dir: Path, count: int) -> None:
    client = engine.client()
    for n in range(count):
        wid = workflow_id(n)
        try:
            client.get_handle(wid).describe()
            continue  # started by an earlier process
        except df.WorkflowNotFound:
            pass
        timeout = SIGNALLED_TIMEOUT_S if n % 2 == 0 else UNSIGNALLED_TIMEOUT_S
        client.start(crash_order, n, timeout, workflow_id=wid)
    for n in range(count):
        if signalled_early(n):
            with contextlib.suppress(df.WorkflowClosed):
                client.get_handle(workflow_id(n)).signal(SIGNAL, bonus(n))
    _write_json(data_dir / READY_FILE, {"pid": os.getpid(), "count": count})
    print("READY", flush=True)
    while True:
        time.sleep(3600)  # until the test kills us


def _resume(engine: df.Engine, data_dir: Path) -> None:
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    client = engine.client()
    wids = sorted({d.workflow_id for d in client.list(workflow_type="crash_order")})
    for wid in wids:
        if signalled_late(number_of(wid)):
            # A killed earlier resume may have signalled it already, and it finished.
            with contextlib.suppress(df.WorkflowClosed):
                client.get_handle(wid).signal(SIGNAL, bonus(number_of(wid)))
    results = {}
    for wid in wids:
        remaining = max(0.1, deadline - time.monotonic())
        results[wid] = client.get_handle(wid).result(timeout=remaining)
    _write_json(data_dir / RESULTS_FILE, {"pid": os.getpid(), "results": results})
    print("DONE", flush=True)


def main(argv: list[str]) -> int:
    global _executions_log
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    data_dir = Path(argv[0]).resolve()
    _executions_log = data_dir / EXECUTIONS_FILE
    with df.Engine(data_dir, runtime="local", partitions=PARTITIONS) as engine:
        if argv[1] == "resume":
            _resume(engine, data_dir)
        else:
            _start(engine, data_dir, int(argv[1]))
    return 0
