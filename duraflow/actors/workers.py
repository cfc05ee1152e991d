"""Worker pools: long-lived Ray actors that run activity attempts in batches for a queue.

A pool is ``size`` Ray actors named ``worker-<queue>-<i>`` in the deployment's namespace
(``max_restarts=-1``, ``max_task_retries=0``): the engine starts its pools with its
partitions (``duraflow worker`` starts one on a cluster, to outlive drivers). A worker imports
the app modules (and the definitions a script shipped) like a partition actor does, and
resolves each attempt's activity by name and ``module:qualname``.

The partition side (``PoolDispatcher`` in ``actors/pool_dispatch.py``) buffers the attempts
a turn dispatches per worker (the one with the fewest outstanding attempts) and sends them
once per loop iteration: over the worker's Unix-socket link when it runs on the partition's
node (``actors/worker_link.py``; outcomes come back on it as they end), else as one plain
actor call per worker (``run``; a Ray streaming generator cost about twice as much per call
here). The reply carries the batch's outcomes; while some attempts of a batch still
run, the worker pushes those that ended to the partition actor (``pool_outcomes``, coalesced
for PUSH_AFTER_S), so a short attempt does not wait for a long one of its batch. When the
worker dies the call fails, and every attempt of it not yet answered fails with
``WorkerLost`` (retryable): the machine retries it under its policy, and ignores the outcome
of an attempt that is no longer the running one, so nothing is recorded twice; an outcome
that arrives after its attempt was reported lost is dropped.

Inside a worker, sync attempts run one at a time on one long-lived thread that takes them
from a queue and hands their outcomes back to the actor's event loop in bunches (one wake-up of
the loop for however many ended meanwhile); the loop stays free for cancels and heartbeats.
Async ones run on the loop, up to ``max_async`` at once.
Cancelling a running sync attempt raises ``ActivityCancelledError`` in its thread (at its
next Python bytecode); a sync attempt that ignores it for CANCEL_GRACE_S ends the worker's
process, and Ray restarts it with a free thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

import ray

from duraflow.actors import worker_link
from duraflow.actors.worker_link import Done, Job, Key
from duraflow.config import EngineConfig, WorkerPool
from duraflow.engine.activities import (
    CANCELLED,
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
PUSH_AFTER_S = 0.002
"""How long a worker holds the outcomes of a batch's ended attempts while others of it still
run, before it pushes them to the partition in one call (a batch that ends within this time
comes back whole, in the reply to its call)."""


Report = Callable[[Done], None]
"""Takes one attempt's outcome back to its partition (called on the actor's loop)."""


def worker_name(queue: str, index: int) -> str:
    return f"worker-{queue}-{index}"


def _key(info: ActivityInfo) -> Key:
    return (info.workflow_id, info.run_id, info.seq)


# -- the worker ----------------------------------------------------------------------------


class _Batch:
    """The outcomes of one ``run`` call: held for its reply, or pushed to the partition
    while attempts of the batch still run (see :meth:`WorkerActor.run`)."""

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop, partition: Any) -> None:
        self._left = size
        self._loop = loop
        self._partition = partition
        self._held: list[Done] = []
        self._all_over = loop.create_future()
        self._push: asyncio.TimerHandle | None = None
        self._pushes: list[tuple[Any, list[Done]]] = []
        if size == 0:
            self._all_over.set_result(None)

    def over(self, done: Done) -> None:
        self._held.append(done)
        self._left -= 1
        if self._left == 0:
            if self._push is not None:
                self._push.cancel()
            self._all_over.set_result(None)
        elif self._push is None:
            self._push = self._loop.call_later(PUSH_AFTER_S, self._push_held)

    def _push_held(self) -> None:
        self._push = None
        pushed, self._held = self._held, []
        self._pushes.append((self._partition.pool_outcomes.remote(pushed), pushed))

    async def outcomes(self) -> list[Done]:
        await self._all_over
        for ref, pushed in self._pushes:
            try:
                await ref
            except Exception:  # reason: not delivered (the partition restarts?): in the reply
                self._held.extend(pushed)
        return self._held


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
        self._sync_jobs: SimpleQueue[tuple[ActivityTask, Any, bool, Report]] = SimpleQueue()
        self._sync_ended: list[tuple[ActivityTask, ActivityOutcome, Report]] = []
        self._sync_ended_lock = threading.Lock()
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
        self._partitions: dict[str, Any] = {}
        """Partition actors by name (those that linked to this worker)."""
        self._link, self._server = await worker_link.listen(self._find_partition, self._serve)
        threading.Thread(
            target=self._sync_thread, name=f"duraflow-{queue}-{index}", daemon=True
        ).start()

    async def link(self) -> dict[str, Any]:
        """Where a partition on this worker's node can link to it (``address`` None: nowhere,
        send attempts by Ray calls)."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "address": self._link}

    async def _find_partition(self, name: str) -> Any:
        found = self._partitions.get(name)
        if found is None:
            lookup = functools.partial(ray.get_actor, name, namespace=self._config.namespace)
            found = self._partitions[name] = await self._loop.run_in_executor(None, lookup)
        return found

    def _serve(self, jobs: list[Job], partition: Any, report: Report) -> None:
        """Start ``jobs`` (attempts of ``partition``); ``report`` each one's outcome."""
        for job in jobs:
            task = self._task(job, partition)
            if isinstance(task, ActivityOutcome):  # its activity cannot be found here
                report((_key(job.info), job.info.attempt, task))
            elif task.definition.is_async:
                running = self._loop.create_task(self._attempt(task, partition, job.timed))
                running.add_done_callback(lambda r, t=task: report(self._over(t, r)))
            else:
                self._sync_jobs.put((task, partition, job.timed, report))

    async def run(self, jobs: list[Job], partition: Any) -> list[Done]:
        """Run ``jobs`` (attempts of one partition); return their outcomes once all ended.

        While some still run, those that ended are pushed to the partition
        (``partition.pool_outcomes``) PUSH_AFTER_S after the first of them: a short attempt
        does not wait for a long one of its batch. Every push is answered before this
        returns, so the reply comes after them; what a push could not deliver is in it.
        """
        batch = _Batch(len(jobs), self._loop, partition)
        self._serve(jobs, partition, batch.over)
        return await batch.outcomes()

    def _task(self, job: Job, partition: Any) -> ActivityTask | ActivityOutcome:
        info = job.info
        key, number = _key(info), info.attempt
        if self._early_cancels.pop((key, number), False) is None:
            return CANCELLED
        try:
            definition = resolve_activity(info.activity, job.code_ref)
        except Exception as exc:  # reason: reported as the attempt's outcome
            return failure_of(exc)

        def send_heartbeat(details: bytes | None) -> None:
            ref = partition.heartbeat.remote(key, number, details)
            self._beats[(key, number)] = ref
            ref.future().add_done_callback(lambda f: self._heartbeat_answered(task, f))

        task = ActivityTask(definition, job.args, info, send_heartbeat)
        self._tasks[(key, number)] = task
        return task

    def _heartbeat_answered(self, task: ActivityTask, answer: concurrent.futures.Future) -> None:
        """The partition's answer to a heartbeat (from a Ray thread): False cancels."""
        with contextlib.suppress(Exception):  # a lost answer: the partition's timeouts decide
            if answer.result() is False:
                self._loop.call_soon_threadsafe(self._cancel, _key(task.info), task.info.attempt)

    async def _attempt(self, task: ActivityTask, partition: Any, timed: bool) -> ActivityOutcome:
        """One async attempt, on the actor's loop."""
        key, number = _key(task.info), task.info.attempt
        try:
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
        finally:
            beat = self._beats.pop((key, number), None)
            if beat is not None:  # the details of a last heartbeat reach the partition first
                with contextlib.suppress(Exception):
                    await beat

    def _sync_thread(self) -> None:
        """The worker's thread: runs the sync attempts, one at a time, as they come."""
        while True:
            task, partition, timed, report = self._sync_jobs.get()
            outcome: ActivityOutcome | None = None
            try:
                outcome = self._run_sync(task, partition, timed)
                beat = self._beats.pop((_key(task.info), task.info.attempt), None)
                if beat is not None:  # the details of a last heartbeat reach the partition first
                    with contextlib.suppress(Exception):
                        ray.get(beat)
            except ActivityCancelledError:  # a cancel that landed just after its attempt
                pass
            except BaseException as exc:  # reason: the attempt's outcome; the thread goes on
                outcome = outcome or failure_of(exc)
            finally:
                outcome = outcome or CANCELLED
                with self._sync_ended_lock:
                    first = not self._sync_ended
                    self._sync_ended.append((task, outcome, report))
                if first:  # one wake-up of the loop for all that end before it runs
                    self._loop.call_soon_threadsafe(self._report_sync_ended)

    def _report_sync_ended(self) -> None:
        with self._sync_ended_lock:
            ended, self._sync_ended = self._sync_ended, []
        for task, outcome, report in ended:
            report(self._ended(task, outcome))

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

    def _over(self, task: ActivityTask, running: asyncio.Task[ActivityOutcome]) -> Done:
        try:
            outcome = running.result()
        except BaseException as exc:  # reason: any failure is the attempt's outcome
            outcome = failure_of(exc)
        return self._ended(task, outcome)

    def _ended(self, task: ActivityTask, outcome: ActivityOutcome) -> Done:
        key, number = _key(task.info), task.info.attempt
        self._tasks.pop((key, number), None)
        self._ran += 1
        return (key, number, outcome)

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
        """PID, node, queue, index, attempts running now and queued here (not started yet), and
        attempts run so far."""
        return {
            "queue": self._queue,
            "index": self._index,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "running": len(self._async) + (self._sync_running is not None),
            "queued": len(self._tasks) - len(self._async) - (self._sync_running is not None),
            "link": self._link is not None,
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


_NAME = re.compile(r"worker-(?P<queue>.+)-(?P<index>\d+)")


def pool_reports(
    namespace: str, partitions: list[dict[str, Any]], timeout: float
) -> list[dict[str, Any]]:
    """Per queue with workers in ``namespace``: ``queue``, ``size`` (its named workers),
    ``alive`` (those that answered within ``timeout`` seconds), ``running`` (attempts they
    run now) and ``outstanding`` (attempts the partitions whose ``partitions`` status reports
    are given have sent to them or are about to send, not answered yet)."""
    names = pool_names(namespace)
    refs = {}
    for name in names:
        with contextlib.suppress(ValueError):  # gone meanwhile
            refs[name] = ray.get_actor(name, namespace=namespace).status.remote()
    ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    reports: dict[str, dict[str, Any]] = {}
    for name in names:
        queue = _NAME.fullmatch(name)["queue"]  # type: ignore[index]  # reason: pool_names matched it
        report = reports.setdefault(
            queue, {"queue": queue, "size": 0, "alive": 0, "running": 0, "outstanding": 0}
        )
        report["size"] += 1
        with contextlib.suppress(Exception):  # no answer: restarting, stalled or gone
            status = ray.get(refs[name], timeout=0)
            report["alive"] += 1
            report["running"] += status["running"]
    for partition in partitions:
        for queue, view in partition.get("pools", {}).items():
            if queue in reports:
                reports[queue]["outstanding"] += view["outstanding"]
    return [reports[queue] for queue in sorted(reports)]
