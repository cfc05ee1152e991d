"""What the runtime and the hosts need of the archive's consumer (its folders, its commit
interval), without importing pyarrow, pyiceberg or DuckDB: a partition's process never uses
them, and a restarted partition actor imports its module before it serves again."""

from __future__ import annotations

from pathlib import Path

COMMIT_INTERVAL_S = 5.0
"""How often warm segments become one Iceberg commit (commit cost grows per snapshot: batch)."""


def archive_paths(data_dir: Path) -> tuple[Path, Path]:
    """(archive folder, warm segment folder) of a data directory."""
    root = data_dir / "archive"
    return root, root / "warm"
