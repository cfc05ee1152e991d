"""The ``duraflow sql`` verb: one read-only DuckDB query over the archive, of a deployment or
of a data directory read in this process, printed as an aligned table or as JSON lines."""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
from typing import TYPE_CHECKING, Any

import msgspec

from duraflow.client.client import Client
from duraflow.config import S3Config
from duraflow.errors import ConfigurationError
from duraflow.storage.layout import CATALOG_FILE, archive_paths, data_dir_path

if TYPE_CHECKING:
    # DuckDB, pyiceberg and pyarrow cost a command's start 1-2 s: only `duraflow sql` (which
    # reads the archive in this process) imports them, when it runs.
    from duraflow.storage.query import ArchiveQuery

SQL_CELL_WIDTH = 60
"""Table cells are cut to this many characters (``--json`` prints whole values)."""
_sql_json = msgspec.json.Encoder(decimal_format="number", enc_hook=str)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``sql``."""
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
