"""DBOS Transact on its SQLite system database, running duraflow's benchmark workloads.

Every workload runs in a fresh child process with a fresh system database, so DBOS's global
state is never shared and the RSS measured is DBOS's own:

  W1  N workflows of 3 no-op steps started at once: workflows/s and start-to-result latency;
      then the same workflow one at a time (unloaded latency).
  W2  signal round trip: a workflow parked on ``DBOS.recv_async(topic="go")`` is sent a message;
      latency from the send to its result. Loaded (M parked, sent one after another) and
      unloaded (one at a time).
  W3  M workflows each ``DBOS.sleep(1.0)``: lateness (wake time minus due time), measured
      inside the workflow as duraflow's ``bench_sleep`` does.
  W4  P workflows parked on recv: time to start them until all are parked, RSS and idle CPU
      while parked, then time to message every one and have every result. Each phase has a
      time budget; a phase that runs past it, or fails, is recorded as ``did_not_finish``.
  W6  ping-pong: two workflows message each other N times with ``DBOS.send_async`` /
      ``recv_async`` (benchmarks/bench_messages.py has duraflow's twin).

DBOS settings: its defaults, apart from the system database URL (``--max-executor-threads``
can bound its thread pool). DBOS 3.4 has no admin server and opens no listening socket
(Conductor, its only network client, stays off without a key); the child's environment has no
``DBOS*`` variables, so DBOS Cloud mode cannot switch on. Defaults that shape the numbers: the
SQLite file uses a rollback journal (not WAL) with ``synchronous=FULL``; a notification
listener finds messages by polling every 1 s, one query per waiting workflow; every waiting
recv also re-checks the database itself every 60 s, on a thread of an unbounded pool.

API choices, DBOS's best per workload (measured on this 2-core machine):
  W1, W3  the sync API, DBOS's primary one. A sync 3-step workflow cost ~13-15 ms of CPU
          against ~20 ms for async workflows with async steps (every checkpoint of an async
          workflow hops to a thread). W3 started with ``start_workflow_async`` in one burst
          was ~400 ms late at p50 (200 threads writing at once starve the event loop of the
          GIL); sync starts, one after another, wake within a few ms.
  W2, W4  the async API (``recv_async``): a parked async workflow is a coroutine, a parked sync
          workflow holds a thread, and this machine cannot hold 100,000 threads (pid_max is
          32,768). W2 uses the same workflow so that the two read together; its latency is the
          1 s poll either way.

Found at 100,000 parked (async, defaults): starts slow from ~100/s to ~40/s as the listener's
per-waiter polling grows; from ~60 s on, the 60 s re-checks pile up on the unbounded pool, which
grew to ~22,000 threads and 1.3 GiB at ~23,000 workflows, when ``can't start new thread``
failed ~600 parked workflows (status ERROR). With ``max_executor_threads=64`` nothing failed,
but 600 s started only 36,500 (600 MiB). Hence the default W4 size of 10,000. There the default
pool peaks at ~8,000 threads; ``--max-executor-threads 64`` halved start time and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import select
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

from benchmarks.common import RESULTS_DIR, print_table, round_trips, rss_mib, summary_ms, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "DBOS is not installed: run `pip install -e '.[bench]'` (or `./dev bench`)"

SLEEP_S = 1.0
DBOS_POLL_INTERVAL_S = 1.0  # DBOS's default notification_listener_polling_interval_sec
RECV_TIMEOUT_S = 7 * 24 * 3600.0  # recv's default is 60 s; a parked workflow must outwait W4
PARKED_POLL_S = 0.002  # checking one workflow
PARKED_COUNT_POLL_S = 0.5  # counting all of them
W1_CLIENT_THREADS = 4  # W1 starts workflows from this many threads, as a small web server would
START_BATCH = 500  # W4 starts this many workflows concurrently, as bench_parked does
SEND_BATCH = 1000  # W4 messages per DBOS.send_bulk_async transaction
IDLE_WINDOW_S = 5.0  # W4 measures CPU over this window while everything is parked
WORKER_TIMEOUT_S = 600.0  # non-W4 child: this plus 2 s per workflow, then it is killed
W4_LAUNCH_SLACK_S = 180.0  # W4 child: two phase budgets plus this, then it is killed


# --------------------------------------------------------------------------- child process


def _define_workflows() -> SimpleNamespace:
    """Register the benchmark workflows with DBOS (only ever called in a child process)."""
    from dbos import DBOS

    @DBOS.step()
    def noop(i: int) -> int:
        return i

    @DBOS.workflow()
    def three_steps(i: int) -> int:
        return noop(noop(noop(i)))

    @DBOS.workflow()
    def sleep_lateness(seconds: float) -> float:
        due = time.time() + seconds  # DBOS's durable sleep is due at a wall-clock time
        DBOS.sleep(seconds)
        return time.time() - due

    @DBOS.workflow()
    async def wait_message() -> Any:
        return await DBOS.recv_async(topic="go", timeout_seconds=RECV_TIMEOUT_S)

    @DBOS.workflow()
    async def ping(peer: str, rounds: int) -> int:
        for i in range(rounds):
            await DBOS.send_async(peer, i, topic="ping")
            await DBOS.recv_async(topic="pong", timeout_seconds=RECV_TIMEOUT_S)
        return rounds

    @DBOS.workflow()
    async def pong(peer: str, rounds: int) -> int:
        for _ in range(rounds):
            i = await DBOS.recv_async(topic="ping", timeout_seconds=RECV_TIMEOUT_S)
            await DBOS.send_async(peer, i, topic="pong")
        return rounds

    return SimpleNamespace(
        three_steps=three_steps,
        sleep_lateness=sleep_lateness,
        wait_message=wait_message,
        ping=ping,
        pong=pong,
    )


def dbos_config(database: Path, *, max_executor_threads: int | None = None) -> dict[str, Any]:
    """DBOS's defaults, on a SQLite system database at ``database``."""
    config: dict[str, Any] = {
        "name": "duraflow-bench",
        "system_database_url": f"sqlite:///{database}",
    }
    if max_executor_threads is not None:  # DBOS's default is an unbounded thread pool
        config["max_executor_threads"] = max_executor_threads
    return config


