"""The deployment verbs of the ``duraflow`` command: ``serve`` a data directory on a Ray
cluster, its ``status``, ``stop`` it, and ``relocate-archive`` of a copied data directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from duraflow import runtime, serving
from duraflow.cli.args import duration, duration_or_never, positive, resources, worker_pools
from duraflow.cli.output import EXIT_ERROR, print_json
from duraflow.config import (
    COMMIT_INTERVAL_S,
    DEADLOCK_THRESHOLD_S,
    DEFAULT_ACTIVITY_THREADS,
    DEFAULT_RETENTION_S,
    IDLE_BEFORE_HIBERNATE_S,
    EngineConfig,
    S3Config,
)
from duraflow.errors import ConfigurationError
from duraflow.storage.layout import archive_paths, warehouse_dir

DEFAULT_S3_REGION = "us-east-1"


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``serve``, ``status`` and ``stop``."""
    _add_serve(sub, common)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="partitions: node, pid, open / resident / parked workflows, LSN; worker pools: "
        "workers, alive ones, attempts running and outstanding",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--timeout",
        type=positive(float),
        default=serving.STATUS_TIMEOUT_S,
        help="seconds to wait for each partition (default %(default)g)",
    )
    p.set_defaults(run=_status)

    p = sub.add_parser(
        "stop",
        parents=[common],
        help="close the partitions and kill their actors (the data directory is kept)",
    )
    p.add_argument(
        "--timeout",
        type=positive(float),
        default=serving.STOP_TIMEOUT_S,
        help="seconds to wait for the partitions to close (default %(default)g)",
    )
    p.set_defaults(run=_stop)


