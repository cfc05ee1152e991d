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

Activities run on the worker pool of their queue, as Ray tasks, or in the actor's own process
(``actors/ray_tasks.py`` says which); ``actors/ray_cluster.py`` starts or joins the cluster and
``actors/ray_deployment.py`` finds, extends and stops a served deployment from outside it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from duraflow.actors import client_link
from duraflow.actors import messages as m
from duraflow.actors.client_link import LinkClosed, Links
from duraflow.actors.partition import Partition
from duraflow.actors.ray_cluster import first_line
from duraflow.actors.ray_tasks import RayExecutor
from duraflow.actors.router import partition_of
from duraflow.actors.worker_link import Done
from duraflow.actors.workers import start_pools
from duraflow.backoff import retry, retry_async
from duraflow.client.host import Host
from duraflow.config import EngineConfig
from duraflow.engine.definitions import (
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
CALL_RETRY_WINDOW_S = 60.0
"""How long a client keeps retrying a call while the partition's actor restarts."""
_RESTARTING = (ActorUnavailableError, ActorDiedError, RayActorError)
"""What a call to an actor raises while Ray restarts it (retried)."""


def actor_name(index: int) -> str:
    return f"partition-{index:04d}"


class _Failure(msgspec.Struct):
    """A duraflow error travelling back to the caller as a value, not a Ray task error."""

    error: Any


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
        self._links = client_link.Served()
        self._link, self._link_server = await client_link.serve(self._linked_call, self._links)

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

    async def _linked_call(self, kind: str, data: bytes) -> Any:
        """A call that came over a client's link (``actors/client_link.py``)."""
        method, arg = client_link.decoded(kind, data)
        handler = self._partition.handle if method == "call" else self._partition.handle_batch
        return await self._answer(handler, arg)

    async def link(self) -> dict[str, Any]:
        """Where a client on this actor's node can link to it (``address`` None: nowhere,
        call by Ray)."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "address": self._link}

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
            "client_links": {"open": self._links.links, "calls": self._links.calls},
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
            f"{first_line(exc)}"
        )

    try:
        return retry(once, retry_on=_RESTARTING, deadline=deadline, give_up=give_up)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{method}() did not answer within {timeout}s") from None


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


def wait_opened(handles: list[Any], timeout: float | None) -> list[dict[str, Any]]:
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
            f"partition {index} did not come back in time: {first_line(exc)}"
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
            f"the actor of partition {index} failed: {first_line(exc)}"
        ) from None


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
        self._links = Links(
            lambda partition: handles[partition].link.remote(),
            lambda: ray.get_runtime_context().get_node_id(),
        )
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
        for status in wait_opened(handles, timeout):
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

        linked = client_link.encoded(method, payload)

        def by_ray() -> Any:
            return getattr(self._handles[partition], method).remote(payload)

        async def call() -> Any:  # over the link to the partition, where there is one
            return await self._links.call(partition, linked, by_ray)

        reply = await retry_async(
            call,
            retry_on=(*_RESTARTING, LinkClosed),
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
                reports.append({"index": index, "error": first_line(exc)})
        return reports

    def stats(self) -> list[dict[str, int]]:
        return [
            {k: v for k, v in s.items() if k in ("open", "resident", "lsn", "turns", "turn_items")}
            for s in self.statuses()
        ]

    def close(self) -> None:
        """Close this client's links; actors live with the cluster or the driver."""
        self._links.close()