def _emit(kind: str, payload: dict[str, Any]) -> None:
    """One JSON line to the parent: ``partial`` measurements so far, or the ``result``."""
    print(json.dumps({kind: payload}), flush=True)


class _ParkedCounter:
    """Tells which workflows are parked on recv, read straight from DBOS's system database.

    ``recv`` registers its in-memory waiter first and then checkpoints its timeout as a
    ``DBOS.sleep`` step, so each such row is a workflow that is (or within microseconds will
    be) waiting. One COUNT beats asking DBOS for the steps of 10,000 workflows.
    """

    _PARKED = "SELECT count(*) FROM operation_outputs WHERE function_name = 'DBOS.sleep'"

    def __init__(self, database: Path) -> None:
        self._conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30.0)

    def count(self, workflow_id: str | None = None) -> int:
        """Parked workflows, or 1 if ``workflow_id`` is parked (a primary-key lookup)."""
        if workflow_id is None:
            return int(self._conn.execute(self._PARKED).fetchone()[0])
        query = f"{self._PARKED} AND workflow_uuid = ?"
        return int(self._conn.execute(query, (workflow_id,)).fetchone()[0])

    def failed(self) -> int:
        """Workflows that ended in ERROR (DBOS fails a workflow that cannot get a thread)."""
        query = "SELECT count(*) FROM workflow_status WHERE status = 'ERROR'"
        return int(self._conn.execute(query).fetchone()[0])

    async def wait_for(
        self, expected: int, deadline: float, *, workflow_id: str | None = None
    ) -> bool:
        """Wait until ``expected`` workflows are parked; False once ``deadline`` passes.

        Raises:
            RuntimeError: a workflow failed instead of parking.
        """
        # A full COUNT takes ~13 ms at 100,000 rows and briefly blocks DBOS's writers (the
        # rollback journal lets no commit through a read): poll it slowly.
        poll_s = PARKED_POLL_S if workflow_id else PARKED_COUNT_POLL_S
        while self.count(workflow_id) < expected:
            if self.failed():
                raise RuntimeError(f"{self.failed()} workflows failed instead of parking")
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(poll_s)
        return True