def add_relocate_archive(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``relocate-archive`` (it reaches no deployment: no ``--address`` or ``--namespace``)."""
    p = sub.add_parser(
        "relocate-archive",
        help="point the archive of a copied or moved data directory at its own files",
        description="Iceberg records absolute paths, so the archive of a copied or moved data "
        "directory still names the files at the old place, and duraflow refuses to open it. "
        "This registers the archive's tables again at DATA_DIR's own warehouse (their "
        "current data and offsets; older snapshots are not carried over), reading and "
        "writing nothing at the old place. Run it with no engine open on DATA_DIR.",
    )
    p.add_argument("--data-dir", required=True, help="the copied or moved data directory")
    p.set_defaults(run=_relocate_archive)


def _add_serve(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="create the partition actors of a data directory on a running Ray cluster",
        description="Create the detached partition actors of DATA_DIR on the running Ray "
        "cluster, wait until every partition has opened its file, print how to connect, and "
        "exit; the actors live on with the cluster. Run it again after the cluster was "
        "restarted: open workflows resume from the data directory.",
    )
    p.add_argument(
        "--data-dir",
        required=True,
        help="the data directory; every node of the cluster must see it at the same path",
    )
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE",
        help="module with the workflows and activities, imported by every partition when it "
        "starts (repeat for several); found from the current directory like 'python -m'",
    )
    _add_partition_options(p)
    p.add_argument(
        "--workers",
        type=worker_pools,
        default=None,
        metavar="JSON",
        help='worker pools by queue, e.g. \'{"gpu": {"size": 4, "num_gpus": 1}}\' for '
        '@df.activity(queue="gpu"); "default" sizes the pool of the activities that name no '
        "queue (default: one worker per cluster CPU); 'duraflow worker' adds one later",
    )
    _add_archive_options(p)
    p.add_argument(
        "--timeout",
        type=positive(float),
        default=serving.SERVE_TIMEOUT_S,
        help="seconds to wait for the partitions to open (default %(default)g)",
    )
    p.set_defaults(run=_serve)


def _add_partition_options(serve: argparse.ArgumentParser) -> None:
    partitions = serve.add_argument_group("partitions")
    partitions.add_argument(
        "--partitions",
        type=positive(int),
        default=None,
        help="partition count, fixed when the data directory is created (default 4)",
    )
    partitions.add_argument(
        "--synchronous",
        type=str.upper,
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="SQLite synchronous mode: FULL (default, survives power loss) or NORMAL "
        "(survives a killed process)",
    )
    partitions.add_argument(
        "--partition-resources",
        type=resources,
        default=None,
        metavar="JSON",
        help="custom Ray resources each partition actor asks for, e.g. '{\"duraflow\": 1}': "
        "partitions then run only on nodes started with them (ray start --resources=...)",
    )
    partitions.add_argument(
        "--activity-threads",
        type=positive(int),
        default=DEFAULT_ACTIVITY_THREADS,
        help="threads for sync activities run in a partition's process (default %(default)s)",
    )
    partitions.add_argument(
        "--max-resident-runs",
        type=positive(int),
        default=None,
        metavar="N",
        help="per partition, runs kept in memory between turns (default: no cap)",
    )
    partitions.add_argument(
        "--hibernate-after",
        type=duration_or_never,
        default=IDLE_BEFORE_HIBERNATE_S,
        metavar="DURATION",
        help="runs idle this long are dropped from memory until woken, e.g. 30s, 5m; 'never' "
        "keeps them (default %(default)gs)",
    )
    partitions.add_argument(
        "--deadlock-threshold",
        type=duration_or_never,
        default=DEADLOCK_THRESHOLD_S,
        metavar="DURATION",
        help="workflow code that holds its partition this long without an await is reported "
        "and its run marked stuck; 'never' turns the detector off (default %(default)gs)",
    )


def _add_archive_options(serve: argparse.ArgumentParser) -> None:
    archive = serve.add_argument_group("archive")
    archive.add_argument(
        "--no-archive",
        dest="archive",
        action="store_false",
        help="run no archive consumer (closed runs then stay in the partitions)",
    )
    archive.add_argument(
        "--retention",
        type=duration,
        default=DEFAULT_RETENTION_S,
        metavar="DURATION",
        help="how long a closed run stays in its partition's file once archived, e.g. 1h, 7d, "
        "0 (default %(default)gs)",
    )
    archive.add_argument(
        "--archive-interval",
        type=duration,
        default=COMMIT_INTERVAL_S,
        metavar="DURATION",
        help="how often warm segments are committed to the Iceberg tables (default %(default)gs)",
    )
    archive.add_argument(
        "--warehouse",
        default=None,
        help="where the Iceberg tables' files go: s3://bucket/prefix (the bucket must exist), "
        "a path or a file:// URI (default DATA_DIR/archive/warehouse)",
    )
    archive.add_argument(
        "--s3-endpoint",
        default=None,
        metavar="URL",
        help="with an s3:// warehouse: the endpoint of an S3-compatible store (default: AWS); "
        "credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    )
    archive.add_argument(
        "--s3-region",
        default=None,
        help=f"with an s3:// warehouse: the bucket's region (default {DEFAULT_S3_REGION})",
    )


def _serve(args: argparse.Namespace) -> int:
    # Like `python -m`: app modules are found from the current directory (Ray puts this
    # driver's current directory on the partition actors' sys.path too).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    served = serving.serve(serve_config(args), address=args.address, timeout=args.timeout)
    config = served.config
    what = "Already serving" if served.already_running else "Serving"
    apps = ", ".join(config.app_modules) or "none"
    print(
        f"{what} {config.data_dir} ({config.partitions} partitions, app modules: {apps}) "
        f"in Ray namespace {config.namespace!r}."
    )
    print(_archive_line(config))
    print()
    _print_table(served.statuses)
    ns = config.namespace
    options = f"--namespace {ns}" + ("" if args.address == "auto" else f" --address {args.address}")
    print(
        f"""
The partition actors live on in the Ray cluster after this command exits; a partition
whose process dies is restarted by Ray and recovers from its file. Connect from any Ray
driver of the cluster:

    import duraflow as df
    client = df.Client.connect({json.dumps(args.address)}, namespace={json.dumps(ns)})

    duraflow status {options}    # partitions, nodes, open and resident runs; worker pools
    duraflow stop {options}      # closes the partitions; the data stays"""
    )
    if args.address != "auto":
        print("\n(With an explicit address Ray sends its token only if RAY_AUTH_MODE=token.)")
    return 0


def serve_config(args: argparse.Namespace) -> EngineConfig:
    """The config ``duraflow serve`` serves: built from its options by the same function as
    ``df.Engine``'s, so a setting either has an option here or cannot be served."""
    return runtime.engine_config(
        args.data_dir,
        partitions=args.partitions,
        namespace=args.namespace,
        synchronous=args.synchronous,
        activity_threads=args.activity_threads,
        max_resident_runs=args.max_resident_runs,
        hibernate_after=args.hibernate_after,
        retention=args.retention,
        archive=args.archive,
        warehouse=args.warehouse,
        s3=_s3_config(args.warehouse, args.s3_endpoint, args.s3_region),
        archive_interval=args.archive_interval,
        app_modules=args.app,
        partition_resources=args.partition_resources,
        deadlock_threshold=args.deadlock_threshold,
        workers=args.workers,
    )


