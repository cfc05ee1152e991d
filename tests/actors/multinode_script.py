"""A multi-node failover run on one machine, in a process of its own (``test_failover.py``).

    python tests/actors/multinode_script.py DATA_DIR OUT_JSON

One Python process can be connected to one Ray cluster only, so this runs outside the test
session's Ray. It starts a ``ray.cluster_utils.Cluster``: a head node without CPUs and two
worker nodes, each with one CPU and 2 units of a custom ``fo_partition`` resource that the
partition actors ask for (``Engine(partition_resources=...)``), so they land on worker nodes
and the survivor has room for both. Health checks are fast (``_system_config``), so a lost
node is noticed in about a second instead of ~17 s.

It starts workflows (``failover_flows.fo_order``) with timers, activities and signals, kills
the worker node hosting partition 0 mid-run (``remove_node`` without a graceful stop: a lost
node), sends more signals while its actor moves, waits for every workflow, and writes what it
saw to OUT_JSON for the test to check (with the partition files). The data dir is a local
folder every "node" sees (one machine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Import this package's modules by their package names (history records
    # ``tests.actors.failover_flows:...``; partition actors import it from the driver's cwd).
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

COUNT = 40
NAMESPACE = "multinode"
PARTITION_RESOURCE = "fo_partition"
DEADLINE_S = 75.0
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 250,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: the cluster is shut down


def main(argv: list[str]) -> int:
    import shutil

    # A private temp dir, short (socket paths have a length limit), set before Ray is
    # imported: the cluster writes its address file there, where no other driver's bare
    # ray.init() can find it.
    temp_dir = tempfile.mkdtemp(prefix="mn", dir="/tmp")
    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"))

    import ray
    from ray.cluster_utils import Cluster
    from ray.exceptions import RayActorError

    import duraflow as df
    from tests.actors import failover_flows as flows

    data_dir, out = Path(argv[0]).resolve(), Path(argv[1])
    log = data_dir / "executions.log"
    faulthandler.dump_traceback_later(DEADLINE_S + 30, exit=True)  # never hang
    signal.signal(signal.SIGTERM, _stop)
    began = time.monotonic()
    timeline: dict[str, float] = {}

    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(
            num_cpus=0,  # the head runs no tasks and, lacking the resource, no partitions
            include_dashboard=False,
            temp_dir=temp_dir,
            _system_config=FAST_HEALTH_CHECKS,
        )
        workers = [
            cluster.add_node(num_cpus=1, resources={PARTITION_RESOURCE: 2}) for _ in range(2)
        ]
        cluster.wait_for_nodes()
        cluster_s = time.monotonic() - began
        by_id = {node.node_id: node for node in workers}

        engine = df.Engine(
            data_dir,
            runtime="ray",
            partitions=2,
            synchronous="NORMAL",
            address=cluster.address,
            namespace=NAMESPACE,
            partition_resources={PARTITION_RESOURCE: 1},
        )
        client = engine.client()
        host: Any = client._host
        handles = host._handles
        before = [dict(s) for s in ray.get([h.status.remote() for h in handles], timeout=30)]
        assert all(s["node_id"] in by_id for s in before), ("a partition on the head", before)
        victim_node = before[0]["node_id"]
        errors: list[BaseException] = []
        wids = [f"fo-mn-{n:03d}" for n in range(COUNT)]

        async def moved(handle: Any, deadline: float) -> dict[str, Any]:
            while time.monotonic() < deadline:
                try:
                    status = await asyncio.wait_for(handle.status.remote(), timeout=2.0)
                except (RayActorError, asyncio.TimeoutError):
                    await asyncio.sleep(0.05)
                    continue
                if status["node_id"] != victim_node:
                    return dict(status)
                await asyncio.sleep(0.05)
            raise AssertionError("the partition actor did not come back on another node")

        async def scenario() -> dict[str, Any]:
            deadline = time.monotonic() + DEADLINE_S
            started = await asyncio.gather(
                *(
                    client.start_async(
                        flows.fo_order, int(w[-3:]), str(log), ["early", "late"], workflow_id=w
                    )
                    for w in wids
                )
            )
            early = await asyncio.gather(
                *(flows.send_until_acked(h, "early", deadline, errors) for h in started)
            )
            waiting = [asyncio.ensure_future(h.result_async(timeout=60)) for h in started]
            while True:
                assert time.monotonic() < deadline, "no mid-flight moment seen"
                snap = await asyncio.to_thread(flows.snapshot, data_dir, 0)
                if flows.mid_flight(snap, 3):
                    break
                await asyncio.sleep(0.02)
            timeline["remove"] = time.monotonic()
            removed_wall = time.time()
            # Remove the node: its raylet, the partition actor and any activity task on it.
            await asyncio.to_thread(cluster.remove_node, by_id[victim_node], False)
            timeline["removed"] = time.monotonic()
            back = [asyncio.ensure_future(moved(h, deadline)) for h in handles]
            late = await asyncio.gather(
                *(flows.send_until_acked(h, "late", deadline, errors) for h in started)
            )
            after = await asyncio.gather(*back)
            timeline["moved"] = time.monotonic()
            results = dict(zip(wids, await asyncio.gather(*waiting), strict=True))
            timeline["done"] = time.monotonic()
            return {
                "results": results,
                "sends": [dataclasses.asdict(s) for s in [*early, *late]],
                "snapshot": snap.to_json(),
                "removed_wall": removed_wall,
                "after": after,
            }

        report = asyncio.run(scenario())
        report.update(
            before=before,
            victim_node=victim_node,
            workers=sorted(by_id),
            errors=[f"{type(e).__name__}: {e}" for e in errors],
            error_types=sorted({type(e).__name__ for e in errors}),
            cluster_start_s=cluster_s,
            since_removal={k: v - timeline["remove"] for k, v in timeline.items()},
        )
        engine.close()
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report))
        os.replace(tmp, out)
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
