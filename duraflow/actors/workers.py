"""Worker pools: long-lived Ray actors that run activity attempts in batches for a queue.

A pool is ``size`` Ray actors named ``worker-<queue>-<i>`` in the deployment's namespace
(``max_restarts=-1``, ``max_task_retries=0``): the engine starts its pools with its
partitions (``duraflow worker`` starts one on a cluster, to outlive drivers). A worker imports
the app modules (and the definitions a script shipped) like a partition actor does, and
resolves each attempt's activity by name and ``module:qualname``.

The partition side (:class:`PoolDispatcher`) buffers the attempts a turn dispatches per
worker (the one with the fewest outstanding attempts) and sends them once per loop iteration,
one actor call per worker. The call is a Ray streaming generator: the worker yields the
outcomes as they finish, coalesced, so a short attempt does not wait for a long one of its
batch. When the worker dies the stream fails, and every attempt of it not yet answered fails
with ``WorkerLost`` (retryable): the machine retries it under its policy, and ignores the
outcome of an attempt that is no longer the running one, so nothing is recorded twice.

Inside a worker, sync attempts run one at a time on one thread (the actor's event loop stays
free for cancels and heartbeats); async ones run on the loop, up to ``max_async`` at once.
Cancelling a running sync attempt raises ``ActivityCancelledError`` in its thread (at its
next Python bytecode); a sync attempt that ignores it for CANCEL_GRACE_S ends the worker's
process, and Ray restarts it with a free thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from duraflow.config import DEFAULT_QUEUE, EngineConfig, WorkerPool
from duraflow.engine.activities import (
    ActivityInfo,
    ActivityOutcome,
    ActivityTask,
    failure_of,
    run_async_attempt,
    run_sync_attempt,
)
from duraflow.engine.definitions import register_definitions, resolve_activity, set_process_role
from duraflow.errors import ActivityCancelledError

log = logging.getLogger("duraflow.workers")

CANCEL_GRACE_S = 10.0
"""How long a cancelled sync attempt may keep a worker's thread before the worker's process
exits (Ray restarts it): a thread cannot be stopped inside a blocking C call."""
MAX_EARLY_CANCELS = 10_000
"""How many cancels of attempts it does not know a worker remembers (the oldest go first)."""
DISCOVER_EVERY_S = 1.0
"""How often a partition looks again for the workers of a queue it found none of."""
LOST = "WorkerLost"
"""The error type of an attempt whose worker died (retried under the activity's policy)."""
NO_WORKERS = "NoWorkers"
"""The error type of an attempt whose queue no worker serves yet (retried likewise)."""
CANCELLED = ActivityOutcome(
    ok=False, error_type="ActivityCancelledError", error_message="attempt cancelled"
)

Key = tuple[str, str, int]
Job = tuple[ActivityInfo, str, bytes, bool]
"""One attempt sent to a worker: its info, its activity's ``module:qualname``, its encoded
arguments, and whether it is timed (it heartbeats first when it starts)."""
Done = tuple[Key, int, ActivityOutcome]


def worker_name(queue: str, index: int) -> str:
    return f"worker-{queue}-{index}"


def _key(info: ActivityInfo) -> Key:
    return (info.workflow_id, info.run_id, info.seq)


# -- the worker ----------------------------------------------------------------------------


@ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=100_000)
class WorkerActor:
    """One worker of a pool: runs the attempts partitions send it, reports them as they end."""

    async def __init__(
        self, queue: str, index: int, config: bytes, max_async: int, shipped: bytes | None
    ) -> None:
        self._config = EngineConfig.decode(config)
        set_process_role(f"the Ray worker {index} of queue {queue!r}")
        for module in self._config.app_modules:
            __import__(module)
        if shipped is not None:
            register_definitions(ray.cloudpickle.loads(shipped))  # type: ignore[attr-defined]  # reason: ray vendors cloudpickle
        self._queue = queue
        self._index = index
        self._loop = asyncio.get_running_loop()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, f"duraflow-{queue}-{index}")
        self._slots = asyncio.Semaphore(max_async)
        self._tasks: dict[tuple[Key, int], ActivityTask] = {}
        self._async: dict[tuple[Key, int], asyncio.Task[ActivityOutcome]] = {}
        self._sync_lock = threading.Lock()
        self._sync_running: tuple[Key, int] | None = None
        self._sync_ident = 0
        self._beats: dict[tuple[Key, int], Any] = {}
        """Each running attempt's last heartbeat call: its outcome goes after it."""
        self._early_cancels: dict[tuple[Key, int], None] = {}
        """Cancels that came before their attempt (Ray does not order an async actor's calls)."""
        self._started_at = time.time()
        self._ran = 0

    async def run(self, jobs: list[Job], partition: Any) -> AsyncIterator[list[Done]]:
        """Run ``jobs`` (attempts of one partition); yield their outcomes as they end."""
        finished: asyncio.Queue[Done] = asyncio.Queue()
        for job in jobs:
            task = self._task(job, partition)
            if isinstance(task, ActivityOutcome):  # its activity cannot be found here
                finished.put_nowait((_key(job[0]), job[0].attempt, task))
                continue
            running = self._loop.create_task(self._attempt(task, partition, job[3]))
            running.add_done_callback(lambda r, t=task: self._over(t, r, finished))
        left = len(jobs)
        while left:
            batch = [await finished.get()]
            while not finished.empty():
                batch.append(finished.get_nowait())
            left -= len(batch)
            yield batch

    def _task(self, job: Job, partition: Any) -> ActivityTask | ActivityOutcome:
        info, code_ref, args, _timed = job
        key, number = _key(info), info.attempt
        if self._early_cancels.pop((key, number), False) is None:
            return CANCELLED
        try:
            definition = resolve_activity(info.activity, code_ref)
        except Exception as exc:  # reason: reported as the attempt's outcome
            return failure_of(exc)

        def send_heartbeat(details: bytes | None) -> None:
            ref = partition.heartbeat.remote(key, number, details)
            self._beats[(key, number)] = ref
            ref.future().add_done_callback(lambda f: self._heartbeat_answered(task, f))

        task = ActivityTask(definition, args, info, send_heartbeat)
        self._tasks[(key, number)] = task
        return task

    def _heartbeat_answered(self, task: ActivityTask, answer: concurrent.futures.Future) -> None:
        """The partition's answer to a heartbeat (from a Ray thread): False cancels."""
        with contextlib.suppress(Exception):  # a lost answer: the partition's timeouts decide
            if answer.result() is False:
                self._loop.call_soon_threadsafe(self._cancel, _key(task.info), task.info.attempt)

    async def _attempt(self, task: ActivityTask, partition: Any, timed: bool) -> ActivityOutcome:
        try:
            return await self._run(task, partition, timed)
        finally:
            beat = self._beats.pop((_key(task.info), task.info.attempt), None)
            if beat is not None:  # the details of a last heartbeat reach the partition first
                with contextlib.suppress(Exception):
                    await beat

    async def _run(self, task: ActivityTask, partition: Any, timed: bool) -> ActivityOutcome:
        key, number = _key(task.info), task.info.attempt
        if task.definition.is_async:
            async with self._slots:
                if timed and not await partition.heartbeat.remote(key, number, None):
                    return CANCELLED
                if task.cancelled.is_set():
                    return CANCELLED
                running = self._loop.create_task(run_async_attempt(task))
                self._async[(key, number)] = running
                try:
                    return await running
                finally:
                    del self._async[(key, number)]
        return await self._loop.run_in_executor(
            self._thread, self._run_sync, task, partition, timed
        )

    def _run_sync(self, task: ActivityTask, partition: Any, timed: bool) -> ActivityOutcome:
        """In the worker's thread: one sync attempt (a cancel raises in this thread)."""
        key, number = _key(task.info), task.info.attempt
        try:
            if timed and not ray.get(partition.heartbeat.remote(key, number, None)):
                return CANCELLED
            with self._sync_lock:
                if task.cancelled.is_set():
                    return CANCELLED
                self._sync_running, self._sync_ident = (key, number), threading.get_ident()
            try:
                return run_sync_attempt(task)
            finally:
                with self._sync_lock:
                    self._sync_running = None
        except ActivityCancelledError:  # a cancel raised just as the attempt ended
            return CANCELLED

    def _over(
        self, task: ActivityTask, running: asyncio.Task[ActivityOutcome], out: asyncio.Queue[Done]
    ) -> None:
        key, number = _key(task.info), task.info.attempt
        self._tasks.pop((key, number), None)
        self._ran += 1
        try:
            outcome = running.result()
        except BaseException as exc:  # reason: any failure is the attempt's outcome
            outcome = failure_of(exc)
        out.put_nowait((key, number, outcome))

    async def cancel(self, key: Key, number: int) -> None:
        """Attempt ``number`` of ``key`` is no longer wanted: stop it if it runs here."""
        self._cancel(tuple(key), number)  # type: ignore[arg-type]  # reason: Ray may send a list

    def _cancel(self, key: Key, number: int) -> None:
        task = self._tasks.get((key, number))
        if task is None:
            self._early_cancels[(key, number)] = None
            if len(self._early_cancels) > MAX_EARLY_CANCELS:  # of attempts that ended here
                del self._early_cancels[next(iter(self._early_cancels))]
            return
        task.cancelled.set()
        running = self._async.get((key, number))
        if running is not None:
            running.cancel()
            return
        with self._sync_lock:
            if self._sync_running == (key, number):
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._sync_ident), ctypes.py_object(ActivityCancelledError)
                )
                self._loop.call_later(CANCEL_GRACE_S, self._exit_if_stuck, key, number)

    def _exit_if_stuck(self, key: Key, number: int) -> None:
        with self._sync_lock:
            stuck = self._sync_running == (key, number)
        if stuck:
            log.error(
                "worker %d of queue %r: a cancelled sync attempt of %s ignored the cancel for "
                "%gs; the worker restarts to free its thread",
                self._index,
                self._queue,
                key,
                CANCEL_GRACE_S,
            )
            os._exit(1)

    async def status(self) -> dict[str, Any]:
        """PID, node, queue, index, attempts running and run so far."""
        return {
            "queue": self._queue,
            "index": self._index,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "running": len(self._tasks),
            "ran": self._ran,
            "started_at": self._started_at,
        }


def start_pools(
    config: EngineConfig, *, detached: bool = False, shipped: bytes | None = None
) -> list[Any]:
    """Create (or find) the workers of every pool of ``config`` (its ``workers`` and the
    default pool)."""
    handles = []
    for queue, pool in config.pools().items():
        handles.extend(start_pool(config, queue, pool, detached=detached, shipped=shipped))
    return handles


def start_pool(
    config: EngineConfig,
    queue: str,
    pool: WorkerPool,
    *,
    detached: bool = False,
    shipped: bytes | None = None,
) -> list[Any]:
    """Create (or find) the ``pool.size`` workers of ``queue`` (by default one per CPU of the
    cluster)."""
    size = pool.size or max(1, int(ray.cluster_resources().get("CPU", 1)))
    options: dict[str, Any] = {
        "namespace": config.namespace,
        "get_if_exists": True,
        **pool.ray_options(),
    }
    if detached:
        options["lifetime"] = "detached"
    encoded = config.encode()
    return [
        WorkerActor.options(name=worker_name(queue, i), **options).remote(
            queue, i, encoded, pool.max_async, shipped
        )
        for i in range(size)
    ]


def pool_names(namespace: str, queue: str | None = None) -> list[str]:
    """The names of the running workers of ``queue`` (of every queue when None)."""
    pattern = re.compile(rf"worker-{'.+' if queue is None else re.escape(queue)}-\d+")
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and pattern.fullmatch(a["name"])
    )


