"""The archive's pyiceberg catalog: a SQLite SqlCatalog, a local or S3 warehouse, three tables.

The catalog database is always a SQLite file in the archive directory; the warehouse (where
data and metadata files go) is a folder beside it by default, or ``s3://bucket/prefix``.
pyiceberg creates no buckets: the bucket must exist.

Note:
    S3 credentials are passed to pyiceberg and to pyarrow only. They never appear in a repr,
    a log line or an error message of ours; errors from below are scrubbed of them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pyarrow.fs
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from duraflow.config import S3Config  # also importable from here, as before
from duraflow.errors import ConfigurationError
from duraflow.storage.archive_schema import TABLES, TableSpec
from duraflow.storage.layout import catalog_path, warehouse_dir

NAMESPACE = "duraflow"
CATALOG_NAME = "duraflow"
OPEN_ATTEMPTS = 4
"""Tries at opening the catalog database (a concurrent first opening can fail once)."""
RELOCATE_COMMAND = "duraflow relocate-archive --data-dir"
OFFSET_PREFIX = "duraflow.offset."
"""Table properties ``duraflow.offset.<partition>``: the highest LSN of each partition that
the table holds (storage/iceberg.py: commit)."""
URL_SPECIAL = ("%", "#", "?")
"""Characters a local archive path cannot hold (they mean something in a URL)."""
ROW_GROUP_ROWS = 16_384
"""Rows per Parquet row group: small enough that DuckDB skips most of a sorted day when it
looks for one workflow, big enough that a full scan stays fast."""

TABLE_PROPERTIES = {
    # Commit cost grows with the snapshots and manifests kept: merge manifests, drop old
    # metadata files, and expire snapshots regularly (storage/iceberg_upkeep.py: expire).
    "commit.manifest-merge.enabled": "true",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # pyiceberg would re-apply an append on top of a concurrent commit; our offsets must be
    # re-read first, so a conflict fails and storage/iceberg.py: commit starts over.
    "commit.retry.num-retries": "0",
    "write.parquet.row-group-limit": str(ROW_GROUP_ROWS),
    "write.parquet.compression-codec": "zstd",
}


def catalog_properties(s3: S3Config) -> dict[str, str]:
    """pyiceberg FileIO properties for the bucket ``s3`` describes."""
    props = {"py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO", "s3.region": s3.region}
    if s3.endpoint:
        props["s3.endpoint"] = s3.endpoint
    if s3.access_key_id:
        props["s3.access-key-id"] = s3.access_key_id
    if s3.secret_access_key:
        props["s3.secret-access-key"] = s3.secret_access_key
    if s3.session_token:
        props["s3.session-token"] = s3.session_token
    return props


def s3_filesystem(s3: S3Config) -> pyarrow.fs.S3FileSystem:
    """A pyarrow filesystem over the bucket (DuckDB reads through it, via pyarrow)."""
    options: dict[str, Any] = {"region": s3.region}
    if s3.endpoint:
        scheme, _, rest = s3.endpoint.partition("://")
        options["endpoint_override"] = rest if rest else scheme
        options["scheme"] = scheme if rest else "https"
    if s3.access_key_id:
        options["access_key"] = s3.access_key_id
        options["secret_key"] = s3.secret_access_key
        if s3.session_token:
            options["session_token"] = s3.session_token
    return pyarrow.fs.S3FileSystem(**options)


class Archive:
    """The three Iceberg tables of one archive, and how to read their files.

    Attributes:
        catalog: the pyiceberg catalog.
        history, workflows, activities: the tables (pyiceberg ``Table`` objects).
        warehouse: ``file:///...`` or ``s3://bucket/prefix``.
        s3: the S3 settings of an S3 warehouse, else ``None``.
    """

    def __init__(
        self, catalog: SqlCatalog, tables: dict[str, Table], warehouse: str, s3: S3Config | None
    ) -> None:
        self.catalog = catalog
        self.tables = tables
        self.warehouse = warehouse
        self.s3 = s3

    def __repr__(self) -> str:
        return f"Archive(warehouse={self.warehouse!r})"

    @property
    def history(self) -> Table:
        return self.tables["history"]

    @property
    def workflows(self) -> Table:
        return self.tables["workflows"]

    @property
    def activities(self) -> Table:
        return self.tables["activities"]

    def refresh(self) -> None:
        """Reload every table's metadata (another process may have committed)."""
        for table in self.tables.values():
            table.refresh()

    def filesystem(self) -> pyarrow.fs.FileSystem | None:
        """The pyarrow filesystem data files are read through; ``None`` for local files."""
        return None if self.s3 is None else s3_filesystem(self.s3)