def w1_throughput(flows: SimpleNamespace, n: int) -> dict[str, Any]:
    """Start ``n`` workflows from a pool of client threads; each one's start-to-result time."""
    from dbos import DBOS

    started_at: dict[int, float] = {}
    done_at: dict[int, float] = {}

    def start(i: int) -> Any:
        started_at[i] = time.perf_counter()
        handle = DBOS.start_workflow(flows.three_steps, i)
        # The handle's future is what get_result() waits on: its callback stamps the moment
        # the result is available without parking one waiting thread per workflow.
        handle.future.add_done_callback(lambda _, i=i: done_at.setdefault(i, time.perf_counter()))
        return handle

    t0 = time.perf_counter()
    with ThreadPoolExecutor(W1_CLIENT_THREADS) as clients:
        handles = list(clients.map(start, range(n)))
    results = [h.get_result() for h in handles]
    elapsed = time.perf_counter() - t0
    if results != list(range(n)):
        raise RuntimeError("a workflow returned something other than its input")
    return {
        "workflows": n,
        "seconds": elapsed,
        "workflows_per_s": n / elapsed,
        **summary_ms([done_at[i] - started_at[i] for i in range(n)]),
    }


def w1_unloaded(flows: SimpleNamespace, n: int) -> dict[str, Any]:
    from dbos import DBOS

    latencies = []
    for i in range(n):
        t0 = time.perf_counter()
        DBOS.start_workflow(flows.three_steps, i).get_result()
        latencies.append(time.perf_counter() - t0)
    return {"samples": n, **summary_ms(latencies)}


async def w2_signal_loaded(
    flows: SimpleNamespace, n: int, parked: _ParkedCounter
) -> dict[str, Any]:
    """Park ``n`` workflows, then message each in turn; latency from its send to its result."""
    from dbos import DBOS

    handles = await asyncio.gather(
        *(DBOS.start_workflow_async(flows.wait_message) for _ in range(n))
    )
    if not await parked.wait_for(n, time.perf_counter() + WORKER_TIMEOUT_S):
        raise RuntimeError(f"only {parked.count()} of {n} workflows parked")
    sent_at: dict[str, float] = {}

    async def result_latency(handle: Any) -> float:
        await handle.get_result()
        return time.perf_counter() - sent_at[handle.workflow_id]

    waiters = [asyncio.create_task(result_latency(h)) for h in handles]
    # One sender, one message at a time: SQLite serializes writers anyway, and concurrent
    # senders would only add lock waits to DBOS's numbers.
    for handle in handles:
        sent_at[handle.workflow_id] = time.perf_counter()
        await DBOS.send_async(handle.workflow_id, 1, topic="go")
    latencies = await asyncio.gather(*waiters)
    return {"workflows": n, **summary_ms(list(latencies))}


async def w2_signal_unloaded(
    flows: SimpleNamespace, n: int, parked: _ParkedCounter
) -> dict[str, Any]:
    """One workflow at a time: start, wait until parked, then time send -> result.

    Note:
        DBOS finds messages by polling once a second. Samples taken back to back lock onto
        that phase (each send lands just after a poll, and every sample reads ~1 s), so each
        send waits a random fraction of the poll interval first, as a message arriving at an
        unrelated moment would.
    """
    from dbos import DBOS

    phase = random.Random(0)
    samples = []
    for _ in range(n):
        handle = await DBOS.start_workflow_async(flows.wait_message)
        wid = handle.workflow_id
        if not await parked.wait_for(1, time.perf_counter() + 60.0, workflow_id=wid):
            raise RuntimeError(f"workflow {wid} did not park within 60 s")
        await asyncio.sleep(phase.uniform(0.0, DBOS_POLL_INTERVAL_S))
        t0 = time.perf_counter()
        await DBOS.send_async(handle.workflow_id, 1, topic="go")
        await handle.get_result()
        samples.append(time.perf_counter() - t0)
    return {"samples": n, **summary_ms(samples)}


