"""Where the archive's consumer keeps its files, without importing pyarrow, pyiceberg or
DuckDB: a partition's process never uses them, and a restarted partition actor imports its
module before it serves again (its commit interval is ``duraflow.config.COMMIT_INTERVAL_S``)."""

from __future__ import annotations

from pathlib import Path


def archive_paths(data_dir: Path) -> tuple[Path, Path]:
    """(archive folder, warm segment folder) of a data directory."""
    root = data_dir / "archive"
    return root, root / "warm"
