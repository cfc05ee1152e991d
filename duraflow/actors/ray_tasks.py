"""How a partition actor runs activity attempts: on the worker pool of their queue
(``actors/pool_dispatch.py``), as a Ray task when they ask for Ray resources or a runtime
environment of their own (``max_retries=0``: retrying is the engine's job), or in the actor's
own process (``inline=True``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import ray

from duraflow.actors.pool_dispatch import PoolDispatcher
from duraflow.actors.worker_link import Done
from duraflow.engine.activities import (
    CANCELLED,
    ActivityInfo,
    ActivityOutcome,
    ActivityTask,
    InlineExecutor,
    failure_of,
    run_async_attempt,
    run_sync_attempt,
)
from duraflow.engine.definitions import ActivityDefinition


@ray.remote(max_retries=0)
def _run_activity(
    definition: ActivityDefinition, args: bytes, info: ActivityInfo, actor: Any, timed: bool
) -> ActivityOutcome:
    """One activity attempt as a Ray task; heartbeats go to the owning partition's actor.

    A task with a start-to-close or heartbeat timeout first sends a heartbeat of its own (one
    actor call, skipped for activities without those timeouts): the timeouts then count
    from when it really started, not from when it was submitted (a task can wait seconds for
    a worker process or for resources), and an attempt that is no longer wanted by then (it
    timed out or was cancelled while queued) does not run the activity at all.
    """
    key = (info.workflow_id, info.run_id, info.seq)

    def send_heartbeat(details: bytes | None) -> None:
        if not ray.get(actor.heartbeat.remote(key, info.attempt, details)):
            task.cancelled.set()  # the next heartbeat() raises ActivityCancelledError

    if timed and not ray.get(actor.heartbeat.remote(key, info.attempt, None)):
        return CANCELLED
    task = ActivityTask(definition, args, info, send_heartbeat)
    if definition.is_async:
        return asyncio.run(_interruptible(run_async_attempt(task, interruptible=True)))
    return run_sync_attempt(task, interruptible=True)


CANCEL_POLL_S = 0.05
"""How often an async attempt's event loop wakes so that a ``ray.cancel`` reaches it."""


async def _interruptible(attempt: Coroutine[Any, Any, ActivityOutcome]) -> ActivityOutcome:
    """Run ``attempt`` with the loop waking every CANCEL_POLL_S.

    ``ray.cancel`` interrupts the task's main thread like Ctrl-C (``_thread.interrupt_main``),
    which Python only notices while it runs bytecode: an event loop idle in ``select`` (an
    activity awaiting a long sleep or an event) would keep a cancelled, timed-out attempt
    and its worker until the awaited thing happened, maybe never.
    """

    loop = asyncio.get_running_loop()
    wakeup: asyncio.TimerHandle | None = None

    def wake() -> None:
        nonlocal wakeup
        wakeup = loop.call_later(CANCEL_POLL_S, wake)

    wake()
    try:
        return await attempt
    finally:
        assert wakeup is not None
        wakeup.cancel()


class RayExecutor:
    """Runs activity attempts on worker pools, as Ray tasks (those with Ray options of their
    own), or in this process (inline ones)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, actor: Any, name: str, threads: int, namespace: str
    ) -> None:
        self._loop = loop
        self._actor = actor
        self._inline = InlineExecutor(loop, threads)
        self._pools = PoolDispatcher(loop, actor, name, namespace)

    def start(self, task: ActivityTask, done: Callable[[ActivityOutcome], None]) -> None:
        definition = task.definition
        if definition.inline:
            self._inline.start(task, done)
            return
        if not definition.ray_options:
            self._pools.start(task, done)
            return
        ref = _run_activity.options(**definition.ray_options).remote(
            definition, task.args, task.info, self._actor, task.timed
        )
        task.cancel_hook = lambda: ray.cancel(ref)
        self._loop.create_task(self._wait(ref, done, definition.name))

    def pool_outcomes(self, outcomes: list[Done]) -> None:
        """Outcomes a worker pushed while the rest of their batch ran."""
        self._pools.delivered(outcomes)

    def pool_status(self) -> dict[str, dict[str, int]]:
        """Per queue: the workers this partition knows, linked ones, attempts they hold."""
        return self._pools.status()

    def waits_to_run(self, definition: ActivityDefinition) -> bool:
        """A Ray task or a pool attempt may wait for a worker: each heartbeats first thing
        when a timeout must count from its start."""
        return not definition.inline

    async def _wait(self, ref: Any, done: Callable[[ActivityOutcome], None], name: str) -> None:
        try:
            outcome = await ref
        except ray.exceptions.TaskCancelledError:
            outcome = CANCELLED
        except ray.exceptions.RayTaskError as exc:
            outcome = failure_of(exc.cause if exc.cause is not None else exc)
        except Exception as exc:  # reason: a lost worker is a failed attempt
            outcome = failure_of(exc)
        done(outcome)

    def close(self) -> None:
        self._inline.close()
        self._pools.close()
