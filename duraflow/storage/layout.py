"""The data directory's layout: every path inside it, named in one place.

```
data_dir/
├── deployment.json          the deployment record: partition count and deployment ID
├── deployment.lock          held while a process creates or checks the deployment
├── partitions/
│   ├── p0000.sqlite         one SQLite file per partition (named by number, never by
│   ├── p0000.sqlite.lock    workflow ID), each with the flock that makes one writer
│   │                        (naming its holder; storage/fencing.py)
│   └── ...
└── archive/
    ├── catalog.sqlite       the Iceberg catalog (pyiceberg SqlCatalog)
    ├── warm/                warm-tier Parquet segments not committed yet
    └── warehouse/           the Iceberg tables' data and metadata (unless a warehouse is set)
```

The paths inside the data directory are all relative to it, except what Iceberg records: the
catalog and the tables' metadata hold absolute locations (``storage/catalog.py`` checks them
at open, so a copied or moved data directory never writes to the original's files).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from duraflow.errors import ConfigurationError

DEPLOYMENT_FILE = "deployment.json"
DEPLOYMENT_LOCK = "deployment.lock"
PARTITIONS_DIR = "partitions"
ARCHIVE_DIR = "archive"
WARM_DIR = "warm"
CATALOG_FILE = "catalog.sqlite"
WAREHOUSE_DIR = "warehouse"
_PARTITION_NAME = re.compile(r"p(\d{4,})\.sqlite")


def data_dir_path(data_dir: str | os.PathLike[str]) -> Path:
    """``data_dir`` as an absolute path (symlinks resolved); nothing is created.

    Raises:
        ConfigurationError: not a path, an empty one, or one with a NUL character.
    """
    if not isinstance(data_dir, (str, os.PathLike)):
        raise ConfigurationError(f"data_dir must be a path, got {type(data_dir).__name__}")
    text = os.fspath(data_dir)
    if isinstance(text, bytes) or not text:
        raise ConfigurationError(f"data_dir must be a non-empty str path, got {data_dir!r}")
    if "\0" in text:
        raise ConfigurationError(f"data directory path has a NUL character: {text!r}")
    return Path(text).resolve()


def deployment_path(data_dir: Path) -> Path:
    """The deployment record of ``data_dir``."""
    return data_dir / DEPLOYMENT_FILE


def deployment_lock_path(data_dir: Path) -> Path:
    """The lock file held while a process creates or checks the deployment."""
    return data_dir / DEPLOYMENT_LOCK


def partitions_dir(data_dir: Path) -> Path:
    """The folder of the partition files."""
    return data_dir / PARTITIONS_DIR


def partition_path(data_dir: Path, index: int) -> Path:
    """The SQLite file of partition ``index`` (named by number, never by workflow ID)."""
    return partitions_dir(data_dir) / f"p{index:04d}.sqlite"


def partition_files(data_dir: Path) -> dict[int, Path]:
    """The partition files present in ``data_dir``, by index (their -wal, -shm and lock files
    are not listed)."""
    folder = partitions_dir(data_dir)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _PARTITION_NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def archive_paths(data_dir: Path) -> tuple[Path, Path]:
    """(archive folder, warm segment folder) of a data directory."""
    root = data_dir / ARCHIVE_DIR
    return root, root / WARM_DIR


def catalog_path(archive_dir: Path) -> Path:
    """The Iceberg catalog database of an archive folder."""
    return archive_dir / CATALOG_FILE


def warehouse_dir(archive_dir: Path) -> Path:
    """The default (local) warehouse of an archive folder."""
    return archive_dir / WAREHOUSE_DIR
