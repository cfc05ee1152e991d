"""An asyncio event loop on a daemon thread of its own, which other threads hand coroutines to.

The blocking client, the in-process partitions and the in-process archive consumer each run
on one. A leaf: it imports only the standard library, so every layer may use it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

STOP_WAIT_S = 10.0
"""How long :meth:`LoopThread.stop` waits by default for the loop's tasks and thread to end."""


class LoopThread:
    """A new event loop, running on a daemon thread named ``name`` until :meth:`stop`.

    Note:
        The thread is a daemon: a loop never stopped cannot keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._stopping = False
        self.thread.start()

    def _main(self) -> None:
        self.loop.run_forever()
        # Stopped: end what still runs, as asyncio.run does when it returns. A task left
        # pending would be destroyed later, maybe after what it talks to is gone (a Ray call
        # then hangs the process at exit); a thread of the executor may still write files.
        self.loop.run_until_complete(_finish())

    @property
    def running(self) -> bool:
        """Whether the loop still runs (not stopped, and its thread alive)."""
        return self.thread.is_alive() and not self._stopping

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop (from any thread); its future.

        Raises:
            RuntimeError: the loop was stopped.
        """
        if self._stopping:
            coro.close()
            raise RuntimeError(f"the loop of {self.thread.name} was stopped")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any other thread).

        Raises:
            RuntimeError: called on the loop's own thread (it would wait forever).
            TimeoutError: ``timeout`` seconds passed first (``coro`` goes on).
        """
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                f"a blocking call cannot wait on its own loop ({self.thread.name}): use its "
                "async twin there"
            )
        return self.submit(coro).result(timeout)

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Stop the loop and end what still runs on it as ``asyncio.run`` does when it
        returns (cancel its tasks and wait for them, then for the threads of its default
        executor); wait up to ``wait_s`` for all that, and close the loop once its thread
        has ended (else later, by calling again). Idempotent."""
        if self.loop.is_closed():
            return
        if not self._stopping:
            self._stopping = True
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(wait_s)
        if not self.thread.is_alive():  # else a callback still blocks the loop
            self.loop.close()


async def _finish() -> None:
    this = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not this]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_default_executor()
