"""Ray Host: one named async actor per partition; activities on worker pools or as Ray tasks.

Each partition is hosted by a Ray actor named ``partition-NNNN`` in the deployment's namespace
(``get_if_exists``, ``max_restarts=-1``). The actor opens its partition in ``__init__``, so a
restarted actor recovers from its SQLite file at once, without any client.

Fencing (``storage/fencing.py``; Ray gives none): the partition file's lock keeps a second
actor out while its owner lives, and the actor keeps trying until the old owner is gone. One
exception: when the lock is still held, TAKEOVER_AFTER_S after the actor started, by an
earlier incarnation of this same actor (the lock file names the holder's actor ID), Ray has
restarted this actor because it holds that incarnation dead, though it is not (its node was cut
off, its process frozen): the actor then breaks the lock and claims a newer epoch. The old
incarnation, should it wake, finds that epoch at its next write turn, writes nothing and exits
its process. A frozen process on a live node is not replaced by Ray at all (it stays ALIVE to
Ray): kill it, and Ray's restart opens the file at once.

Activities run on the worker pool of their queue (``actors/workers.py``; the default pool
when they name none); those that ask for ``num_cpus``, ``num_gpus``, ``resources`` or a
``runtime_env`` of their own run as Ray tasks (``max_retries=0``: retrying is the engine's
job); ``inline=True`` activities run in the actor's own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from duraflow.actors import messages as m
from duraflow.actors.partition import Partition
from duraflow.actors.pool_dispatch import PoolDispatcher
from duraflow.actors.router import partition_of
from duraflow.actors.worker_link import Done
from duraflow.actors.workers import pool_names, start_pool, start_pools
from duraflow.backoff import retry, retry_async
from duraflow.client.host import Host
from duraflow.config import EngineConfig, WorkerPool
from duraflow.engine.activities import (
    ActivityInfo,
    ActivityOutcome,
    ActivityTask,
    InlineExecutor,
    failure_of,
    run_async_attempt,
    run_sync_attempt,
)
from duraflow.engine.definitions import (
    ActivityDefinition,
    main_module_definitions,
    register_definitions,
    set_process_role,
)
from duraflow.errors import (
    ConfigurationError,
    DuraflowError,
    PartitionFenced,
    PartitionUnavailable,
    WorkflowClosed,
)
from duraflow.storage import fencing
from duraflow.storage.layout import partition_path

log = logging.getLogger("duraflow.ray")

OPEN_RETRY_S = 0.5
"""How often a new partition actor retries opening a file still locked by an old owner."""
TAKEOVER_AFTER_S = 3.0
"""How long a restarted partition actor waits for an earlier incarnation of itself to release
the file's lock before it takes the file over (a dying process releases it at once)."""
FENCED_EXIT_DELAY_S = 0.5
"""How long a fenced partition actor lets its last replies go before its process exits."""
FENCED_CALL_WAIT_S = 10.0
"""How long a call to a partition actor whose file another live process still holds waits
before it fails with PartitionUnavailable (retriable) instead of hanging."""
_PARTITION_NAME = re.compile(r"partition-\d{4,}")
JOIN_PROBE_TIMEOUT_S = 5.0
"""How long joining a cluster waits for its address to accept a TCP connection."""
CALL_RETRY_WINDOW_S = 60.0
"""How long a client keeps retrying a call while the partition's actor restarts."""
_RESTARTING = (ActorUnavailableError, ActorDiedError, RayActorError)
"""What a call to an actor raises while Ray restarts it (retried)."""


def actor_name(index: int) -> str:
    return f"partition-{index:04d}"


class _Failure(msgspec.Struct):
    """A duraflow error travelling back to the caller as a value, not a Ray task error."""

    error: Any


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
        return ActivityOutcome(
            ok=False, error_type="ActivityCancelledError", error_message="attempt cancelled"
        )
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
            outcome = ActivityOutcome(
                ok=False, error_type="ActivityCancelledError", error_message="attempt cancelled"
            )
        except ray.exceptions.RayTaskError as exc:
            outcome = failure_of(exc.cause if exc.cause is not None else exc)
        except Exception as exc:  # reason: a lost worker is a failed attempt
            outcome = failure_of(exc)
        done(outcome)

    def close(self) -> None:
        self._inline.close()
        self._pools.close()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=100_000)
