"""Restart to serving: a partition actor killed with kill -9, idle and under W1 load.

On a local Ray with an engine of 2 partitions, partition 0 holds N open runs parked on a
signal (N = each of ``--parked``, grown in one engine). For each N and each of ``--loads``
(W1 workflows of 3 inline no-op activities kept in flight over both partitions; 0 is idle),
``--repeats`` times: kill -9 partition 0's process (its PID from the actor's ``status()``)
and measure, from the kill,

  serving        a signal to a parked run of partition 0, sent straight to the actor again
                 every 10 ms while Ray says the actor is unavailable: acknowledged (committed)
                 by the new incarnation. The earliest a request can be served.
  client signal  the same through ``handle.signal_async`` sent at the kill (the client's own
                 retries, with their backoff): what a user sees.
  new PID        ``status()`` asked every 10 ms: answers with the new PID.
  status         what ``duraflow status`` runs (``RayHost.connect(ns).status_reports``),
                 started at the kill and run again until it shows the new PID.

and where the time went, from the new incarnation's ``status()["started"]`` timestamps:
Ray (kill -> the actor's ``__init__`` entered, with whether the worker process was started
before or after the kill), ``__init__`` (app imports, set-up), the file's open and load of
open runs and timers, and the first turn's recovery (activity attempts and outbox).
Each is reported as p50 / max over the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

import duraflow as df
from benchmarks.bench_core import bench_three_steps, bench_wait_signal
from benchmarks.common import RESULTS_DIR, percentile, print_table, write_json
from duraflow.actors import messages as m
from duraflow.actors import ray_host
from duraflow.actors.router import partition_of
from duraflow.storage.codec import encode

PARTITIONS = 2
TARGET = 0
"""The partition that is killed; its parked runs are the N."""
PROBE_EVERY_S = 0.01
PROBE_TIMEOUT_S = 120.0
"""A restart not serving by then is reported as an error, not waited for."""
RESULT_TIMEOUT_S = 30.0
"""A load workflow's result not seen by then is counted as lost (see Load)."""
SETTLE_S = 2.0
"""Default pause after each restart (the load catches up) and before a scenario's first kill."""
BATCH = 500

KILL_TO = ("serving", "client_signal", "new_pid", "status")
"""What is measured from the kill, in seconds (see the module docstring)."""
STAGES = ("ray", "init", "open", "recover", "first_answer")
"""Where the time to serving went: kill -> __init__ entered (Ray), __init__ (ours), open and
load (ours), the first turn's recovery (ours), the rest until the probe's signal was
acknowledged (the first turn's other requests and its commit, and the probe's call)."""