def w3_timer_lateness(flows: SimpleNamespace, n: int) -> dict[str, Any]:
    from dbos import DBOS

    handles = [DBOS.start_workflow(flows.sleep_lateness, SLEEP_S) for _ in range(n)]
    lateness = [h.get_result() for h in handles]
    return {"timers": n, "sleep_s": SLEEP_S, **summary_ms(lateness)}


class _OverBudget(Exception):
    """A W4 phase ran past its time budget."""


async def w4_parked(
    flows: SimpleNamespace,
    n: int,
    parked: _ParkedCounter,
    budget_s: float,
    idle_window_s: float = IDLE_WINDOW_S,
) -> dict[str, Any]:
    """Start ``n`` parked workflows, measure them parked (CPU over ``idle_window_s``), then
    message all and await all.

    A phase (start, complete) that runs past ``budget_s`` or fails stops the run; the result
    then says why in ``did_not_finish`` and keeps what was measured so far.
    """
    measured: dict[str, Any] = {"workflows": n, "budget_s": budget_s}
    progress: dict[str, Any] = {"started": 0, "sent": 0}
    phase = "start"
    try:
        handles = await _w4_start(flows, n, parked, budget_s, measured, progress)
        _emit("partial", measured)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(idle_window_s)
        measured["idle_cpu_cores"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        measured["rss_mib"] = rss_mib([os.getpid()])
        measured["threads"] = _thread_count()
        _emit("partial", measured)
        phase = "complete"
        await _w4_complete(handles, budget_s, measured, progress)
        return measured
    except Exception as exc:  # a budget, or DBOS failing (it runs out of threads at ~22,000)
        reason = (
            f"{phase} exceeded {budget_s:g} s"
            if isinstance(exc, _OverBudget)
            else f"{phase} failed: {type(exc).__name__}: {exc}"
        )
        return {
            **measured,
            "did_not_finish": reason,
            **progress,
            "parked": parked.count(),
            "failed": parked.failed(),
            "rss_mib_at_stop": rss_mib([os.getpid()]),
            "threads_at_stop": _thread_count(),
        }


async def _w4_start(
    flows: SimpleNamespace,
    n: int,
    parked: _ParkedCounter,
    budget_s: float,
    measured: dict[str, Any],
    progress: dict[str, Any],
) -> list[Any]:
    from dbos import DBOS

    t0 = time.perf_counter()
    deadline = t0 + budget_s
    handles: list[Any] = []
    for first in range(0, n, START_BATCH):
        batch = range(first, min(n, first + START_BATCH))
        handles.extend(
            await asyncio.gather(*(DBOS.start_workflow_async(flows.wait_message) for _ in batch))
        )
        progress["started"] = len(handles)
        if time.perf_counter() > deadline:
            raise _OverBudget
        if first % (10 * START_BATCH) == 0:
            at = {"at_s": time.perf_counter() - t0, "rss_mib": rss_mib([os.getpid()])}
            _emit("partial", {**measured, **progress, **at, "threads": _thread_count()})
    if not await parked.wait_for(n, deadline):
        raise _OverBudget
    measured["start_s"] = time.perf_counter() - t0
    measured["starts_per_s"] = n / measured["start_s"]
    return handles


async def _w4_complete(
    handles: list[Any], budget_s: float, measured: dict[str, Any], progress: dict[str, Any]
) -> None:
    from dbos import DBOS, SendMessage

    n = len(handles)
    t0 = time.perf_counter()
    deadline = t0 + budget_s
    results = asyncio.gather(*(h.get_result() for h in handles))
    try:
        for first in range(0, n, SEND_BATCH):
            batch = handles[first : first + SEND_BATCH]
            await DBOS.send_bulk_async([SendMessage(h.workflow_id, 1, "go") for h in batch])
            progress["sent"] = first + len(batch)
            if time.perf_counter() > deadline:
                raise _OverBudget
        measured["send_all_s"] = time.perf_counter() - t0
        try:
            timeout = max(0.0, deadline - time.perf_counter())
            values = await asyncio.wait_for(asyncio.shield(results), timeout)
        except TimeoutError:
            raise _OverBudget from None
    finally:
        results.cancel()
    measured["complete_s"] = time.perf_counter() - t0
    if values != [1] * n:
        raise RuntimeError("a parked workflow returned something other than its message")


async def w6_ping_pong(flows: SimpleNamespace, rounds: int) -> dict[str, Any]:
    """Two workflows message each other ``rounds`` times (send, then recv the answer)."""
    from dbos import DBOS, SetWorkflowID

    t0 = time.perf_counter()
    with SetWorkflowID("w6-pong"):
        pong = await DBOS.start_workflow_async(flows.pong, "w6-ping", rounds)
    with SetWorkflowID("w6-ping"):
        ping = await DBOS.start_workflow_async(flows.ping, "w6-pong", rounds)
    await asyncio.gather(ping.get_result(), pong.get_result())
    return round_trips(rounds, time.perf_counter() - t0)


def _thread_count() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _report(result: dict[str, Any]) -> NoReturn:
    """Print the result and exit at once.

    This skips DBOS.destroy(), asyncio.run's cancellation of every task and interpreter
    teardown: after a did_not_finish they would grind through thousands of parked workflows.
    Every commit is already durable, and the parent deletes the data directory.
    """
    _emit("result", result)
    os._exit(0)


async def _report_async(result: Awaitable[dict[str, Any]]) -> None:
    _report(await result)


WORKLOADS = (
    "w1_throughput",
    "w1_unloaded",
    "w2_signal_loaded",
    "w2_signal_unloaded",
    "w3_timer_lateness",
    "w4_parked",
    "w6_ping_pong",
)


def worker_main(argv: list[str]) -> None:
    """Child process: run one workload on a fresh DBOS and print its result as JSON."""
    parser = argparse.ArgumentParser(prog="bench_dbos --worker")
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--budget-s", type=float, default=900.0)
    parser.add_argument("--max-executor-threads", type=int, default=None)
    parser.add_argument("--idle-window-s", type=float, default=IDLE_WINDOW_S)
    args = parser.parse_args(argv)
    from dbos import DBOS

    flows = _define_workflows()  # before DBOS() and launch(), as DBOS wants
    database = args.data_dir / "dbos.sqlite"
    DBOS(config=dbos_config(database, max_executor_threads=args.max_executor_threads))
    DBOS.launch()
    parked = _ParkedCounter(database)
    n = args.size
    # Sync workloads run on this thread: DBOS refuses its sync calls inside an event loop.
    if args.workload == "w1_throughput":
        w1_unloaded(flows, 5)  # warm-up: first calls import and build lazily
        _report(w1_throughput(flows, n))
    elif args.workload == "w1_unloaded":
        w1_unloaded(flows, 5)
        _report(w1_unloaded(flows, n))
    elif args.workload == "w3_timer_lateness":
        _report(w3_timer_lateness(flows, n))
    elif args.workload == "w2_signal_loaded":
        asyncio.run(_report_async(w2_signal_loaded(flows, n, parked)))
    elif args.workload == "w2_signal_unloaded":
        asyncio.run(_report_async(w2_signal_unloaded(flows, n, parked)))
    elif args.workload == "w6_ping_pong":
        asyncio.run(_report_async(w6_ping_pong(flows, n)))
    else:
        asyncio.run(_report_async(w4_parked(flows, n, parked, args.budget_s, args.idle_window_s)))


# --------------------------------------------------------------------------- parent process


def _run_child(
    workload: str,
    size: int,
    *,
    timeout_s: float,
    budget_s: float = 900.0,
    max_executor_threads: int | None = None,
    idle_window_s: float = IDLE_WINDOW_S,
) -> dict[str, Any]:
    """Run one workload in a fresh interpreter; kill it (by its PID) after ``timeout_s``."""
    print(f"dbos {workload} ({size}) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-dbos-") as tmp:
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_dbos",
            "--worker",
            workload,
            "--data-dir",
            tmp,
            "--size",
            str(size),
            "--budget-s",
            str(budget_s),
            "--idle-window-s",
            str(idle_window_s),
        ]
        if max_executor_threads is not None:
            command += ["--max-executor-threads", str(max_executor_threads)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBOS")}
        stderr_path = Path(tmp) / "stderr.log"
        with stderr_path.open("wb") as stderr:
            child = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
            try:
                messages, killed = _read_messages(child, workload, time.monotonic() + timeout_s)
            finally:
                if child.poll() is None:  # timed out or interrupted: kill the PID we started
                    child.kill()
                child.wait()
        for message in messages:
            if "result" in message:
                return message["result"]
        partial = next((m["partial"] for m in reversed(messages) if "partial" in m), {})
        if killed:
            return {**partial, "did_not_finish": f"killed after {timeout_s:g} s"}
        tail = stderr_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"DBOS worker {workload} exited {child.returncode}:\n{tail}")


