"""Restate 1.7 with its Python SDK, running duraflow's benchmark workloads.

How Restate runs here (benchmarks/restate_server.py has the details):
  server  ``restate-server`` 1.7.12, the binary that ``@restatedev/restate-server`` on the npm
          registry ships, installed on first use into ``~/.cache/duraflow-bench/restate-1.7.12``.
          One node with its defaults (every role, 24 partitions, RocksDB, the replicated
          loglet, its WAL fsynced) apart from: telemetry off, TCP only, ingress, admin and
          node-to-node ports on 127.0.0.1, the web UI off, its data in a temporary directory.
  SDK     ``restate-sdk`` (the ``bench`` extra) served by hypercorn over HTTP/2 in one process
          of its own, with the settings Restate's serving docs give for production (unbounded
          HTTP/2 streams and keep-alive); registered through the admin API's ``/deployments``.
  client  aiohttp over Restate's HTTP ingress (HTTP/1.1, one connection per request in flight).
  network Every workload runs in a child process that moves itself into a network namespace
          with only loopback (it needs root), with the server and the SDK below it: the server
          asks GitHub for its latest release at start and no setting turns that off.

The workflows (benchmarks/restate_app.py) are written the way Restate's docs write them:
``restate.Workflow``, each step a ``ctx.run_typed`` (an async no-op: a sync one would hop to a
thread), a signal a durable promise (``ctx.promise("go")``) resolved by a shared handler, a timer
``ctx.sleep``. Each run is a workflow with a key of its own, as each duraflow run has a workflow
ID. Over HTTP/2 a run waiting on its promise stays ``running``, its stream to the SDK open, until
Restate's inactivity timeout (1 min) suspends it: a run signalled within that minute goes on
over its open stream, a later one is invoked again and replays its journal.

  W1  N at once (one POST to ``/<workflow>/<key>/run`` each, answered with the result):
      workflows/s and start-to-result p50/p99; one at a time (unloaded); N with 32 in flight.
  W2  M parked on the promise, their results awaited (``/attach``), all signalled at once:
      send-to-result p50/p99; and one at a time (unloaded).
  W3  M sleeping 1 s: lateness (wake time minus due time, the due time recorded by a step).
  W4  P parked: time until every one waits on its promise (its journal holds the promise's
      command: read from the admin SQL API every 0.5 s), RSS of the server and SDK processes,
      time from the first signal to every result. Starts, signals and awaits go 500 at a time.

The server and SDK are started once for W1-W3 and afresh for each W4 size.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import restate_server
from benchmarks.common import (
    RESULTS_DIR,
    in_flight_runs,
    print_table,
    rss_mib,
    summary_ms,
    write_json,
)
from benchmarks.restate_server import RestateUnavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
SLEEP_S = 1.0
IN_FLIGHT = 32
BATCH = 500  # W4 starts, signals and awaits this many at a time, as bench_parked does
CONNECTIONS = 1000  # the client's connection pool to the ingress
PARKED_POLL_S = 0.005  # W2 unloaded: how often the admin API is asked whether it parked
PARKED_COUNT_POLL_S = 0.5  # W4: how often all parked workflows are counted
SETTLE_S = 1.0  # W4: parked this long before RSS is read, as bench_parked does
WORKER_TIMEOUT_S = 600.0  # a child: this plus 2 s per workflow, then it is killed
SDK_MODULES = {"restate": "restate-sdk", "hypercorn": "hypercorn"}  # module: package

# -------------------------------------------------------------------- the client


class Ingress:
    """Calls through Restate's HTTP ingress, and counts parked runs through its admin API."""

    def __init__(self, session: Any, ingress_url: str, admin_url: str) -> None:
        self.session = session
        self.ingress = ingress_url
        self.admin = admin_url

    async def _post(self, url: str, payload: Any = None) -> Any:
        body: dict[str, Any] = {"json": payload, "headers": {"accept": "application/json"}}
        if payload is None:  # Restate wants no content-type for a handler without input
            body = {"skip_auto_headers": ["Content-Type"]}
        async with self.session.post(url, **body) as response:
            if response.status >= 300:
                raise RuntimeError(f"POST {url}: {response.status} {await response.text()}")
            return await response.json(content_type=None)

    async def run(self, workflow: str, key: str, payload: Any = None) -> Any:
        """Start a workflow run and wait for its result (one request)."""
        return await self._post(f"{self.ingress}/{workflow}/{key}/run", payload)

    async def send(self, workflow: str, key: str, payload: Any = None) -> None:
        """Start a workflow run without waiting for it (durably accepted)."""
        await self._post(f"{self.ingress}/{workflow}/{key}/run/send", payload)

    async def signal(self, key: str, value: int) -> None:
        await self._post(f"{self.ingress}/BenchWaitSignal/{key}/signal", value)

    async def attach(self, workflow: str, key: str) -> Any:
        """Wait for a run's result."""
        url = f"{self.ingress}/restate/workflow/{workflow}/{key}/attach"
        async with self.session.get(url) as response:
            if response.status >= 300:
                raise RuntimeError(f"GET {url}: {response.status} {await response.text()}")
            return await response.json(content_type=None)

    async def parked(self) -> int:
        """BenchWaitSignal runs waiting on their promise: not completed, and their journal
        holds the promise's command. (Over HTTP/2 a waiting run stays ``running``, its stream
        to the SDK open, until the inactivity timeout, 1 min, suspends it.)"""
        query = (
            "SELECT count(*) AS parked FROM sys_journal j JOIN sys_invocation i ON j.id = i.id "
            "WHERE j.entry_type = 'Command: GetPromise' AND i.status <> 'completed' "
            "AND i.target_service_name = 'BenchWaitSignal'"
        )
        answer = await self._post(f"{self.admin}/query", {"query": query})
        return int(answer["rows"][0]["parked"])

    async def wait_parked(self, expected: int, poll_s: float, timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while (parked := await self.parked()) < expected:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{parked} of {expected} parked after {timeout_s:g} s")
            await asyncio.sleep(poll_s)


class Keys:
    """Unique workflow keys, one prefix per workload."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}-{self.count:07d}"


# -------------------------------------------------------------------- W1-W4


async def _timed_run(ingress: Ingress, key: str, i: int) -> float:
    t0 = time.perf_counter()
    if await ingress.run("BenchThreeSteps", key, i) != i:
        raise RuntimeError(f"workflow {key} returned something other than {i}")
    return time.perf_counter() - t0


async def w1_throughput(ingress: Ingress, keys: Keys, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(_timed_run(ingress, keys("w1"), i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    return {"workflows": n, "seconds": elapsed, "workflows_per_s": n / elapsed} | summary_ms(
        list(latencies)
    )


async def w1_in_flight(ingress: Ingress, keys: Keys, n: int, in_flight: int) -> dict[str, Any]:
    """``n`` workflows, ``in_flight`` at a time (a new one starts as one finishes)."""
    return await in_flight_runs(n, in_flight, lambda i: _timed_run(ingress, keys("w1f"), i))


async def w1_unloaded(ingress: Ingress, keys: Keys, n: int) -> dict[str, Any]:
    latencies = [await _timed_run(ingress, keys("w1u"), i) for i in range(n)]
    return {"samples": n} | summary_ms(latencies)


async def w2_signal_unloaded(ingress: Ingress, keys: Keys, n: int) -> dict[str, Any]:
    """One at a time: start, wait until parked, then time the signal to the result."""
    samples = []
    for _ in range(n):
        key = keys("w2u")
        await ingress.send("BenchWaitSignal", key)
        await ingress.wait_parked(1, PARKED_POLL_S, 60.0)
        result = asyncio.ensure_future(ingress.attach("BenchWaitSignal", key))
        await asyncio.sleep(0.005)  # the result is being awaited
        t0 = time.perf_counter()
        await ingress.signal(key, 1)
        if await result != 1:
            raise RuntimeError(f"workflow {key} returned something other than its signal")
        samples.append(time.perf_counter() - t0)
    return {"samples": n} | summary_ms(samples)


async def w2_signal_loaded(ingress: Ingress, keys: Keys, n: int) -> dict[str, Any]:
    """``n`` parked with their results awaited, all signalled at once: send -> result."""
    names = [keys("w2") for _ in range(n)]
    await asyncio.gather(*(ingress.send("BenchWaitSignal", key) for key in names))
    await ingress.wait_parked(n, PARKED_COUNT_POLL_S, WORKER_TIMEOUT_S)
    done_at: list[float] = []

    async def wait(key: str) -> None:
        await ingress.attach("BenchWaitSignal", key)
        done_at.append(time.perf_counter())

    waiting = asyncio.ensure_future(asyncio.gather(*(wait(key) for key in names)))
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    await asyncio.gather(*(ingress.signal(key, 1) for key in names))
    await waiting
    return {"workflows": n} | summary_ms([t - t0 for t in done_at])


async def w3_timer_lateness(ingress: Ingress, keys: Keys, n: int) -> dict[str, Any]:
    names = [keys("w3") for _ in range(n)]
    await asyncio.gather(*(ingress.send("BenchSleep", key, SLEEP_S) for key in names))
    lateness = await asyncio.gather(*(ingress.attach("BenchSleep", key) for key in names))
    return {"timers": n, "sleep_s": SLEEP_S} | summary_ms(list(lateness))


async def _in_batches(coros: list[Any]) -> list[Any]:
    results: list[Any] = []
    for i in range(0, len(coros), BATCH):
        results.extend(await asyncio.gather(*coros[i : i + BATCH]))
    return results


async def w4_parked(
    ingress: Ingress, n: int, pids: list[int], budget_s: float, settle_s: float
) -> dict[str, Any]:
    """Start ``n`` parked, read RSS, then signal all and await every result.

    A phase that runs past ``budget_s`` stops the run; the result says so in
    ``did_not_finish`` and keeps what was measured until then.
    """
    names = [f"w4-{i:07d}" for i in range(n)]
    measured: dict[str, Any] = {"workflows": n, "budget_s": budget_s}
    phase = "start"
    try:
        t0 = time.perf_counter()
        await asyncio.wait_for(
            _in_batches([ingress.send("BenchWaitSignal", key) for key in names]), budget_s
        )
        measured["accepted_s"] = time.perf_counter() - t0
        left = budget_s - measured["accepted_s"]
        await ingress.wait_parked(n, PARKED_COUNT_POLL_S, left)
        measured["start_s"] = time.perf_counter() - t0
        measured["starts_per_s"] = n / measured["start_s"]
        await asyncio.sleep(settle_s)
        measured["rss_mib"] = rss_mib(pids)
        phase = "complete"
        t1 = time.perf_counter()
        await asyncio.wait_for(_in_batches([ingress.signal(key, 1) for key in names]), budget_s)
        measured["signal_all_s"] = time.perf_counter() - t1
        left = budget_s - measured["signal_all_s"]
        results = await asyncio.wait_for(
            _in_batches([ingress.attach("BenchWaitSignal", key) for key in names]), left
        )
        measured["complete_s"] = time.perf_counter() - t1
    except TimeoutError:
        return measured | {"did_not_finish": f"{phase} exceeded {budget_s:g} s"}
    if results != [1] * n:
        raise RuntimeError("a parked workflow returned something other than its signal")
    return measured


async def _core(ingress: Ingress, sizes: argparse.Namespace) -> dict[str, Any]:
    keys = Keys()
    await w1_unloaded(ingress, keys, 5)  # warm-up: the first calls open connections
    return {
        "w1_throughput": await w1_throughput(ingress, keys, sizes.workflows),
        "w1_unloaded": await w1_unloaded(ingress, keys, sizes.samples),
        "w1_in_flight": await w1_in_flight(ingress, keys, sizes.workflows, sizes.in_flight),
        "w2_signal_unloaded": await w2_signal_unloaded(ingress, keys, sizes.samples),
        "w2_signal_loaded": await w2_signal_loaded(ingress, keys, sizes.signals),
        "w3_timer_lateness": await w3_timer_lateness(ingress, keys, sizes.timers),
    }


async def _workloads(args: argparse.Namespace, ingress_url: str, admin_url: str, pids: list[int]):
    import aiohttp

    connector = aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ingress = Ingress(session, ingress_url, admin_url)
        if args.workload == "core":
            return await _core(ingress, args)
        return await w4_parked(ingress, args.parked, pids, args.budget_s, args.settle_s)


# -------------------------------------------------------------------- the child process


def worker_main(argv: list[str]) -> None:
    """Child process: a fresh Restate server and SDK, one group of workloads, JSON out."""
    parser = argparse.ArgumentParser(prog="bench_restate --worker")
    parser.add_argument("workload", choices=("core", "parked"))
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--timers", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    parser.add_argument("--parked", type=int, default=10_000)
    parser.add_argument("--budget-s", type=float, default=900.0)
    parser.add_argument("--settle-s", type=float, default=SETTLE_S)
    args = parser.parse_args(argv)
    isolated = restate_server.isolate_network()  # first: before any thread or child exists
    binary = restate_server.installed()
    if binary is None:
        raise RestateUnavailable("restate-server is not installed")
    server, ingress_url, admin_url = restate_server.start_server(binary, args.data_dir / "data")
    sdk = None
    try:
        sdk, sdk_url = restate_server.start_sdk("benchmarks.restate_app", args.data_dir)
        restate_server.register(admin_url, sdk_url)
        pids = [server.pid, sdk.pid]
        result = asyncio.run(_workloads(args, ingress_url, admin_url, pids))
        result["network_namespace"] = isolated
        print(json.dumps({"result": result}), flush=True)
    finally:
        if sdk is not None:
            sdk.stop()
        server.stop()


# -------------------------------------------------------------------- the parent process


def unavailable(install_missing: bool) -> str | None:
    """Why Restate cannot run here (None when it can); installs the binary if allowed."""
    missing = [p for m, p in SDK_MODULES.items() if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run `pip install -e '.[bench]'`"
    if restate_server.installed() is not None:
        return None
    if not install_missing:
        return (
            f"restate-server {restate_server.VERSION} is not in {restate_server.cache_dir()} "
            "(the smoke run does not download it; `./dev bench restate` installs it)"
        )
    try:
        restate_server.install()
    except RestateUnavailable as exc:
        return str(exc)
    return None


def _run_child(workload: str, options: list[str], timeout_s: float) -> dict[str, Any]:
    """One group of workloads in a fresh interpreter; killed by its PID after ``timeout_s``."""
    print(f"restate {workload} {' '.join(options)} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-restate-") as tmp:
        command = [sys.executable, "-m", "benchmarks.bench_restate", "--worker", workload]
        command += ["--data-dir", tmp, *options]
        stderr_path = Path(tmp) / "stderr.log"
        with stderr_path.open("wb") as stderr:
            child = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
            try:
                out, _ = child.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()  # its server and SDK die with it (PR_SET_PDEATHSIG)
                child.wait()
                return {"did_not_finish": f"killed after {timeout_s:g} s"}
        for line in out.splitlines():
            if line.startswith('{"result"'):
                result: dict[str, Any] = json.loads(line)["result"]
                return result
        tail = stderr_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"Restate worker {workload} exited {child.returncode}:\n{tail}")


def run(
    *,
    workflows: int = 1000,
    samples: int = 100,
    signals: int = 200,
    timers: int = 200,
    in_flight: int = IN_FLIGHT,
    parked_sizes: tuple[int, ...] = (10_000,),
    parked_budget_s: float = 900.0,
    parked_settle_s: float = SETTLE_S,
    install_missing: bool = True,
) -> dict[str, Any]:
    """Every Restate workload: W1-W3 on one server, each W4 size on a fresh one.

    Returns:
        ``{"w1_throughput", "w1_unloaded", "w1_in_flight", "w2_signal_unloaded",
        "w2_signal_loaded", "w3_timer_lateness", "w4_parked": {"<size>": ...}, "version",
        "sdk_version", "network_namespace"}``.

    Raises:
        RestateUnavailable: the SDK or the server cannot be had (the message says why).
        RuntimeError: a worker failed.
    """
    reason = unavailable(install_missing)
    if reason is not None:
        raise RestateUnavailable(reason)
    sizes = ["--workflows", str(workflows), "--samples", str(samples), "--signals", str(signals)]
    sizes += ["--timers", str(timers), "--in-flight", str(in_flight)]
    timeout = WORKER_TIMEOUT_S + 2.0 * (2 * workflows + 2 * samples + signals + timers)
    results = _run_child("core", sizes, timeout)
    results["w4_parked"] = {}
    for size in parked_sizes:
        options = ["--parked", str(size), "--budget-s", str(parked_budget_s)]
        options += ["--settle-s", str(parked_settle_s)]
        results["w4_parked"][str(size)] = _run_child("parked", options, 3 * parked_budget_s)
    results["version"] = restate_server.VERSION
    results["sdk_version"] = metadata.version("restate-sdk")
    return results


def _latency(result: dict[str, Any]) -> str:
    return f"{result['p50_ms']:.1f} / {result['p99_ms']:.1f} ms"


def _parked_rows(size: str, result: dict[str, Any]) -> list[tuple[str, str]]:
    if "did_not_finish" in result:
        return [(f"W4 {size} parked", f"did not finish: {result['did_not_finish']}")]
    return [
        (
            f"W4 {size} parked: start all",
            f"{result['start_s']:.1f} s (accepted in {result['accepted_s']:.1f} s)",
        ),
        (f"W4 {size} parked: RSS of server + SDK", f"{result['rss_mib']:.0f} MiB"),
        (f"W4 {size} parked: signal all, complete", f"{result['complete_s']:.1f} s"),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks restate", description=__doc__)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--timers", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    parser.add_argument("--parked", default="10000", help="comma-separated W4 sizes; empty to skip")
    parser.add_argument("--parked-budget", type=float, default=900.0, help="W4 s per phase")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "restate.json")
    args = parser.parse_args(argv)
    parked = tuple(int(s) for s in args.parked.split(",") if s.strip())
    load_before = os.getloadavg()
    results = run(
        workflows=args.workflows,
        samples=args.samples,
        signals=args.signals,
        timers=args.timers,
        in_flight=args.in_flight,
        parked_sizes=parked,
        parked_budget_s=args.parked_budget,
    )
    load_after = os.getloadavg()
    rows = [
        (
            f"W1 {args.workflows} x 3 steps at once",
            f"{results['w1_throughput']['workflows_per_s']:.0f} wf/s",
        ),
        ("W1 latency under load p50/p99", _latency(results["w1_throughput"])),
        ("W1 unloaded latency p50/p99", _latency(results["w1_unloaded"])),
        (
            f"W1 {args.in_flight} in flight",
            f"{results['w1_in_flight']['workflows_per_s']:.0f} wf/s, "
            f"{_latency(results['w1_in_flight'])}",
        ),
        (f"W2 {args.signals} signalled at once p50/p99", _latency(results["w2_signal_loaded"])),
        ("W2 signal unloaded p50/p99", _latency(results["w2_signal_unloaded"])),
        (f"W3 lateness, {args.timers} x 1 s p50/p99", _latency(results["w3_timer_lateness"])),
    ]
    for size, result in results["w4_parked"].items():
        rows.extend(_parked_rows(size, result))
    rows.append(("load average before / after", f"{load_before[0]:.2f} / {load_after[0]:.2f}"))
    print_table(
        f"Restate {results['version']}, Python SDK {results['sdk_version']} (hypercorn)", rows
    )
    config = vars(args) | {"parked": list(parked), "loadavg": [load_before, load_after]}
    config.pop("json")
    path = write_json(args.json, {"config": config, "results": results})
    print(f"\nJSON: {path}")
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2:])
    else:
        main()