def open_archive(
    archive_dir: str | Path, *, warehouse: str | None = None, s3: S3Config | None = None
) -> Archive:
    """Open the archive in ``archive_dir``, creating its catalog and tables when missing.

    Args:
        archive_dir: a local folder; it holds the catalog database, and the warehouse unless
            ``warehouse`` says otherwise.
        warehouse: ``s3://bucket/prefix`` (the bucket must exist), a ``file://`` URI or a
            path; default ``<archive_dir>/warehouse``.
        s3: endpoint, credentials and region for an ``s3://`` warehouse.

    Raises:
        ConfigurationError: the warehouse cannot be used (the message names it, never the
            credentials).
    """
    root = Path(archive_dir).resolve()
    _check_path(root)
    root.mkdir(parents=True, exist_ok=True)
    location = warehouse_uri(root, warehouse)
    if location.startswith("s3://"):
        s3 = s3 or S3Config()
    elif s3 is not None:
        raise ConfigurationError(f"S3 settings were given for a local warehouse {location!r}")
    check_table_locations(root, location)
    properties = {"uri": f"sqlite:///{catalog_path(root)}", "warehouse": location}
    if s3 is not None:
        properties |= catalog_properties(s3)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            catalog = SqlCatalog(CATALOG_NAME, **properties)
            catalog.create_namespace_if_not_exists(NAMESPACE)
            tables = {name: _open_table(catalog, spec) for name, spec in TABLES.items()}
            return Archive(catalog, tables, location, s3)
        except ConfigurationError:
            raise
        except Exception as exc:
            if isinstance(exc, SQLAlchemyError) and attempt < OPEN_ATTEMPTS:
                # Two processes (or threads) creating the same new catalog race in pyiceberg's
                # check-then-create ("table ... already exists"): the next attempt finds it.
                time.sleep(0.05 * attempt)
                continue
            message = f"cannot open the archive warehouse {location!r}: {type(exc).__name__}: {exc}"
            raise ConfigurationError(s3.scrub(message) if s3 else message) from None
    raise AssertionError("unreachable")  # pragma: no cover


def warehouse_uri(root: Path, warehouse: str | None) -> str:
    """The warehouse of the archive in ``root``: ``warehouse`` as a URI, or the default
    ``file://<root>/warehouse``; a local one is created."""
    if warehouse is None:
        folder = warehouse_dir(root)
    elif warehouse.startswith("s3://"):
        if not warehouse.removeprefix("s3://").strip("/"):
            raise ConfigurationError(f"an S3 warehouse needs a bucket: {warehouse!r}")
        return warehouse.rstrip("/")
    elif warehouse.startswith("file://"):
        folder = Path(warehouse.removeprefix("file://"))
    elif "://" in warehouse:
        raise ConfigurationError(f"warehouse must be s3://, file:// or a path: {warehouse!r}")
    else:
        folder = Path(warehouse).resolve()
    _check_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return f"file://{folder}"  # not as_uri(): pyiceberg does not unquote %20 and the like


def recorded_locations(root: Path) -> dict[str, str]:
    """Each archive table's metadata location, as the catalog in ``root`` records it (empty
    without a catalog). Reads only."""
    path = catalog_path(root)
    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigurationError(f"cannot read the archive's catalog {path}: {exc}") from None
    try:
        rows = conn.execute(
            "SELECT table_name, metadata_location FROM iceberg_tables "
            "WHERE catalog_name = ? AND table_namespace = ?",
            (CATALOG_NAME, NAMESPACE),
        ).fetchall()
    except sqlite3.OperationalError:  # no tables created yet
        return {}
    except sqlite3.Error as exc:
        raise ConfigurationError(f"cannot read the archive's catalog {path}: {exc}") from None
    finally:
        conn.close()
    return {str(name): str(where) for name, where in rows if where}