def _read_messages(
    child: subprocess.Popen[str], workload: str, deadline: float
) -> tuple[list[dict[str, Any]], bool]:
    """The child's JSON lines until it closes stdout; True as well if ``deadline`` passed."""
    assert child.stdout is not None
    messages = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return messages, True
        ready, _, _ = select.select([child.stdout], [], [], min(remaining, 60.0))
        if not ready:
            continue
        line = child.stdout.readline()
        if not line:
            return messages, False
        if line.startswith("{"):
            messages.append(json.loads(line))
            if "partial" in messages[-1]:  # W4 runs for minutes: show it is alive
                print(f"  dbos {workload}: {line.strip()}", file=sys.stderr)


def run(
    *,
    workflows: int = 1000,
    samples: int = 100,
    signals: int = 200,
    timers: int = 200,
    parked_sizes: tuple[int, ...] = (10_000,),
    parked_budget_s: float = 900.0,
    max_executor_threads: int | None = None,
    idle_window_s: float = IDLE_WINDOW_S,
) -> dict[str, Any]:
    """Run every DBOS workload, each in its own child process, and collect the results.

    Args:
        workflows: W1 workflows started at once.
        samples: W1 and W2 unloaded samples, one workflow at a time.
        signals: W2 workflows parked and then messaged.
        timers: W3 workflows sleeping 1 s each.
        parked_sizes: W4 sizes, each run in its own process.
        parked_budget_s: W4 time budget for each phase (start, complete) of each size.
        max_executor_threads: DBOS's ``max_executor_threads``; None keeps its default, an
            unbounded thread pool.
        idle_window_s: how long W4 measures CPU while everything is parked.

    Returns:
        ``{"w1_throughput": ..., "w1_unloaded": ..., "w2_signal_loaded": ...,
        "w2_signal_unloaded": ..., "w3_timer_lateness": ..., "w4_parked": {"<size>": ...},
        "version": ...}``.

    Raises:
        RuntimeError: DBOS is not installed, or a worker failed.
    """
    if importlib.util.find_spec("dbos") is None:
        raise RuntimeError(INSTALL_HINT)
    results: dict[str, Any] = {"version": metadata.version("dbos")}
    for workload, size in (
        ("w1_throughput", workflows),
        ("w1_unloaded", samples),
        ("w2_signal_loaded", signals),
        ("w2_signal_unloaded", samples),
        ("w3_timer_lateness", timers),
    ):
        results[workload] = _run_child(
            workload,
            size,
            timeout_s=WORKER_TIMEOUT_S + 2.0 * size,
            max_executor_threads=max_executor_threads,
        )
    results["w4_parked"] = {
        str(size): parked(size, parked_budget_s, max_executor_threads, idle_window_s)
        for size in parked_sizes
    }
    return results


