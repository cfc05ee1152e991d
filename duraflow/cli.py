"""The ``duraflow`` command: serve a data directory on a Ray cluster, and thin client commands.

    duraflow serve --data-dir DIR --app mypackage.workflows [--partitions P] [--address auto]
                   [--retention D] [--warehouse s3://bucket/prefix] [--s3-endpoint URL] ...
    duraflow status | stop
    duraflow list [--status S] [--type T] | describe ID | result ID [--timeout S]
    duraflow signal ID NAME [JSON] | cancel ID | terminate ID [--reason R]
    duraflow sql "SELECT ..." [--json] [--data-dir DIR]
    duraflow relocate-archive --data-dir DIR

Every command takes ``--address`` (default ``auto``: the cluster this node belongs to) and
``--namespace`` (default ``duraflow``). The work is done by :mod:`duraflow.runtime` and the
:class:`~duraflow.Client`; this module only parses arguments and prints.

Exit codes: 0 done; 1 the workflow failed, was cancelled or terminated, or ``result`` timed
out; 2 an error (bad input, no such workflow, nothing served, Ray unreachable, a bad SQL
query or one that does more than read), printed without a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from duraflow import runtime
from duraflow.client.client import Client
from duraflow.config import (
    COMMIT_INTERVAL_S,
    DEADLOCK_THRESHOLD_S,
    DEFAULT_ACTIVITY_THREADS,
    DEFAULT_NAMESPACE,
    DEFAULT_RETENTION_S,
    IDLE_BEFORE_HIBERNATE_S,
    EngineConfig,
    S3Config,
)
from duraflow.engine.definitions import parse_duration
from duraflow.errors import (
    ConfigurationError,
    DuraflowError,
    InvalidDuration,
    ResultTimeout,
    WorkflowFailedError,
)
from duraflow.storage.codec import to_json
from duraflow.storage.layout import CATALOG_FILE, archive_paths, data_dir_path, warehouse_dir

if TYPE_CHECKING:
    # DuckDB, pyiceberg and pyarrow cost a command's start 1-2 s here: only `duraflow sql`
    # (which reads the archive in this process) imports them.
    from duraflow.storage.query import ArchiveQuery

DEFAULT_ADDRESS = "auto"
DEFAULT_S3_REGION = "us-east-1"
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
EXIT_FAILED = 1
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``duraflow`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (WorkflowFailedError, ResultTimeout) as exc:
        print(f"duraflow: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DuraflowError as exc:
        print(f"duraflow: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output went away (`duraflow sql ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_FAILED


# -- deployment ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    # Like `python -m`: app modules are found from the current directory (Ray puts this
    # driver's current directory on the partition actors' sys.path too).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    served = runtime.serve(_serve_config(args), address=args.address, timeout=args.timeout)
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

    duraflow status {options}    # partitions, nodes, open and resident runs
    duraflow stop {options}      # closes the partitions; the data stays"""
    )
    if args.address != "auto":
        print("\n(With an explicit address Ray sends its token only if RAY_AUTH_MODE=token.)")
    return 0


def _serve_config(args: argparse.Namespace) -> EngineConfig:
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
    )


