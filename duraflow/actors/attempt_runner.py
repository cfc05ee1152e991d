"""The activity attempts a partition has dispatched: started on its executor after the turn
that scheduled them committed, told to stop when the machine no longer wants them, and their
outcomes and heartbeats fed back to the machine as inputs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from duraflow.engine import effects as fx
from duraflow.engine.activities import ActivityExecutor, ActivityOutcome, ActivityTask
from duraflow.engine.machine import Machine


class AttemptRunner:
    """Runs the machine's ``Dispatch`` and ``StopAttempt`` effects on ``executor``.

    Args:
        post: queues an input for the partition's next turn (called on its loop).
    """

    def __init__(
        self, machine: Machine, executor: ActivityExecutor, post: Callable[[Any], None]
    ) -> None:
        self._machine = machine
        self._executor = executor
        self._post = post
        self._tasks: dict[fx.Key, ActivityTask] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def dispatch(self, dispatch: fx.Dispatch) -> None:
        key, number = dispatch.key, dispatch.number
        attempt = self._machine.attempts.get(key)
        if attempt is None or not attempt.running or attempt.number != number:
            return  # resolved or cancelled in the same turn
        beat = fx.Heartbeat
        task = attempt.task(lambda details: self.post_threadsafe(beat(key, number, details)))
        self._tasks[key] = task
        self._executor.start(task, lambda outcome: self._reported(key, number, outcome))

    def stop(self, stop: fx.StopAttempt) -> None:
        task = self._tasks.get(stop.key)
        if task is not None and task.info.attempt == stop.number:
            del self._tasks[stop.key]
            task.cancel()

    def heartbeat(self, key: fx.Key, number: int, details: bytes | None) -> bool:
        """Queue a heartbeat of attempt ``number``; False if that attempt is no longer wanted."""
        attempt = self._machine.attempts.get(key)
        if attempt is None or attempt.number != number or not attempt.running:
            return False
        self._post(fx.Heartbeat(key, number, details))
        return True

    def post_threadsafe(self, item: Any) -> None:
        """Queue an input from any thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._post, item)

    def _reported(self, key: fx.Key, number: int, outcome: ActivityOutcome) -> None:
        """An attempt ended (called from any thread: on the partition's loop, as pool
        outcomes are, it is taken at once, without a wake-up of the loop)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        if asyncio._get_running_loop() is loop:
            self._over(key, number, outcome)
        else:
            loop.call_soon_threadsafe(self._over, key, number, outcome)

    def _over(self, key: fx.Key, number: int, outcome: ActivityOutcome) -> None:
        task = self._tasks.get(key)
        if task is not None and task.info.attempt == number:
            del self._tasks[key]
        self._post(fx.ActivityDone(key, number, outcome))
