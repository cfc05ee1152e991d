"""The ``worker`` verb of the ``duraflow`` command: start a worker pool for a queue of a
deployment served on a Ray cluster (its workers outlive this command, like the partitions)."""

from __future__ import annotations

import argparse
import sys

from duraflow import serving
from duraflow.cli.args import positive, resources
from duraflow.cli.output import EXIT_ERROR, print_json
from duraflow.config import DEFAULT_MAX_ASYNC, DEFAULT_QUEUE, WorkerPool


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``worker``."""
    p = sub.add_parser(
        "worker",
        parents=[common],
        help="start the worker pool of an activity queue on the running Ray cluster",
        description="Create the detached workers of QUEUE for the deployment served in the "
        "namespace, wait until each answers, print them and exit; the workers live on with "
        "the cluster and run the activities declared @df.activity(queue=QUEUE). Running it "
        "again with the same queue finds the running workers (a larger --size adds workers).",
    )
    p.add_argument("--queue", default=DEFAULT_QUEUE, help="the queue (default %(default)s)")
    p.add_argument(
        "--size", type=positive(int), default=None, help="workers (default: the cluster's CPUs)"
    )
    p.add_argument("--num-cpus", type=float, default=0.0, help="CPUs each worker reserves")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs each worker reserves")
    p.add_argument(
        "--resources",
        type=resources,
        default=None,
        metavar="JSON",
        help="custom Ray resources each worker reserves, e.g. '{\"tpu\": 1}'",
    )
    p.add_argument(
        "--max-async",
        type=positive(int),
        default=DEFAULT_MAX_ASYNC,
        help="async attempts one worker runs at once (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--timeout",
        type=positive(float),
        default=serving.SERVE_TIMEOUT_S,
        help="seconds to wait for the workers to start (default %(default)g)",
    )
    p.set_defaults(run=_worker)


def _worker(args: argparse.Namespace) -> int:
    pool = WorkerPool(
        size=args.size,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        resources=args.resources,
        max_async=args.max_async,
    )
    try:
        statuses = serving.serve_workers(
            args.queue, pool, address=args.address, namespace=args.namespace, timeout=args.timeout
        )
    except TimeoutError as exc:  # the workers stay, pending: `duraflow status` lists them
        print(f"duraflow: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print_json(statuses)
        return 0
    print(
        f"Queue {args.queue!r} of Ray namespace {args.namespace!r} has {len(statuses)} "
        "workers; they live on with the cluster (duraflow stop removes them)."
    )
    print()
    print(f"{'WORKER':<8} {'NODE':<12} {'PID':>8}")
    for status in statuses:
        print(f"{status['index']:<8} {status['node_id'][:12]:<12} {status['pid']:>8}")
    return 0
