"""Point the archive of a copied or moved data directory at its own files.

Iceberg records absolute locations: the catalog names each table's metadata file, which
names its manifest list, whose manifests name every data file. A copied or moved data
directory's catalog still names the files at the old place, and ``catalog.open_archive``
refuses it. :func:`relocate_archive` reads the tables through the new place instead (each
old location mapped to the same path under this data directory's warehouse) and registers
them again in a new catalog, written beside the old one and renamed over it: each table is
created at its new location with the same schema, partitioning, sort order and properties
(the consumer's offsets among them) and, in the same commit, the data files of its current
snapshot. Nothing at the old place is read or written.

Note:
    The relocated tables start with one snapshot: older snapshots (time travel) are not
    carried over, and the old metadata and manifest files stay in the warehouse, unused.
    Only the default local warehouse (``data_dir/archive/warehouse``) is relocated; run it
    with no engine open on the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io import InputFile
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.manifest import ManifestContent
from pyiceberg.serializers import FromInputFile

from duraflow.errors import ConfigurationError
from duraflow.storage.catalog import (
    CATALOG_NAME,
    NAMESPACE,
    recorded_locations,
    warehouse_uri,
)
from duraflow.storage.layout import archive_paths, catalog_path

RELOCATING_SUFFIX = ".relocating"


class _MovedIO(PyArrowFileIO):
    """Reads ``old/...`` at ``new/...``: the old place is never touched."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__()
        self._old = old.rstrip("/") + "/"
        self._new = new.rstrip("/") + "/"

    def moved(self, location: str) -> str:
        if not location.startswith(self._old):
            raise ConfigurationError(
                f"the archive names {location}, outside its table's location {self._old}: "
                "it cannot be relocated"
            )
        return self._new + location[len(self._old) :]

    def new_input(self, location: str) -> InputFile:
        return super().new_input(self.moved(location))


def relocate_archive(data_dir: Path) -> dict[str, int]:
    """Register the archive tables of ``data_dir`` again at its own warehouse.

    Returns:
        The data files registered, per table (empty: the archive was already at its place).

    Raises:
        ConfigurationError: there is no archive, a file it names is missing under this data
            directory (an incomplete copy), or it has delete files.
    """
    root, _ = archive_paths(data_dir)
    recorded = recorded_locations(root)
    if not recorded:
        raise ConfigurationError(f"no archive tables in {catalog_path(root)}: nothing to relocate")
    location = warehouse_uri(root, None)
    if all(m.startswith(location + "/") for m in recorded.values()):
        return {}  # at home already
    staging = catalog_path(root).with_name(catalog_path(root).name + RELOCATING_SUFFIX)
    staging.unlink(missing_ok=True)  # left by a relocation that stopped half way
    catalog = SqlCatalog(CATALOG_NAME, uri=f"sqlite:///{staging}", warehouse=location)
    try:
        catalog.create_namespace(NAMESPACE)
        counts = {
            name: _register(catalog, name, metadata, f"{location}/{NAMESPACE}/{name}")
            for name, metadata in sorted(recorded.items())
        }
    except BaseException:
        catalog.engine.dispose()
        staging.unlink(missing_ok=True)
        raise
    catalog.engine.dispose()
    os.replace(staging, catalog_path(root))
    return counts


def _register(catalog: SqlCatalog, name: str, metadata_location: str, new_location: str) -> int:
    """Create table ``name`` at ``new_location`` from the metadata at ``metadata_location``
    (read under ``new_location``), with the data files of its current snapshot."""
    io = _MovedIO(metadata_location.split("/metadata/")[0], new_location)
    try:
        metadata = FromInputFile.table_metadata(io.new_input(metadata_location))
        files = []
        snapshot = metadata.current_snapshot()
        for manifest in snapshot.manifests(io) if snapshot is not None else []:
            if manifest.content != ManifestContent.DATA:
                raise ConfigurationError(
                    f"table {name} has delete files: it cannot be relocated by duraflow"
                )
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                files.append(io.moved(entry.data_file.file_path))
        tx = catalog.create_table_transaction(
            (NAMESPACE, name),
            schema=metadata.schema(),
            location=new_location,
            partition_spec=metadata.spec(),
            sort_order=metadata.sort_order(),
            properties=metadata.properties,
        )
        if files:
            tx.add_files(files, check_duplicate_files=False)
        tx.commit_transaction()
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"cannot relocate table {name}: {exc.filename or exc} is missing (was the data "
            "directory copied whole?)"
        ) from None
    return len(files)