# -- the partition's side -------------------------------------------------------------------


class _Worker:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.outstanding = 0
        self.pending: list[tuple[ActivityTask, Callable[[ActivityOutcome], None]]] = []


class PoolDispatcher:
    """Sends a partition's pool attempts to the workers of their queues, in batches.

    Args:
        loop: the partition actor's event loop.
        partition: the partition actor's own handle (workers send heartbeats to it).
        namespace: the deployment's Ray namespace (where the workers are named).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, partition: Any, namespace: str) -> None:
        self._loop = loop
        self._partition = partition
        self._namespace = namespace
        self._pools: dict[str, list[_Worker]] = {}
        self._looked_at: dict[str, float] = {}
        self._flushing = False

    def start(self, task: ActivityTask, done: Callable[[ActivityOutcome], None]) -> None:
        queue = task.definition.queue or DEFAULT_QUEUE
        workers = self._workers(queue)
        if not workers:
            done(self._no_workers(queue))
            return
        worker = min(workers, key=lambda w: w.outstanding)
        worker.outstanding += 1
        entry = (task, done)
        worker.pending.append(entry)
        task.cancel_hook = lambda: self._cancel(worker, entry)
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush)

    def _workers(self, queue: str) -> list[_Worker]:
        workers = self._pools.get(queue)
        if workers:
            return workers
        now = time.monotonic()
        if now - self._looked_at.get(queue, -DISCOVER_EVERY_S) < DISCOVER_EVERY_S:
            return []
        self._looked_at[queue] = now
        found = []
        for name in pool_names(self._namespace, queue):
            with contextlib.suppress(ValueError):  # gone meanwhile
                found.append(_Worker(ray.get_actor(name, namespace=self._namespace)))
        self._pools[queue] = found
        return found

    def _no_workers(self, queue: str) -> ActivityOutcome:
        return ActivityOutcome(
            ok=False,
            error_type=NO_WORKERS,
            error_message=(
                f"no worker serves queue {queue!r} in Ray namespace {self._namespace!r}: "
                f"start a pool (df.Engine(workers={{{queue!r}: df.WorkerPool(...)}}) or "
                f"'duraflow worker --queue {queue}'); the attempt is retried"
            ),
        )

    def _cancel(
        self, worker: _Worker, entry: tuple[ActivityTask, Callable[[ActivityOutcome], None]]
    ) -> None:
        if entry in worker.pending:  # not sent yet
            worker.pending.remove(entry)
            worker.outstanding -= 1
            entry[1](CANCELLED)
            return
        info = entry[0].info
        worker.handle.cancel.remote(_key(info), info.attempt)

    def _flush(self) -> None:
        self._flushing = False
        for workers in self._pools.values():
            for worker in workers:
                if worker.pending:
                    batch, worker.pending = worker.pending, []
                    self._loop.create_task(self._stream(worker, batch))

    async def _stream(
        self, worker: _Worker, batch: list[tuple[ActivityTask, Callable[[ActivityOutcome], None]]]
    ) -> None:
        waiting = {(_key(t.info), t.info.attempt): done for t, done in batch}
        jobs = [(t.info, t.definition.code_ref, t.args, t.timed) for t, _ in batch]
        lost: ActivityOutcome | None = None
        try:
            stream = worker.handle.run.options(num_returns="streaming").remote(
                jobs, self._partition
            )
            async for ref in stream:
                for key, number, outcome in await ref:
                    done = waiting.pop((tuple(key), number), None)
                    if done is not None:
                        worker.outstanding -= 1
                        done(outcome)
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            lost = ActivityOutcome(
                ok=False, error_type=LOST, error_message=f"the worker died: {_first_line(exc)}"
            )
            if isinstance(exc, ActorDiedError) and not _restarts(exc):
                self._forget(worker)
        except Exception as exc:  # reason: any other failure fails the attempts it held
            lost = failure_of(exc)
        for done in waiting.values():
            worker.outstanding -= 1
            done(lost or ActivityOutcome(ok=False, error_type=LOST, error_message="no outcome"))

    def _forget(self, worker: _Worker) -> None:
        """A worker killed for good (its pool stopped): look for the pool again."""
        for queue, workers in self._pools.items():
            if worker in workers:
                workers.remove(worker)
                if not workers:
                    self._looked_at.pop(queue, None)


def _restarts(exc: ActorDiedError) -> bool:
    """Whether Ray will restart the dead actor (it was not killed for good)."""
    return "ray.kill" not in str(exc) and "no_restart" not in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