class PartitionActor:
    """The Ray actor that hosts one Partition. Opens it (recovers) as soon as it starts."""

    async def __init__(self, index: int, config: bytes, shipped: bytes | None = None) -> None:
        self._started_at = time.time()
        self._config = EngineConfig.decode(config)
        set_process_role(f"the Ray partition actor {index} of namespace {self._config.namespace!r}")
        for module in self._config.app_modules:
            __import__(module)
        if shipped is not None:
            register_definitions(ray.cloudpickle.loads(shipped))  # type: ignore[attr-defined]  # reason: ray vendors cloudpickle
        self._index = index
        self._peers: dict[int, Any] = {}
        loop = asyncio.get_running_loop()
        context = ray.get_runtime_context()
        me = context.current_actor
        self._owner = f"Ray actor {context.get_actor_id()}"
        fencing.set_owner(self._owner)  # the lock file names us; our restarts keep the ID
        self._executor = RayExecutor(
            loop, me, actor_name(index), self._config.activity_threads, self._config.namespace
        )
        self._path = partition_path(Path(self._config.data_dir), index)
        self._partition = Partition(
            index, self._path, self._config, executor=self._executor, send=self._send
        )
        self._locked_out: PartitionUnavailable | None = None
        self._exiting: asyncio.Task[None] | None = None
        self._init_s = time.time() - self._started_at
        self._opened_at: float | None = None
        self._opened = loop.create_task(self._open())

    async def _open(self) -> None:
        while True:
            try:
                with fencing.fenced_callback(self._fenced_out):
                    await self._partition.open()
                self._opened_at = time.time()
                return
            except PartitionUnavailable as exc:
                # Fencing: the old owner still holds the file. Wait for it to go, or take
                # the file over from an earlier incarnation of ours that Ray holds dead.
                if self._take_over():
                    continue
                log.warning("partition %d waits for its file: %s", self._index, exc)
                self._locked_out = exc
                await asyncio.sleep(OPEN_RETRY_S)

    def _take_over(self) -> bool:
        """Break the file's lock if an earlier incarnation of this actor has held it for
        TAKEOVER_AFTER_S since this one started (see the module docstring)."""
        holder = fencing.read_holder(self._path)
        waited = time.time() - self._started_at
        if holder is None or holder.owner != self._owner or waited < TAKEOVER_AFTER_S:
            return False
        broken = fencing.break_lock(self._path)
        if broken is not None:
            log.warning(
                "partition %d: taking its file over from %s, an earlier incarnation of this "
                "actor that Ray restarted but that still holds the file (frozen or cut off?)",
                self._index,
                broken,
            )
        return True

    def _fenced_out(self, error: PartitionFenced) -> None:
        """A newer owner took the file over: this is a stale incarnation. Close the partition
        (it writes nothing more) and end the process."""
        log.error("partition %d stops: %s", self._index, error)
        self._exiting = asyncio.get_running_loop().create_task(self._exit_fenced())

    async def _exit_fenced(self) -> None:
        try:
            await self._partition.close()
            await asyncio.sleep(FENCED_EXIT_DELAY_S)
        finally:
            os._exit(1)

    async def call(self, request: Any) -> Any:
        """One request to the partition; duraflow errors come back as values."""
        return await self._answer(self._partition.handle, request)

    async def call_batch(self, payload: bytes) -> Any:
        """Requests encoded by ``messages.encode_requests``, handled in one turn: their
        replies in order, each failure as a duraflow error value."""
        return await self._answer(self._partition.handle_batch, payload)

    async def _answer(self, handler: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
        """``handler(arg)`` once the partition is open; a duraflow error as a value."""
        failure = await self._wait_opened()
        if failure is not None:
            return failure
        try:
            return await handler(arg)
        except DuraflowError as exc:
            return _Failure(exc)

    async def _wait_opened(self) -> _Failure | None:
        if not self._opened.done():
            await asyncio.wait([self._opened], timeout=FENCED_CALL_WAIT_S)
            if not self._opened.done() and self._locked_out is not None:
                return _Failure(
                    PartitionUnavailable(
                        f"partition {self._index} cannot open its file yet: {self._locked_out} "
                        "(an old owner still runs); retry later"
                    )
                )
        await self._opened
        return None

    async def heartbeat(
        self, key: tuple[str, str, int], number: int, details: bytes | None
    ) -> bool:
        """A heartbeat from an activity task; False when that attempt is no longer wanted."""
        await self._opened
        return self._partition.heartbeat(key, number, details)

    async def pool_outcomes(self, outcomes: list[Done]) -> None:
        """Outcomes of activity attempts from a worker of a pool (see ``actors/workers.py``)."""
        self._executor.pool_outcomes(outcomes)

    async def shutdown(self) -> None:
        """Close the partition (its file and lock) before the actor is killed."""
        await self._opened
        await self._partition.close()
        self._executor.close()

    async def status(self) -> dict[str, Any]:
        """PID, node, partition count, this partition's run counts, the deployment's config
        as :meth:`EngineConfig.public` shows it (no credentials), and when this incarnation
        started: ``started`` has ``at`` (``__init__`` entered, epoch seconds), ``init_s``
        (app imports and set-up), ``opened_at``, and the partition's ``store_s``, ``load_s``,
        ``recover_s`` and ``recovered_at`` (see ``Partition.recovery``)."""
        await self._opened
        return {
            "index": self._index,
            "pid": os.getpid(),
            "started": {
                "at": self._started_at,
                "init_s": self._init_s,
                "opened_at": self._opened_at,
                **self._partition.recovery,
            },
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "partitions": self._config.partitions,
            "data_dir": self._config.data_dir,
            "app_modules": list(self._config.app_modules),
            "config": self._partition.config.public(),
            "incarnation": self._partition.incarnation,
            "pools": self._executor.pool_status(),
            **self._partition.stats(),
        }

    async def _send(self, workflow_id: str, request: Any) -> Any:
        index = partition_of(workflow_id, self._config.partitions)
        peer = self._peers.get(index)
        if peer is None:
            peer = ray.get_actor(actor_name(index), namespace=self._config.namespace)
            self._peers[index] = peer
        reply = await peer.call.remote(request)
        if isinstance(reply, _Failure):
            raise reply.error
        return reply


CONSUMER_NAME = "consumer"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=100)
class ConsumerActor:
    """The archive's stream consumer as a Ray actor; restarts resume from the archive."""

    async def __init__(self, config: bytes) -> None:
        # Imported here, not with the module: pyarrow, pyiceberg and DuckDB cost a partition
        # actor (which shares this module) about a second on every restart.
        from duraflow.cdc.consumer import Consumer

        self._config = EngineConfig.decode(config)
        handles = [
            ray.get_actor(actor_name(i), namespace=self._config.namespace)
            for i in range(self._config.partitions)
        ]
        self._consumer = Consumer(RayHost(handles), self._config)
        self._task = asyncio.get_running_loop().create_task(self._consumer.run())

    async def status(self) -> dict[str, Any]:
        """PID, node, the consumer's counters and offsets, and the deployment's config as
        :meth:`EngineConfig.public` shows it (no credentials)."""
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "running": not self._task.done(),
            "config": self._consumer.config.public(),
            **self._consumer.status(),
        }

    async def caught_up(self, timeout: float) -> bool:
        return await self._consumer.caught_up(timeout)

    async def commit(self, timeout: float | None = None) -> dict[int, int]:
        return await self._consumer.commit(timeout)

    async def maintain(self, keep_snapshots_s: float) -> dict[str, Any]:
        return await self._consumer.maintain(keep_snapshots_s)

    async def shutdown(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


def call_actor(actor: Any, method: str, *args: Any, timeout: float | None = None) -> Any:
    """Call ``actor.method(*args)`` and wait for the result (for callers that do not import
    ray); retried while the actor restarts (for up to CALL_RETRY_WINDOW_S without a
    ``timeout``), so ``method`` must be idempotent.

    Raises:
        TimeoutError: no answer within ``timeout`` seconds, or the actor did not come back.
    """
    window = CALL_RETRY_WINDOW_S if timeout is None else timeout
    deadline = time.monotonic() + window

    def once() -> Any:
        remaining = None if timeout is None else max(0.0, deadline - time.monotonic())
        return ray.get(getattr(actor, method).remote(*args), timeout=remaining)

    def give_up(exc: Exception) -> TimeoutError:
        return TimeoutError(
            f"{method}() failed and the actor did not come back within {window:g}s: "
            f"{_first_line(exc)}"
        )

    try:
        return retry(once, retry_on=_RESTARTING, deadline=deadline, give_up=give_up)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{method}() did not answer within {timeout}s") from None


def start_consumer(config: EngineConfig, *, detached: bool) -> Any:
    """Create (or find) the deployment's consumer actor."""
    options: dict[str, Any] = {
        "name": CONSUMER_NAME,
        "namespace": config.namespace,
        "get_if_exists": True,
    }
    if detached:
        options["lifetime"] = "detached"
    return ConsumerActor.options(**options).remote(config.encode())


def start_or_join_ray(address: str | None, namespace: str) -> bool:
    """Join the Ray cluster at ``address`` (or start a local one) unless already connected.

    Returns:
        True if this call started a new local Ray (its owner should shut it down).
    """
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(namespace=namespace, include_dashboard=False, log_to_driver=False)
        return True
    ray.init(address=address, namespace=namespace, log_to_driver=False)
    return False


def join_cluster(address: str, namespace: str) -> None:
    """Join the running Ray cluster at ``address`` as a driver, unless connected already.

    Raises:
        ConfigurationError: it cannot be joined; the message says why (token auth included).
    """
    if ray.is_initialized():
        return
    _probe(address)
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    except Exception as exc:  # reason: ray.init raises ConnectionError, RuntimeError, ...
        raise ConfigurationError(_join_failure(address, exc)) from None


def _probe(address: str) -> None:
    """Fail fast when nothing listens at the cluster's address: ray.init would retry for
    minutes (a typo, a stopped cluster, a stale address file left by a crashed one)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        target = canonicalize_bootstrap_address(address)  # "auto": RAY_ADDRESS or the file
        host, _, port = (target or "").rpartition(":")
        port_number = int(port)
    except Exception:  # reason: private API, ray:// or no address found: ray.init will say
        return
    try:
        socket.create_connection((host.strip("[]"), port_number), JOIN_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigurationError(
            f"no Ray cluster answers at {target} (from address {address!r}): {exc}. Is it "
            "running? 'ray start --head' starts one"
        ) from None


def _join_failure(address: str, exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(cause):
            return (
                f"the Ray cluster at {address} refused the connection (token authentication): "
                "set RAY_AUTH_MODE=token and give this process the cluster's token "
                "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
            )
        cause = cause.__cause__ or cause.__context__
    return (
        f"cannot join the Ray cluster at {address!r}: {_first_line(exc)} (is it running? "
        "'ray start --head' starts one; use address 'auto' on one of its nodes, or the head's "
        "host:port)"
    )


def check_same_deployment(status: dict[str, Any], config: EngineConfig) -> None:
    """Check that the partition whose ``status`` is given serves ``config``: an actor found
    by name keeps the config it was created with, and would silently ignore another.

    Raises:
        ConfigurationError: it serves another data directory, or other settings (named).
    """
    namespace = config.namespace
    if Path(status["data_dir"]) != Path(config.data_dir):
        raise ConfigurationError(
            f"Ray namespace {namespace!r} already serves {status['data_dir']}, not "
            f"{config.data_dir}: serve it in another namespace (--namespace), or stop that one "
            f"first (duraflow stop --namespace {namespace})"
        )
    running = EngineConfig.from_public(status["config"])
    differences = running.differences(config)
    if differences:
        shown = ", ".join(f"{k}={old!r}, not {new!r}" for k, (old, new) in differences.items())
        raise ConfigurationError(
            f"Ray namespace {namespace!r} already serves {config.data_dir} with other "
            f"settings ({shown}): stop it first (duraflow stop --namespace {namespace}), "
            "then serve again"
        )


def running_status(namespace: str, timeout: float) -> dict[str, Any] | None:
    """The status of partition 0 of the deployment served in ``namespace`` (None if none)."""
    try:
        first = ray.get_actor(actor_name(0), namespace=namespace)
    except ValueError:
        return None
    return _wait_opened([first], timeout)[0]


def stop_partition_actors(namespace: str, timeout: float) -> list[int]:
    """Close every partition actor of ``namespace`` (files and locks released), then kill it
    for good. Returns the indexes of the partitions stopped.

    Raises:
        PartitionUnavailable: no partition actor in ``namespace``.
    """
    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and _PARTITION_NAME.fullmatch(a["name"])
    )
    if not names:
        raise PartitionUnavailable(f"no duraflow deployment in Ray namespace {namespace!r}")
    handles = []
    for name in names:
        with contextlib.suppress(ValueError):  # died meanwhile
            handles.append(ray.get_actor(name, namespace=namespace))
    with contextlib.suppress(ValueError):  # the archive's consumer, if it runs
        handles.insert(0, ray.get_actor(CONSUMER_NAME, namespace=namespace))
    with contextlib.suppress(Exception):  # an actor may be restarting or gone
        ray.get([h.shutdown.remote() for h in handles], timeout=timeout)
    for handle in handles:
        ray.kill(handle, no_restart=True)
    stop_workers(namespace)
    return [int(name.removeprefix("partition-")) for name in names]


def start_worker_pool(
    config: EngineConfig, queue: str, pool: WorkerPool, timeout: float
) -> list[dict[str, Any]]:
    """Create (or find) the detached workers of ``queue`` and return their statuses.

    Raises:
        TimeoutError: a worker did not answer within ``timeout`` seconds.
    """
    handles = start_pool(config, queue, pool, detached=True)
    try:
        return list(ray.get([h.status.remote() for h in handles], timeout=timeout))
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            f"the workers of queue {queue!r} did not start within {timeout:g}s: does a node "
            f"offer what each asks for ({pool.ray_options()})?"
        ) from None


def stop_workers(namespace: str, queue: str | None = None) -> list[str]:
    """Kill the workers of ``queue`` (of every pool when None) in ``namespace``; their names."""
    names = pool_names(namespace, queue)
    for name in names:
        with contextlib.suppress(ValueError):  # died meanwhile
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    return names


def _wait_opened(handles: list[Any], timeout: float | None) -> list[dict[str, Any]]:
    """The statuses of ``handles`` (partitions 0, 1, ...) once each opened its file."""
    deadline = None if timeout is None else time.monotonic() + timeout
    return [_status_of(handle, index, deadline) for index, handle in enumerate(handles)]


def _status_of(handle: Any, index: int, deadline: float | None) -> dict[str, Any]:
    """``handle.status()``, retried while the actor restarts, until ``deadline``."""

    def once() -> dict[str, Any]:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        status: dict[str, Any] = ray.get(handle.status.remote(), timeout=remaining)
        return status

    def give_up(exc: Exception) -> PartitionUnavailable:
        return PartitionUnavailable(
            f"partition {index} did not come back in time: {_first_line(exc)}"
        )

    try:  # restarting (ActorUnavailableError): calls queue again after ~0.5 s
        return retry(once, retry_on=(ActorUnavailableError,), deadline=deadline, give_up=give_up)
    except ray.exceptions.GetTimeoutError:
        raise PartitionUnavailable(
            f"partition {index} did not open in time: another process may hold its file, "
            "or no node offers the resources its actor asks for (the actor's log in the "
            "Ray session's logs folder says more)"
        ) from None
    except RayActorError as exc:  # not restarting: failed
        if getattr(exc, "actor_init_failed", False):  # the traceback's last line says why
            why = str(exc).strip().splitlines()[-1]
            raise PartitionUnavailable(
                f"the actor of partition {index} failed to start: {why} (its log in the "
                "Ray session's logs folder has the traceback)"
            ) from None
        raise PartitionUnavailable(
            f"the actor of partition {index} failed: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reply(request: Any, reply: Any, retried: bool) -> Any:
    """``reply`` to ``request``, raising the error it carries."""
    error = reply.error if isinstance(reply, _Failure) else reply
    if not isinstance(error, BaseException):
        return reply
    if retried and isinstance(error, WorkflowClosed) and isinstance(request, m.Terminate):
        return None  # the first, lost attempt terminated it
    raise error


class RayHost(Host):
    """The client side of Ray hosting: actor handles, with retries across actor restarts."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles
        self.partitions = len(handles)
        self.workers: list[Any] = []
        """The worker actors this host created or found (``create`` only)."""

    @classmethod
    def create(
        cls,
        config: EngineConfig,
        *,
        detached: bool = False,
        shipped: bytes | None = None,
        timeout: float | None = None,
    ) -> RayHost:
        """Create (or find) the partition actors of a deployment and wait until they serve.

        Raises:
            ConfigurationError: the namespace already serves another data directory, or the
                same one with other settings.
            PartitionUnavailable: a partition did not open within ``timeout`` seconds, or its
                actor failed to start (an app module it cannot import, for one).
        """
        encoded = config.encode()
        options: dict[str, Any] = {"namespace": config.namespace, "get_if_exists": True}
        if detached:
            options["lifetime"] = "detached"
        if config.partition_resources:
            options["resources"] = dict(config.partition_resources)
        handles = [
            PartitionActor.options(name=actor_name(i), **options).remote(i, encoded, shipped)
            for i in range(config.partitions)
        ]
        for status in _wait_opened(handles, timeout):
            check_same_deployment(status, config)
        host = cls(handles)
        host.workers = start_pools(config, detached=detached, shipped=shipped)
        return host

    @classmethod
    def connect(cls, namespace: str) -> RayHost:
        """Find the partition actors of a running deployment by name."""
        try:
            first = ray.get_actor(actor_name(0), namespace=namespace)
        except ValueError:
            raise PartitionUnavailable(
                f"no duraflow deployment in Ray namespace {namespace!r}: start one with "
                "'duraflow serve' (or df.Engine(runtime='ray'))"
            ) from None
        deadline = time.monotonic() + CALL_RETRY_WINDOW_S
        partitions = _status_of(first, 0, deadline)["partitions"]
        handles = [first] + [
            ray.get_actor(actor_name(i), namespace=namespace) for i in range(1, partitions)
        ]
        return cls(handles)

    async def call(self, partition: int, request: Any) -> Any:
        """Send ``request``; retried while the actor restarts (every request is idempotent)."""
        reply, retried = await self._retrying(partition, "call", request)
        return _reply(request, reply, retried)

    async def call_batch(self, partition: int, requests: list[Any]) -> list[Any]:
        """Send ``requests`` as one call for one turn; replies in order, an error value in
        place of each that failed. Retried like :meth:`call`."""
        replies, retried = await self._retrying(
            partition, "call_batch", m.encode_requests(requests)
        )
        if isinstance(replies, _Failure):
            raise replies.error
        out = []
        for request, reply in zip(requests, replies, strict=True):
            try:
                out.append(_reply(request, reply, retried))
            except Exception as exc:  # reason: each failure is returned in its request's place
                out.append(exc)
        return out

    async def _retrying(self, partition: int, method: str, payload: Any) -> tuple[Any, bool]:
        retried = False

        def note(exc: Exception) -> None:
            nonlocal retried
            retried = True

        def give_up(exc: Exception) -> PartitionUnavailable:
            return PartitionUnavailable(
                f"partition {partition} did not come back within {CALL_RETRY_WINDOW_S:.0f}s: {exc}"
            )

        reply = await retry_async(
            lambda: getattr(self._handles[partition], method).remote(payload),
            retry_on=_RESTARTING,
            deadline=time.monotonic() + CALL_RETRY_WINDOW_S,
            give_up=give_up,
            on_retry=note,
        )
        return reply, retried

    def statuses(self) -> list[dict[str, Any]]:
        return list(ray.get([h.status.remote() for h in self._handles]))

    def status_reports(self, timeout: float) -> list[dict[str, Any]]:
        """Each partition's status, or ``{"index": i, "error": why}`` for a partition that did
        not answer within ``timeout`` seconds (restarting, stalled, or gone)."""
        deadline = time.monotonic() + timeout
        refs = [h.status.remote() for h in self._handles]
        ray.wait(refs, num_returns=len(refs), timeout=timeout)
        reports: list[dict[str, Any]] = []
        for index, ref in enumerate(refs):
            try:
                reports.append(ray.get(ref, timeout=0))
            except ray.exceptions.GetTimeoutError:
                reports.append({"index": index, "error": f"no answer within {timeout:g}s"})
            except ActorUnavailableError:  # restarting: ask again until the deadline
                try:
                    reports.append(_status_of(self._handles[index], index, deadline))
                except PartitionUnavailable as exc:
                    reports.append({"index": index, "error": str(exc)})
            except ray.exceptions.RayError as exc:
                reports.append({"index": index, "error": _first_line(exc)})
        return reports

    def stats(self) -> list[dict[str, int]]:
        return [
            {k: v for k, v in s.items() if k in ("open", "resident", "lsn", "turns", "turn_items")}
            for s in self.statuses()
        ]

    def close(self) -> None:
        """Nothing to stop on the client side; actors live with the cluster or the driver."""


class EngineOnRay(RayHost):
    """A RayHost that owns what it started: its partition actors and, maybe, Ray itself."""

    def __init__(
        self, handles: list[Any], created: bool, started_ray: bool, consumer: Any = None
    ) -> None:
        super().__init__(handles)
        self._created = created
        self._started_ray = started_ray
        self.consumer = consumer

    @classmethod
    def start(cls, config: EngineConfig, address: str | None) -> EngineOnRay:
        """Start or join Ray, then create (or find, if served already with the same config)
        the partition actors and the archive's consumer actor."""
        started_ray = start_or_join_ray(address, config.namespace)
        try:
            existing = ray.get_actor(actor_name(0), namespace=config.namespace)
        except ValueError:
            existing = None
        shipped_defs = main_module_definitions()
        shipped = ray.cloudpickle.dumps(shipped_defs) if shipped_defs else None  # type: ignore[attr-defined]  # reason: ray vendors cloudpickle
        host = RayHost.create(config, shipped=shipped)
        consumer = start_consumer(config, detached=False) if config.archive else None
        engine = cls(host._handles, existing is None, started_ray, consumer)
        engine.workers = host.workers
        return engine

    def close(self) -> None:
        if self._created:
            # All at once: a consumer actor still starting (a new worker process, a second or
            # so) must not keep the partitions running, their timers firing, meanwhile.
            owned = [*self._handles, *([self.consumer] if self.consumer is not None else [])]
            with contextlib.suppress(Exception):  # an actor may be restarting or gone
                ray.get([h.shutdown.remote() for h in owned], timeout=30)
            for handle in [*owned, *self.workers]:
                ray.kill(handle, no_restart=True)
        if self._started_ray:
            ray.shutdown()