def parked(
    size: int,
    budget_s: float,
    max_executor_threads: int | None = None,
    idle_window_s: float = IDLE_WINDOW_S,
) -> dict[str, Any]:
    """W4 alone at ``size``, in its own child process (see :func:`run`)."""
    if importlib.util.find_spec("dbos") is None:
        raise RuntimeError(INSTALL_HINT)
    result: dict[str, Any] = _run_child(
        "w4_parked",
        size,
        timeout_s=2 * budget_s + idle_window_s + W4_LAUNCH_SLACK_S,
        budget_s=budget_s,
        max_executor_threads=max_executor_threads,
        idle_window_s=idle_window_s,
    )
    return result


def ping_pong(rounds: int) -> dict[str, Any]:
    """W6 ping-pong alone (``rounds`` round trips), in its own child process."""
    if importlib.util.find_spec("dbos") is None:
        raise RuntimeError(INSTALL_HINT)
    result: dict[str, Any] = _run_child(
        "w6_ping_pong", rounds, timeout_s=WORKER_TIMEOUT_S + 4.0 * rounds
    )
    return result


def _latency(result: dict[str, Any]) -> str:
    return f"{result['p50_ms']:.1f} / {result['p99_ms']:.1f} ms"


def _parked_rows(size: str, result: dict[str, Any]) -> list[tuple[str, str]]:
    if "did_not_finish" in result:
        got = ", ".join(
            f"{k} {result[k]:.0f}" if isinstance(result[k], float) else f"{k} {result[k]}"
            for k in ("start_s", "started", "parked", "failed", "sent", "rss_mib_at_stop")
            if k in result
        )
        return [(f"W4 {size} parked", f"did not finish: {result['did_not_finish']} ({got})")]
    return [
        (f"W4 {size} parked: start all", f"{result['start_s']:.1f} s"),
        (
            f"W4 {size} parked: RSS, idle CPU",
            f"{result['rss_mib']:.0f} MiB, {result['idle_cpu_cores']:.2f} cores",
        ),
        (f"W4 {size} parked: message all, complete", f"{result['complete_s']:.1f} s"),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks dbos", description=__doc__)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--timers", type=int, default=200)
    parser.add_argument("--parked", default="10000", help="comma-separated W4 sizes; empty to skip")
    parser.add_argument(
        "--parked-budget", type=float, default=900.0, help="W4 seconds per phase per size"
    )
    parser.add_argument(
        "--max-executor-threads",
        type=int,
        default=None,
        help="DBOS setting (default: DBOS's own, an unbounded thread pool)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "dbos.json")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.parked.split(",") if s.strip())
    load_before = os.getloadavg()
    results = run(
        workflows=args.workflows,
        samples=args.samples,
        signals=args.signals,
        timers=args.timers,
        parked_sizes=sizes,
        parked_budget_s=args.parked_budget,
        max_executor_threads=args.max_executor_threads,
    )
    rows = [
        (
            f"W1 {args.workflows} x 3 steps",
            f"{results['w1_throughput']['workflows_per_s']:.0f} wf/s",
        ),
        ("W1 latency under load p50/p99", _latency(results["w1_throughput"])),
        ("W1 unloaded latency p50/p99", _latency(results["w1_unloaded"])),
        (f"W2 signal, {args.signals} parked p50/p99", _latency(results["w2_signal_loaded"])),
        ("W2 signal round trip p50/p99", _latency(results["w2_signal_unloaded"])),
        (f"W3 lateness, {args.timers} x 1 s p50/p99", _latency(results["w3_timer_lateness"])),
    ]
    for size, result in results["w4_parked"].items():
        rows.extend(_parked_rows(size, result))
    load_after = os.getloadavg()
    rows.append(("load average before / after", f"{load_before[0]:.2f} / {load_after[0]:.2f}"))
    threads = args.max_executor_threads or "unbounded (default)"
    print_table(
        f"DBOS Transact {results['version']} on SQLite, each workload in its own process "
        f"(executor threads: {threads})",
        rows,
    )
    config = {
        "workflows": args.workflows,
        "samples": args.samples,
        "signals": args.signals,
        "timers": args.timers,
        "parked": list(sizes),
        "parked_budget_s": args.parked_budget,
        "max_executor_threads": args.max_executor_threads,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    path = write_json(args.json, {"config": config, "results": results})
    print(f"\nJSON: {path}")
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2:])
    else:
        main()
