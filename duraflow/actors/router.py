"""workflow_id → partition, by a stable hash (the same in every process and Python version)."""

from __future__ import annotations

import hashlib


def partition_of(workflow_id: str, partitions: int) -> int:
    """The index of the partition that owns ``workflow_id`` among ``partitions``."""
    digest = hashlib.blake2b(workflow_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions
