"""BlockingRunner: the blocking API's private event loop, in a background thread.

The plain (blocking) methods of Client, WorkflowHandle and Subscription run their ``_async``
twins here, so a caller without an event loop of its own can use them from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from duraflow.errors import PartitionUnavailable

T = TypeVar("T")
RUNNER_CLOSE_WAIT_S = 5.0
"""How long closing a client waits for its loop's tasks to end, then for its thread."""


class BlockingRunner:
    """Runs the async twins for the blocking API on one private background loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="duraflow-client", daemon=True
        )
        self._thread.start()
        self._closing = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking duraflow calls cannot run on the client's own loop")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        except concurrent.futures.CancelledError:
            if not self._closing:
                raise
            raise PartitionUnavailable(
                "the client was closed (client.close() or engine.close()) while this call "
                "waited for a partition"
            ) from None

    def close(self) -> None:
        """End what still runs on the loop (as ``asyncio.run`` does when it returns), then
        stop the loop and its thread. A task left pending would be destroyed later, maybe
        after its host is gone (a Ray call then hangs the process at exit)."""
        if self._loop.is_closed():
            return
        self._closing = True
        with contextlib.suppress(concurrent.futures.TimeoutError):
            ending = asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), self._loop)
            ending.result(timeout=RUNNER_CLOSE_WAIT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=RUNNER_CLOSE_WAIT_S)
        self._loop.close()


async def _cancel_other_tasks() -> None:
    this = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not this]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