def ids_on(partition: int, prefix: str, count: int) -> list[str]:
    """``count`` workflow IDs (``prefix-N``) that hash to ``partition``."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        wid = f"{prefix}-{n:07d}"
        if partition_of(wid, PARTITIONS) == partition:
            found.append(wid)
        n += 1
    return found


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds, 10 ms resolution), from /proc."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


ERROR_PAUSE_S = 0.05
"""How long a load worker waits after a failed start (one that fails at once, before any
await, would otherwise keep the loop from running anything else)."""


class Load:
    """``in_flight`` W1 workflows at all times, each started when another finished.

    A result not seen within RESULT_TIMEOUT_S (a restart takes seconds) is counted as lost,
    with the status its run has in its partition (``describe``), and the load goes on.
    """

    def __init__(self, client: df.Client, in_flight: int) -> None:
        self._client = client
        self._in_flight = in_flight
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.completed = 0
        self.errors: list[str] = []
        self.lost: list[str] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._worker(i)) for i in range(self._in_flight)]

    async def _worker(self, k: int) -> None:
        i = 0
        while not self._stopping:
            try:
                handle = await self._client.start_async(bench_three_steps, i, "inline")
                try:
                    await handle.result_async(timeout=RESULT_TIMEOUT_S)
                    self.completed += 1
                except df.ResultTimeout:
                    self.lost.append(handle.workflow_id)
            except df.DuraflowError as exc:  # counted and reported; the load goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(ERROR_PAUSE_S)  # never spin: the kills run on this loop
            i += 1

    async def stop(self) -> dict[str, Any]:
        """Stop starting workflows, wait for those in flight; what was lost, by status."""
        self._stopping = True
        if self._tasks:
            await asyncio.gather(*self._tasks)
        described = await asyncio.gather(
            *(self._client.get_handle(wid).describe_async() for wid in self.lost)
        )
        statuses: dict[str, int] = {}
        for description in described:
            statuses[description.status] = statuses.get(description.status, 0) + 1
        return {"results_lost": len(self.lost), "lost_by_status": statuses}


async def _until_serving(actor: Any, workflow_id: str) -> float:
    request = m.Signal(
        workflow_id=workflow_id, name="go", payload=encode(None), request_id=uuid.uuid4().hex
    )
    while True:
        try:
            reply = await actor.call.remote(request)
        except RayActorError:  # ActorUnavailableError while Ray restarts it: ask again
            await asyncio.sleep(PROBE_EVERY_S)
            continue
        if isinstance(reply, ray_host._Failure):
            raise reply.error
        return time.time()


async def _until_new_pid(actor: Any, old_pid: int) -> tuple[float, dict[str, Any]]:
    while True:
        try:
            status: dict[str, Any] = await actor.status.remote()
        except RayActorError:
            await asyncio.sleep(PROBE_EVERY_S)
            continue
        if status["pid"] != old_pid:
            return time.time(), status
        await asyncio.sleep(PROBE_EVERY_S)


async def _client_signal(client: df.Client, workflow_id: str) -> float:
    await client.get_handle(workflow_id).signal_async("go", None)
    return time.time()


def _cli_status(namespace: str, old_pid: int) -> tuple[float, int]:
    """What ``duraflow status`` runs, again until partition 0 shows a new PID: (when, runs)."""
    runs = 0
    while True:
        runs += 1
        try:
            reports = ray_host.RayHost.connect(namespace).status_reports(10.0)
        except df.DuraflowError:
            continue
        if reports[TARGET].get("pid") not in (None, old_pid):
            return time.time(), runs


async def kill_once(client: df.Client, namespace: str, probes: list[str]) -> dict[str, Any]:
    """Kill partition TARGET's process; the times from the kill, and the stages."""
    actor = ray.get_actor(ray_host.actor_name(TARGET), namespace=namespace)
    old_pid = (await actor.status.remote())["pid"]
    killed_at = time.time()
    os.kill(old_pid, signal.SIGKILL)
    probes_running = {
        "serving": asyncio.ensure_future(_until_serving(actor, probes[0])),
        "new_pid": asyncio.ensure_future(_until_new_pid(actor, old_pid)),
        "client_signal": asyncio.ensure_future(_client_signal(client, probes[1])),
        "status": asyncio.ensure_future(asyncio.to_thread(_cli_status, namespace, old_pid)),
    }
    _, pending = await asyncio.wait(probes_running.values(), timeout=PROBE_TIMEOUT_S)
    if pending:
        stuck = [k for k, f in probes_running.items() if f in pending]
        raise TimeoutError(f"no answer within {PROBE_TIMEOUT_S:g}s after the kill: {stuck}")
    serving = probes_running["serving"].result()
    new_pid_at, status = probes_running["new_pid"].result()
    client_at = probes_running["client_signal"].result()
    status_at, status_runs = probes_running["status"].result()
    started = status["started"]
    ours = started["at"]
    return {
        "kill_to": {
            "serving": serving - killed_at,
            "client_signal": client_at - killed_at,
            "new_pid": new_pid_at - killed_at,
            "status": status_at - killed_at,
        },
        "stages": {
            "ray": ours - killed_at,
            "init": started["init_s"],
            "open": started["opened_at"] - ours - started["init_s"],
            "recover": started.get("recover_s", 0.0),
            "first_answer": serving - max(started["opened_at"], started.get("recovered_at", 0.0)),
        },
        "open_detail": {k: started.get(k) for k in ("store_s", "load_s")},
        "process_started_after_kill_s": (process_start(status["pid"]) or killed_at) - killed_at,
        "status_runs": status_runs,
        "open_runs": status["open"],
    }


def _bare_actor_class() -> Any:
    """An actor that imports nothing of ours (a class made in a function is shipped by value,
    so its worker does not import this module): Ray's own restart, the floor beneath ours."""

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
    class Bare:
        def __init__(self) -> None:
            self.started_at = time.time()

        def status(self) -> dict[str, Any]:
            return {"pid": os.getpid(), "started": {"at": self.started_at}}

    return Bare


