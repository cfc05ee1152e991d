"""The Host protocol: how the client, the CDC readers and the engine reach partitions.

The in-process host (``duraflow.actors.local_host``) and the Ray host
(``duraflow.actors.ray_host``) implement it: httpx's transport seam, litestream's
``ReplicaClient``. A leaf: it imports nothing of duraflow, so every layer may name it.
"""

from __future__ import annotations

from typing import Any, Protocol


class Host(Protocol):
    """Where partitions live. Calls may be awaited from any event loop."""

    partitions: int
    """How many partitions the deployment has (``duraflow.actors.router`` maps IDs onto them)."""

    async def call(self, partition: int, request: Any) -> Any:
        """The reply of ``partition`` to ``request`` (a ``duraflow.actors.messages`` request);
        the partition's error is raised."""

    async def call_batch(self, partition: int, requests: list[Any]) -> list[Any]:
        """Replies to ``requests`` handled in one turn, an error in place of each failure."""

    def stats(self) -> list[dict[str, int]]:
        """Per-partition counts: open runs, resident runs, LSN."""

    def close(self) -> None:
        """Release what this host started (nothing for a host that only connected)."""