def _s3_config(warehouse: str | None, endpoint: str | None, region: str | None) -> S3Config | None:
    """The S3 settings of an ``s3://`` warehouse: endpoint and region from the options, the
    credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (never from the command
    line, where any local user sees them); without those the actors use their own.

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
    reports = runtime.serving_status(
        address=args.address, namespace=args.namespace, timeout=args.timeout
    )
    if args.json:
        _print_json(reports)
        return 0
    served = next((r for r in reports if "data_dir" in r), None)
    if served is not None:
        print(
            f"Ray namespace {args.namespace!r} serves {served['data_dir']} "
            f"({served['partitions']} partitions)."
        )
        print()
    _print_table(reports)
    missing = [r["index"] for r in reports if "error" in r]
    if missing:
        print(f"duraflow: error: partitions {missing} did not answer", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _stop(args: argparse.Namespace) -> int:
    stopped = runtime.stop_serving(
        address=args.address, namespace=args.namespace, timeout=args.timeout
    )
    print(
        f"Stopped {len(stopped)} partition actors in Ray namespace {args.namespace!r}; "
        "the data directory is kept (serve it again to resume its open workflows)."
    )
    return 0


def _print_table(reports: list[dict[str, Any]]) -> None:
    header = ("PARTITION", "NODE", "PID", "OPEN", "RESIDENT", "PARKED", "LSN")
    rows = []
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
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- client commands ---------------------------------------------------------------------------


def _with_client(command: Callable[[Client, argparse.Namespace], int | None]) -> Any:
    def run(args: argparse.Namespace) -> int | None:
        client = Client.connect(args.address, namespace=args.namespace)
        try:
            return command(client, args)
        finally:
            client.close()

    return run


def _list(client: Client, args: argparse.Namespace) -> None:
    for description in client.list(args.status, args.type, args.limit):
        print(to_json(description))


def _describe(client: Client, args: argparse.Namespace) -> None:
    _print_json(client.get_handle(args.workflow_id, args.run_id).describe())


def _signal(client: Client, args: argparse.Namespace) -> None:
    client.get_handle(args.workflow_id, args.run_id).signal(args.name, args.payload)
    print(f"signal {args.name!r} sent to {args.workflow_id!r}")


def _cancel(client: Client, args: argparse.Namespace) -> None:
    client.get_handle(args.workflow_id, args.run_id).cancel(args.reason)
    print(f"cancellation requested for {args.workflow_id!r}")


def _terminate(client: Client, args: argparse.Namespace) -> None:
    client.get_handle(args.workflow_id, args.run_id).terminate(args.reason)
    print(f"terminated {args.workflow_id!r}")


def _result(client: Client, args: argparse.Namespace) -> None:
    _print_json(client.get_handle(args.workflow_id, args.run_id).result(args.timeout))


def _print_json(value: Any) -> None:
    print(msgspec.json.format(to_json(value), indent=2))


# -- sql ---------------------------------------------------------------------------------------

SQL_CELL_WIDTH = 60
"""Table cells are cut to this many characters (``--json`` prints whole values)."""
_sql_json = msgspec.json.Encoder(decimal_format="number", enc_hook=str)


def _sql(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        with _open_local_archive(args) as session:
            return _run_sql(session, args)
    if args.warehouse is not None or args.s3_endpoint is not None:
        raise ConfigurationError("--warehouse and --s3-endpoint go with --data-dir")
    client = Client.connect(args.address, namespace=args.namespace)
    try:
        with client.duckdb() as session:
            return _run_sql(session, args)
    finally:
        client.close()


def _open_local_archive(args: argparse.Namespace) -> ArchiveQuery:
    """The archive of a data directory, read in this process (no Ray; ``live_workflows`` is
    empty: the runs in the partitions are known only to a running deployment)."""
    data_dir = data_dir_path(args.data_dir)
    root, warm = archive_paths(data_dir)
    if not (root / CATALOG_FILE).is_file():
        raise ConfigurationError(
            f"no archive in {data_dir} (expected {root / CATALOG_FILE}): is it a duraflow data "
            "directory, run with the archive on?"
        )
    s3 = None
    if args.warehouse is not None and args.warehouse.startswith("s3://"):
        s3 = S3Config(endpoint=args.s3_endpoint, region=args.s3_region)
    elif args.s3_endpoint is not None:
        raise ConfigurationError("--s3-endpoint needs an s3:// --warehouse")
    from duraflow.storage.query import open_query

    return open_query(root, warm, [], warehouse=args.warehouse, s3=s3)


def _run_sql(session: ArchiveQuery, args: argparse.Namespace) -> int:
    # Read-only statements only; DuckDB's errors and refused statements are QueryErrors
    # (exit code 2 with the message, from main).
    table = session.fetch_arrow(args.query)
    names = _unique(table.column_names)
    columns = [column.to_pylist() for column in table.columns]
    rows = list(zip(*columns, strict=True)) if columns else []
    if args.json:
        for row in rows:
            print(_sql_json.encode(dict(zip(names, row, strict=True))).decode())
        return 0
    _print_rows(table.column_names, columns, rows)
    print(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return 0


def _unique(names: list[str]) -> list[str]:
    """Column names made unique for JSON keys: a repeated ``x`` becomes ``x_1``, ``x_2``..."""
    seen: set[str] = set()
    unique = []
    for name in names:
        key, n = name, 0
        while key in seen:
            n += 1
            key = f"{name}_{n}"
        seen.add(key)
        unique.append(key)
    return unique


def _print_rows(names: list[str], columns: list[list[Any]], rows: list[tuple[Any, ...]]) -> None:
    """An aligned text table; numbers right-aligned, long cells cut."""
    cells = [[_cell(value) for value in row] for row in rows]
    right = [
        any(v is not None for v in values)
        and all(v is None or isinstance(v, (int, float, decimal.Decimal)) for v in values)
        for values in columns
    ]
    widths = [max([len(name)] + [len(line[i]) for line in cells]) for i, name in enumerate(names)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(names))
    print(line(["-" * w for w in widths]))
    for values in cells:
        print(line(values))


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ")
    elif isinstance(value, str):
        text = value
    else:
        text = _sql_json.encode(value).decode() if isinstance(value, (dict, list)) else str(value)
    text = text.replace("\n", " ")
    if len(text) > SQL_CELL_WIDTH:
        text = text[: SQL_CELL_WIDTH - 3] + "..."
    return text


# -- arguments ---------------------------------------------------------------------------------


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text}") from None
    except RecursionError:  # the parser recurses once per level
        raise argparse.ArgumentTypeError(f"JSON nested too deeply: {text[:40]}...") from None


def _resources(text: str) -> dict[str, float]:
    value = _json_value(text)
    if not (
        isinstance(value, dict)
        and all(isinstance(v, (int, float)) and v > 0 for v in value.values())
    ):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object of resource amounts > 0, like {{"duraflow": 1}}: {text}'
        )
    return {str(k): float(v) for k, v in value.items()}


def _duration(text: str) -> float:
    """Seconds (``90``) or a duration string (``1m30s``)."""
    try:
        return parse_duration(float(text) if _NUMBER.fullmatch(text.strip()) else text)
    except InvalidDuration as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_or_never(text: str) -> float | None:
    return None if text.strip().lower() == "never" else _duration(text)


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        help="the Ray cluster: 'auto' (default) on one of its nodes, or the head's host:port "
        "(then set RAY_AUTH_MODE=token when the cluster uses token authentication)",
    )
    common.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="the Ray namespace of the deployment (default: %(default)s)",
    )
    parser = argparse.ArgumentParser(
        prog="duraflow",
        description="Durable workflows on Ray: serve a data directory on a Ray cluster, "
        "and look at or steer its workflows.",
        epilog="Exit codes: 0 done, 1 the workflow failed/was cancelled/terminated or result "
        "timed out, 2 error.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument(
        "--partitions",
        type=_positive(int),
        default=None,
        help="partition count, fixed when the data directory is created (default 4)",
    )
    p.add_argument(
        "--synchronous",
        type=str.upper,
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="SQLite synchronous mode: FULL (default, survives power loss) or NORMAL "
        "(survives a killed process)",
    )
    p.add_argument(
        "--partition-resources",
        type=_resources,
        default=None,
        metavar="JSON",
        help="custom Ray resources each partition actor asks for, e.g. '{\"duraflow\": 1}': "
        "partitions then run only on nodes started with them (ray start --resources=...)",
    )
    p.add_argument(
        "--activity-threads",
        type=_positive(int),
        default=DEFAULT_ACTIVITY_THREADS,
        help="threads for sync activities run in a partition's process (default %(default)s)",
    )
    p.add_argument(
        "--max-resident-runs",
        type=_positive(int),
        default=None,
        metavar="N",
        help="per partition, runs kept in memory between turns (default: no cap)",
    )
    p.add_argument(
        "--hibernate-after",
        type=_duration_or_never,
        default=IDLE_BEFORE_HIBERNATE_S,
        metavar="DURATION",
        help="runs idle this long are dropped from memory until woken, e.g. 30s, 5m; 'never' "
        "keeps them (default %(default)gs)",
    )
    p.add_argument(
        "--deadlock-threshold",
        type=_duration_or_never,
        default=DEADLOCK_THRESHOLD_S,
        metavar="DURATION",
        help="workflow code that holds its partition this long without an await is reported "
        "and its run marked stuck; 'never' turns the detector off (default %(default)gs)",
    )
    archive = p.add_argument_group("archive")
    archive.add_argument(
        "--no-archive",
        dest="archive",
        action="store_false",
        help="run no archive consumer (closed runs then stay in the partitions)",
    )
    archive.add_argument(
        "--retention",
        type=_duration,
        default=DEFAULT_RETENTION_S,
        metavar="DURATION",
        help="how long a closed run stays in its partition's file once archived, e.g. 1h, 7d, "
        "0 (default %(default)gs)",
    )
    archive.add_argument(
        "--archive-interval",
        type=_duration,
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
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=runtime.SERVE_TIMEOUT_S,
        help="seconds to wait for the partitions to open (default %(default)g)",
    )
    p.set_defaults(run=_serve)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="partitions: node, pid, open / resident / parked workflows, LSN",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=runtime.STATUS_TIMEOUT_S,
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
        type=_positive(float),
        default=runtime.STOP_TIMEOUT_S,
        help="seconds to wait for the partitions to close (default %(default)g)",
    )
    p.set_defaults(run=_stop)

    p = sub.add_parser("list", parents=[common], help="workflow runs, newest first (JSON lines)")
    p.add_argument("--status", help="running, completed, failed, cancelled or terminated")
    p.add_argument("--type", help="workflow type name")
    p.add_argument("--limit", type=_positive(int), default=1000, help="default %(default)s")
    p.set_defaults(run=_with_client(_list))

    def run_command(name: str, help: str, command: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help)
        p.add_argument("workflow_id", metavar="ID", help="workflow ID")
        p.add_argument("--run-id", help="a run of the ID (default: its latest run)")
        p.set_defaults(run=_with_client(command))
        return p

    run_command("describe", "status, type, times, history length of a workflow (JSON)", _describe)
    p = run_command("signal", "send a signal to a workflow", _signal)
    p.add_argument("name", metavar="NAME", help="signal name")
    p.add_argument(
        "payload", metavar="JSON", type=_json_value, nargs="?", help="payload (default null)"
    )
    p = run_command("cancel", "ask a workflow to cancel (it may clean up)", _cancel)
    p.add_argument("--reason", default="", help="why")
    p = run_command(
        "terminate", "close a workflow at once, running no more of its code", _terminate
    )
    p.add_argument("--reason", default="", help="why (recorded)")
    p = run_command("result", "wait for a workflow's result and print it (JSON)", _result)
    p.add_argument("--timeout", type=_positive(float), default=None, help="seconds (default: wait)")

    p = sub.add_parser(
        "sql",
        parents=[common],
        help="query the archive with SQL (DuckDB) and print the result",
        description="Run one read-only SQL query (DuckDB) over the archive and print the "
        "result as a table, or as JSON lines with --json. Only SELECT, WITH, EXPLAIN, "
        "DESCRIBE, SUMMARIZE and PIVOT statements run, reading no file but the archive's; "
        "others exit with code 2. Views: history (one row per event), workflows "
        "(one row per closed run), activities (one row per closed activity execution) and "
        "live_workflows (runs in the partitions now). Without --data-dir it asks the "
        "deployment served at --address / --namespace; with --data-dir it reads that data "
        "directory's archive in this process, without Ray (live_workflows is then empty).",
        epilog='Example: duraflow sql "SELECT workflow_type, status, count(*) FROM workflows '
        'GROUP BY ALL"',
    )
    p.add_argument("query", metavar="QUERY", help="the SQL query")
    p.add_argument("--json", action="store_true", help="print one JSON object per row")
    p.add_argument(
        "--data-dir",
        default=None,
        help="read this data directory's archive directly (no Ray; read only)",
    )
    p.add_argument(
        "--warehouse",
        default=None,
        help="with --data-dir: the archive's warehouse when it is not the local default, "
        "e.g. s3://bucket/prefix (credentials from the AWS environment variables)",
    )
    p.add_argument("--s3-endpoint", default=None, help="with an s3:// warehouse: endpoint URL")
    p.add_argument("--s3-region", default="us-east-1", help="with an s3:// warehouse: region")
    p.set_defaults(run=_sql)

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
    return parser


def _relocate_archive(args: argparse.Namespace) -> int:
    counts = runtime.relocate_archive(args.data_dir)
    if not counts:
        print(f"The archive of {args.data_dir} is at its place already: nothing to do.")
        return 0
    files = ", ".join(f"{table} {n} data files" for table, n in counts.items())
    print(f"Relocated the archive of {args.data_dir} to its own warehouse: {files}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