async def ray_floor(repeats: int, settle_s: float = SETTLE_S) -> dict[str, Any]:
    """kill -9 of a bare actor: kill -> its ``__init__`` entered, and -> answered again."""
    actor = _bare_actor_class().remote()
    samples = []
    try:
        for _ in range(repeats):
            old_pid = (await actor.status.remote())["pid"]
            await asyncio.sleep(settle_s)
            killed_at = time.time()
            os.kill(old_pid, signal.SIGKILL)
            answered_at, status = await _until_new_pid(actor, old_pid)
            samples.append(
                {
                    "kill_to": {"new_pid": answered_at - killed_at},
                    "stages": {
                        "ray": status["started"]["at"] - killed_at,
                        "first_answer": answered_at - status["started"]["at"],
                    },
                    "open_runs": 0,
                }
            )
    finally:
        ray.kill(actor, no_restart=True)
    return summarize(samples)


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 and max (seconds) of each measure over the repeats, and the raw samples."""
    out: dict[str, Any] = {"repeats": len(samples)}
    for group in ("kill_to", "stages"):
        out[group] = {
            key: {
                "p50_s": percentile([s[group][key] for s in samples], 50),
                "max_s": max(s[group][key] for s in samples),
            }
            for key in samples[0][group]
        }
    out["open_runs"] = samples[0]["open_runs"]
    out["samples"] = samples
    return out


async def _start_parked(client: df.Client, ids: list[str]) -> None:
    for i in range(0, len(ids), BATCH):
        await asyncio.gather(
            *(client.start_async(bench_wait_signal, workflow_id=w) for w in ids[i : i + BATCH])
        )


async def scenarios(client: df.Client, namespace: str, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"ray_floor": await ray_floor(args.repeats, args.settle)}
    print(f"  ray_floor: {_floor_line(results['ray_floor'])}", file=sys.stderr, flush=True)
    parked_ids = ids_on(TARGET, "parked", max(args.parked, default=0))
    probe_ids = iter(ids_on(TARGET, "probe", 4 * args.repeats * len(args.parked)))
    have = 0
    for size in args.parked:
        await _start_parked(client, parked_ids[have:size])
        have = size
        for in_flight in args.loads:
            load = Load(client, in_flight)
            load.start()
            await asyncio.sleep(args.settle)
            samples = []
            completed_at_start, t0 = load.completed, time.perf_counter()
            for _ in range(args.repeats):
                probes = [next(probe_ids), next(probe_ids)]
                await _start_parked(client, probes)
                samples.append(await kill_once(client, namespace, probes))
                await asyncio.sleep(args.settle)
            load_rate = (load.completed - completed_at_start) / (time.perf_counter() - t0)
            lost = await load.stop()
            key = f"parked_{size}_" + ("idle" if in_flight == 0 else f"load_{in_flight}")
            results[key] = {
                "parked": size,
                "load_in_flight": in_flight,
                "load_workflows_per_s": load_rate,
                "load_errors": load.errors[:5],
                **lost,
                **summarize(samples),
            }
            print(f"  {key}: {_line(results[key])}", file=sys.stderr, flush=True)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All scenarios on one fresh engine of 2 partitions on (a fresh, or the running) Ray."""
    namespace = f"bench-restart-{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory() as tmp,
        df.Engine(
            Path(tmp) / "data",
            runtime="ray",
            partitions=PARTITIONS,
            synchronous=args.synchronous,
            namespace=namespace,
        ) as engine,
    ):
        results = asyncio.run(scenarios(engine.client(), namespace, args))
    results["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    return results


def _line(result: dict[str, Any]) -> str:
    k, s = result["kill_to"], result["stages"]

    def pair(d: dict[str, float]) -> str:
        return f"{d['p50_s']:.2f} / {d['max_s']:.2f} s"

    lost = ""
    if result.get("results_lost"):
        lost = f"; LOST {result['results_lost']} load results (runs: {result['lost_by_status']})"
    return (
        f"serving {pair(k['serving'])}, client signal {pair(k['client_signal'])}, "
        f"new PID {pair(k['new_pid'])}, status {pair(k['status'])}; "
        f"Ray {s['ray']['p50_s']:.2f}, init {s['init']['p50_s']:.2f}, "
        f"open {s['open']['p50_s']:.3f}, recover {s['recover']['p50_s']:.3f}, "
        f"first answer {s['first_answer']['p50_s']:.2f} s (p50){lost}"
    )


def _floor_line(result: dict[str, Any]) -> str:
    k, s = result["kill_to"]["new_pid"], result["stages"]
    return (
        f"bare actor answers {k['p50_s']:.2f} / {k['max_s']:.2f} s; "
        f"Ray {s['ray']['p50_s']:.2f}, first answer {s['first_answer']['p50_s']:.2f} s (p50)"
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parked", default="0,1000,10000", help="open parked runs on the killed partition"
    )
    parser.add_argument(
        "--loads", default="0,300", help="W1 workflows in flight, comma-separated (0: idle)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="kills per scenario")
    parser.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"))
    parser.add_argument(
        "--settle", type=float, default=SETTLE_S, help="s to wait before and after each kill"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks restart", description=__doc__)
    add_options(parser)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "restart.json")
    args = parser.parse_args(argv)
    args.parked = [int(n) for n in str(args.parked).split(",") if n]
    args.loads = [int(n) for n in str(args.loads).split(",") if n]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    results = run(args)
    rows = [("ray_floor", _floor_line(results["ray_floor"]))] + [
        (key, _line(value))
        for key, value in results.items()
        if key != "ray_floor" and isinstance(value, dict) and "kill_to" in value
    ]
    print_table(
        f"kill -9 of partition {TARGET} -> serving again, p50 / max of {args.repeats} "
        f"({PARTITIONS} partitions, synchronous={args.synchronous})",
        rows,
    )
    config = {k: getattr(args, k) for k in ("parked", "loads", "repeats", "synchronous", "settle")}
    path = write_json(args.json, {"config": config, "results": results})
    print(f"\nJSON: {path}")
    return results


if __name__ == "__main__":
    main()
