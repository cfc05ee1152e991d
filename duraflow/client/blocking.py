"""BlockingRunner: the blocking API's private event loop, in a background thread.

The plain (blocking) methods of Client, WorkflowHandle and Subscription run their ``_async``
twins here, so a caller without an event loop of its own can use them from any thread.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from duraflow.errors import PartitionUnavailable
from duraflow.loop_thread import LoopThread

T = TypeVar("T")
RUNNER_CLOSE_WAIT_S = 5.0
"""How long closing a client waits for its loop's tasks to end, then for its thread."""


class BlockingRunner:
    """Runs the async twins for the blocking API on one private background loop."""

    def __init__(self) -> None:
        self._loop_thread = LoopThread("duraflow-client")
        self._closing = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._loop_thread.run(coro)
        except concurrent.futures.CancelledError:
            if not self._closing:
                raise
            raise PartitionUnavailable(
                "the client was closed (client.close() or engine.close()) while this call "
                "waited for a partition"
            ) from None

    def close(self) -> None:
        """End what still runs on the loop, then stop the loop and its thread
        (:meth:`LoopThread.stop`)."""
        self._closing = True
        self._loop_thread.stop(RUNNER_CLOSE_WAIT_S)
