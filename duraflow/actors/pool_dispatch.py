"""The partition's side of worker pools: sends its pool attempts to the workers, in batches.

The attempts a turn dispatches are buffered per worker (the one of their queue with the
fewest outstanding attempts) and sent once per loop iteration: over the worker's link
(``actors/worker_link.py``, a Unix socket, when the worker runs on this node and offers one)
or as one plain Ray actor call (``WorkerActor.run``; a Ray streaming generator cost about
twice as much per call here). Over a link, outcomes come back as they end. By a Ray call,
the reply carries the batch's outcomes, and while some attempts of the batch still run the
worker pushes those that ended (``PartitionActor.pool_outcomes``), so a short attempt does
not wait for a long one of its batch.

When the worker dies its link closes or the call fails, and every attempt it held that has
no outcome yet fails with ``WorkerLost`` (retryable): the machine retries it under its
policy, and ignores the outcome of an attempt that is no longer the running one, so nothing
is recorded twice. An outcome that arrives after its attempt was reported lost is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from duraflow.actors.ray_cluster import first_line
from duraflow.actors.worker_link import Done, Job, Key, Link
from duraflow.actors.workers import pool_names
from duraflow.config import DEFAULT_QUEUE
from duraflow.engine.activities import CANCELLED, ActivityOutcome, ActivityTask, failure_of

log = logging.getLogger("duraflow.workers")

DISCOVER_EVERY_S = 1.0
"""How often a partition looks again for the workers of a queue it found none of."""
REFRESH_EVERY_S = 5.0
"""How often a partition looks, off its loop, for workers added to a queue it knows (``duraflow
worker --size`` larger than before)."""
LINK_RETRY_S = 1.0
"""How long a partition waits before it tries again to link to a worker it could not link
to (its attempts go by Ray calls meanwhile)."""
LOST = "WorkerLost"
"""The error type of an attempt whose worker died (retried under the activity's policy)."""
NO_WORKERS = "NoWorkers"
"""The error type of an attempt whose queue no worker serves yet (retried likewise)."""

Done_ = Callable[[ActivityOutcome], None]
Entry = tuple[ActivityTask, Done_]


class _Worker:
    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle
        self.outstanding = 0
        self.pending: list[Entry] = []
        self.link: Link | None = None
        self.linking = False
        self.link_tried_at = -LINK_RETRY_S
        self.by_ray = False
        """The worker offers no link to this partition (another node, or none at all)."""


class PoolDispatcher:
    """Sends a partition's pool attempts to the workers of their queues, in batches.

    Args:
        loop: the partition actor's event loop.
        partition: the partition actor's own handle (workers send heartbeats to it).
        name: the partition actor's name (a worker linked to it finds it by that name).
        namespace: the deployment's Ray namespace (where the workers are named).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, partition: Any, name: str, namespace: str
    ) -> None:
        self._loop = loop
        self._partition = partition
        self._name = name
        self._namespace = namespace
        self._node_id = ray.get_runtime_context().get_node_id()
        self._pools: dict[str, list[_Worker]] = {}
        self._looked_at: dict[str, float] = {}
        self._refreshing: set[str] = set()
        self._flushing = False
        self._waiting: dict[tuple[Key, int], tuple[_Worker, Done_, Link | None]] = {}
        """The attempts sent and not answered yet: the worker holding each, and the link it
        went over (None: a Ray call)."""

    def start(self, task: ActivityTask, done: Done_) -> None:
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

    def status(self) -> dict[str, dict[str, int]]:
        """Per queue: the workers this partition knows, how many it reaches over a link, and
        its attempts they hold (sent or about to be)."""
        return {
            queue: {
                "workers": len(workers),
                "linked": sum(w.link is not None and w.link.open for w in workers),
                "outstanding": sum(w.outstanding for w in workers),
            }
            for queue, workers in self._pools.items()
        }

    def close(self) -> None:
        for workers in self._pools.values():
            for worker in workers:
                if worker.link is not None:
                    worker.link.close()

    def _workers(self, queue: str) -> list[_Worker]:
        """The workers of ``queue`` this partition knows: looked up at once the first time (and
        every DISCOVER_EVERY_S while there are none), then refreshed off the loop every
        REFRESH_EVERY_S, so that workers added to the pool take attempts too."""
        workers = self._pools.get(queue)
        now = time.monotonic()
        since = now - self._looked_at.get(queue, -DISCOVER_EVERY_S)
        if workers:
            if since >= REFRESH_EVERY_S and queue not in self._refreshing:
                self._looked_at[queue] = now
                self._refreshing.add(queue)
                self._loop.create_task(self._refresh(queue))
            return workers
        if since < DISCOVER_EVERY_S:
            return []
        self._looked_at[queue] = now
        self._pools[queue] = []
        self._add(queue, self._find(queue, set()))
        return self._pools[queue]

    def _find(self, queue: str, known: set[str]) -> list[tuple[str, Any]]:
        """The named workers of ``queue`` not in ``known`` (blocking Ray calls)."""
        found = []
        for name in pool_names(self._namespace, queue):
            if name not in known:
                with contextlib.suppress(ValueError):  # gone meanwhile
                    found.append((name, ray.get_actor(name, namespace=self._namespace)))
        return found

    async def _refresh(self, queue: str) -> None:
        try:
            known = {worker.name for worker in self._pools.get(queue, [])}
            found = await self._loop.run_in_executor(None, self._find, queue, known)
            self._add(queue, found)
        except Exception as exc:  # reason: looked for again at the next refresh
            log.info("partition %s: no refresh of queue %r: %s", self._name, queue, exc)
        finally:
            self._refreshing.discard(queue)

    def _add(self, queue: str, found: list[tuple[str, Any]]) -> None:
        workers = self._pools.setdefault(queue, [])
        known = {worker.name for worker in workers}
        for name, handle in found:
            if name not in known:
                worker = _Worker(name, handle)
                workers.append(worker)
                self._start_linking(worker)  # its first batches go by Ray calls until linked

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

    def _cancel(self, worker: _Worker, entry: Entry) -> None:
        if entry in worker.pending:  # not sent yet
            worker.pending.remove(entry)
            worker.outstanding -= 1
            entry[1](CANCELLED)
            return
        info = entry[0].info
        worker.handle.cancel.remote((info.workflow_id, info.run_id, info.seq), info.attempt)

    # -- sending -------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flushing = False
        for workers in self._pools.values():
            for worker in workers:
                if worker.pending:
                    batch, worker.pending = worker.pending, []
                    self._send(worker, batch)

    def _send(self, worker: _Worker, batch: list[Entry]) -> None:
        link = worker.link if worker.link is not None and worker.link.open else None
        jobs = []
        for task, done in batch:
            info = task.info
            self._waiting[((info.workflow_id, info.run_id, info.seq), info.attempt)] = (
                worker,
                done,
                link,
            )
            jobs.append(Job(info, task.definition.code_ref, task.args, task.timed))
        if link is not None:
            link.send(jobs)
            return
        self._loop.create_task(self._call(worker, jobs))
        retry_at = worker.link_tried_at + LINK_RETRY_S
        if not (worker.by_ray or worker.linking) and time.monotonic() >= retry_at:
            self._start_linking(worker)

    async def _call(self, worker: _Worker, jobs: list[Job]) -> None:
        """Send ``jobs`` as one Ray call; the attempts are lost if it fails."""
        try:
            self.delivered(await worker.handle.run.remote(jobs, self._partition))
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            lost = ActivityOutcome(
                ok=False, error_type=LOST, error_message=f"the worker died: {first_line(exc)}"
            )
            if isinstance(exc, ActorDiedError) and not _restarts(exc):
                self._forget(worker)
            self._lose(worker, None, lost, jobs)
            return
        except Exception as exc:  # reason: any other failure fails the attempts it held
            self._lose(worker, None, failure_of(exc), jobs)
            return
        self._lose(worker, None, _no_outcome(), jobs)  # none: every outcome came back

    def _start_linking(self, worker: _Worker) -> None:
        worker.linking = True
        worker.link_tried_at = time.monotonic()
        self._loop.create_task(self._link(worker))

    async def _link(self, worker: _Worker) -> None:
        """Link to ``worker`` if it runs on this node and offers a link."""
        try:
            offer = await worker.handle.link.remote()
            if offer["address"] is None or offer["node_id"] != self._node_id:
                worker.by_ray = True
                return
            worker.link = await Link.connect(
                offer["address"],
                self._name,
                self.delivered,
                lambda link, why: self._link_closed(worker, link, why),
            )
        except Exception as exc:  # reason: no link yet; Ray calls meanwhile, retried later
            log.info("partition %s: no link to a worker yet: %s", self._name, first_line(exc))
        finally:
            worker.linking = False

    def _link_closed(self, worker: _Worker, link: Link, why: BaseException | None) -> None:
        if worker.link is link:
            worker.link = None
        error = f"the worker's link closed (it died?){f': {why}' if why else ''}"
        self._lose(worker, link, ActivityOutcome(ok=False, error_type=LOST, error_message=error))

    # -- outcomes ------------------------------------------------------------------------------

    def delivered(self, outcomes: list[Done]) -> None:
        """Outcomes from a worker (over a link, in a call's reply, or pushed while its batch
        ran); those of attempts no longer awaited (reported lost already) are dropped."""
        for key, number, outcome in outcomes:
            entry = self._waiting.pop((tuple(key), number), None)  # type: ignore[arg-type]  # reason: Ray may send a list
            if entry is not None:
                entry[0].outstanding -= 1
                entry[1](outcome)

    def _lose(
        self,
        worker: _Worker,
        via: Link | None,
        outcome: ActivityOutcome,
        jobs: list[Job] | None = None,
    ) -> None:
        """Fail the attempts ``worker`` holds that went ``via`` a link (None: a Ray call, of
        those in ``jobs``) and have no outcome yet."""
        if jobs is None:
            keys = [k for k, (w, _, v) in self._waiting.items() if w is worker and v is via]
        else:
            keys = [(_key_of(job), job.info.attempt) for job in jobs]
        for key in keys:
            entry = self._waiting.get(key)
            if entry is not None and entry[0] is worker and entry[2] is via:
                del self._waiting[key]
                worker.outstanding -= 1
                entry[1](outcome)

    def _forget(self, worker: _Worker) -> None:
        """A worker killed for good (its pool stopped): look for the pool again."""
        if worker.link is not None:
            worker.link.close()
        for queue, workers in self._pools.items():
            if worker in workers:
                workers.remove(worker)
                if not workers:
                    self._looked_at.pop(queue, None)


def _key_of(job: Job) -> Key:
    return (job.info.workflow_id, job.info.run_id, job.info.seq)


def _no_outcome() -> ActivityOutcome:
    return ActivityOutcome(ok=False, error_type=LOST, error_message="no outcome")


def _restarts(exc: ActorDiedError) -> bool:
    """Whether Ray will restart the dead actor (it was not killed for good)."""
    return "ray.kill" not in str(exc) and "no_restart" not in str(exc)