def check_table_locations(root: Path, location: str) -> None:
    """Refuse an archive whose catalog records its tables outside ``location``, the warehouse
    this data directory uses.

    Iceberg records absolute locations (in the catalog, and in every metadata and manifest
    file), so the catalog of a copied data directory still points at the original's tables:
    writing through it would add files to the original's warehouse and delete some of them.

    Raises:
        ConfigurationError: naming both places and the ways out.
    """
    for table, metadata in sorted(recorded_locations(root).items()):
        if metadata.startswith(location.rstrip("/") + "/"):
            continue
        where = metadata.split(f"/{NAMESPACE}/{table}/metadata/")[0]
        data_dir = root.parent
        raise ConfigurationError(
            f"the archive's catalog {catalog_path(root)} records its tables in {where}, not "
            f"in the warehouse this data directory uses, {location}: was the data directory "
            f"copied or moved? (Iceberg records absolute paths, and writing through them would "
            f"change the files there.) To point this archive at its own copy of the files, "
            f"run '{RELOCATE_COMMAND} {data_dir}'; to start a new archive instead, remove "
            f"{root} (the runs already pruned from the partitions are then only in the old "
            f"one); if the archive's warehouse was set, open with that warehouse."
        )


def archived_offsets(root: Path) -> dict[int, int]:
    """The highest LSN of each partition that any table of the local archive in ``root``
    holds, read from the tables' current metadata files (no pyiceberg: cheap enough for every
    opening). Empty for an archive in S3, or one whose metadata cannot be read."""
    offsets: dict[int, int] = {}
    for metadata in recorded_locations(root).values():
        if not metadata.startswith("file://"):
            continue
        try:
            properties = json.loads(Path(metadata.removeprefix("file://")).read_bytes())
            properties = properties.get("properties", {})
            found = {
                int(key.removeprefix(OFFSET_PREFIX)): int(value)
                for key, value in properties.items()
                if key.startswith(OFFSET_PREFIX)
            }
        except (OSError, ValueError, AttributeError):
            continue  # the consumer, opening it with pyiceberg, will say what is wrong
        for partition, lsn in found.items():
            offsets[partition] = max(lsn, offsets.get(partition, 0))
    return offsets


def _check_path(folder: Path) -> None:
    # The catalog and pyiceberg turn paths into URLs without quoting them
    if any(c in str(folder) for c in URL_SPECIAL):
        raise ConfigurationError(
            f"archive paths cannot contain any of {' '.join(URL_SPECIAL)}: {str(folder)!r}"
        )


def _with_new_columns(table: Table, spec: TableSpec) -> Table:
    """``table`` with the optional columns added to ``spec`` since it was made (schema
    evolution is additive: archive_schema's rule)."""
    known = {field.name for field in table.schema().fields}
    if all(field.name in known for field in spec.schema.fields):
        return table
    with table.update_schema() as update:
        update.union_by_name(spec.schema)
    return table


def _open_table(catalog: SqlCatalog, spec: TableSpec) -> Table:
    # Load first: pyiceberg's create_table_if_not_exists writes a new metadata file before it
    # finds the table exists, leaving one orphan file per table on every open (and writing
    # where a reader such as `duraflow sql --data-dir` should only read).
    identifier = (NAMESPACE, spec.name)
    try:
        return _with_new_columns(catalog.load_table(identifier), spec)
    except NoSuchTableError:
        pass
    try:
        return catalog.create_table(
            identifier,
            schema=spec.schema,
            partition_spec=spec.partition_spec(),
            sort_order=spec.sort_order(),
            properties=TABLE_PROPERTIES,
        )
    except TableAlreadyExistsError:  # created meanwhile by another process
        return catalog.load_table(identifier)