def _s3_config(warehouse: str | None, endpoint: str | None, region: str | None) -> S3Config | None:
    """The S3 settings of an ``s3://`` warehouse: endpoint and region from the options, the
    credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for
    temporary ones; never from the command line, where any local user sees them); without
    those the actors use their own.

    Raises:
        ConfigurationError: S3 options without an ``s3://`` warehouse, or only one of the two
            credential variables set.
    """
    if warehouse is None or not warehouse.startswith("s3://"):
        if endpoint is not None or region is not None:
            raise ConfigurationError("--s3-endpoint and --s3-region go with an s3:// --warehouse")
        return None
    key_id, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        raise ConfigurationError(
            "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the S3 warehouse, or neither "
            "(then the archive's consumer signs in with its own AWS environment)"
        )
    return S3Config(
        endpoint=endpoint,
        access_key_id=key_id or None,
        secret_access_key=secret or None,
        region=region or DEFAULT_S3_REGION,
        session_token=(os.environ.get("AWS_SESSION_TOKEN") or None) if key_id else None,
    )


def _archive_line(config: EngineConfig) -> str:
    if not config.archive:
        return "No archive (--no-archive): closed runs stay in the partitions."
    where = config.warehouse or str(warehouse_dir(archive_paths(Path(config.data_dir))[0]))
    if config.s3 is not None and config.s3.endpoint:
        where += f" (endpoint {config.s3.endpoint})"
    return (
        f"Archive: {where}, committed every {config.archive_interval_s:g}s; closed runs leave "
        f"the partitions {config.retention_s:g}s after they are archived."
    )


def _status(args: argparse.Namespace) -> int:
    reports = serving.serving_status(
        address=args.address, namespace=args.namespace, timeout=args.timeout
    )
    if args.json:
        print_json(reports)
        return 0
    served = next((r for r in reports if "data_dir" in r), None)
    if served is not None:
        print(
            f"Ray namespace {args.namespace!r} serves {served['data_dir']} "
            f"({served['partitions']} partitions)."
        )
        print()
    _print_table(reports)
    pools = serving.serving_pools(reports, namespace=args.namespace, timeout=args.timeout)
    if pools:
        print()
        _print_pools(pools)
    missing = [r["index"] for r in reports if "error" in r]
    if missing:
        print(f"duraflow: error: partitions {missing} did not answer", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _stop(args: argparse.Namespace) -> int:
    stopped = serving.stop_serving(
        address=args.address, namespace=args.namespace, timeout=args.timeout
    )
    print(
        f"Stopped {len(stopped)} partition actors in Ray namespace {args.namespace!r}; "
        "the data directory is kept (serve it again to resume its open workflows)."
    )
    return 0


def _print_table(reports: list[dict[str, Any]]) -> None:
    header = ("PARTITION", "NODE", "PID", "OPEN", "RESIDENT", "PARKED", "LSN")
    rows: list[tuple[str, ...]] = []
    for r in reports:
        if "error" in r:
            rows.append((str(r["index"]), f"unavailable: {r['error']}", "", "", "", "", ""))
            continue
        node = f"{r.get('node_ip', '?')} {str(r.get('node_id', ''))[:8]}".strip()
        parked = r["open"] - r["resident"]
        row = (r["index"], node, r["pid"], r["open"], r["resident"], parked, r["lsn"])
        rows.append(tuple(str(v) for v in row))
    healthy = [r for r in reports if "error" not in r]
    if len(healthy) > 1:
        open_, resident = sum(r["open"] for r in healthy), sum(r["resident"] for r in healthy)
        rows.append(("total", "", "", str(open_), str(resident), str(open_ - resident), ""))
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _print_pools(pools: list[dict[str, Any]]) -> None:
    """The worker pools: workers named, alive (answered), attempts running and outstanding
    (sent by the partitions, or about to be, and not answered yet)."""
    header = ("POOL", "SIZE", "ALIVE", "RUNNING", "OUTSTANDING")
    rows = [
        tuple(str(p[k]) for k in ("queue", "size", "alive", "running", "outstanding"))
        for p in pools
    ]
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _relocate_archive(args: argparse.Namespace) -> int:
    counts = runtime.relocate_archive(args.data_dir)
    if not counts:
        print(f"The archive of {args.data_dir} is at its place already: nothing to do.")
        return 0
    files = ", ".join(f"{table} {n} data files" for table, n in counts.items())
    print(f"Relocated the archive of {args.data_dir} to its own warehouse: {files}.")
    return 0
