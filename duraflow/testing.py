"""Test helpers: an in-process engine on a stepped clock, and replay of recorded histories.

:class:`WorkflowEnvironment` runs workflows on an in-process engine whose clock moves only
when the test says so (:meth:`~WorkflowEnvironment.start_local`) or jumps to the next due time
whenever every run waits on one (:meth:`~WorkflowEnvironment.start_time_skipping`): a workflow
that sleeps 30 days finishes in milliseconds, and retry backoffs and activity timeouts are
tested without waiting for them.

:class:`Replayer` replays recorded histories against the workflow code as it is now and raises
:class:`~duraflow.NonDeterminismError` naming the first divergence. Keep a few histories of
each workflow beside its tests (:func:`save_history`), and a change that would break the runs
already in flight fails the tests instead of production.

The public names are ``__all__``; import them from ``duraflow.testing``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from duraflow.actors import messages as m
from duraflow.actors.local_host import CLOSE_TIMEOUT_S, LocalHost
from duraflow.actors.stepped_time import SteppedClock, TimeStepper
from duraflow.cdc import events as ev
from duraflow.client.client import Client
from duraflow.config import IDLE_BEFORE_HIBERNATE_S
from duraflow.engine.definitions import WorkflowDefinition, workflow_definition
from duraflow.engine.replay import rebuild
from duraflow.engine.retry import Duration, parse_duration
from duraflow.errors import (
    ConfigurationError,
    NonDeterminismError,
    PayloadError,
    UnknownWorkflowType,
)
from duraflow.runtime import Engine
from duraflow.storage.layout import deployment_path

__all__ = ["Replayer", "WorkflowEnvironment", "load_history", "save_history"]

DEFAULT_PARTITIONS = 2
"""Partitions of an environment's engine: two, so children and signals cross partitions."""

History = Any
"""What :meth:`Replayer.replay` takes: a list of events (``handle.history()``), a path to a
history file, a pyarrow Table with a ``raw`` column (``client.sql("SELECT raw FROM history
...")``), or a list of encoded events (``raw`` values)."""


# -- the environment ------------------------------------------------------------------------------


class _CountingClient(Client):
    """A client that knows whether anyone waits on ``result()`` (time skips only then)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waits = 0
        self._waits_lock = threading.Lock()

    def waiting_for_results(self) -> bool:
        return self._waits > 0

    async def _result(
        self,
        workflow_id: str,
        run_id: str | None,
        registration: asyncio.Future[Any] | None = None,
    ) -> m.Outcome:
        with self._waits_lock:
            self._waits += 1
        try:
            return await super()._result(workflow_id, run_id, registration)
        finally:
            with self._waits_lock:
                self._waits -= 1


class _SteppedEngine(Engine):
    """An in-process Engine whose partitions all read one stepped clock."""

    _client_class = _CountingClient

    def __init__(self, clock: SteppedClock, data_dir: Path, **options: Any) -> None:
        self._stepped_clock = clock
        self.stepped_host: LocalHost | None = None
        super().__init__(data_dir, runtime="local", **options)

    def _local_host(self) -> LocalHost:
        self.stepped_host = LocalHost(self.config, clock=self._stepped_clock)
        return self.stepped_host


class WorkflowEnvironment:
    """An in-process engine on a stepped clock, for tests of workflows.

    Make one with :meth:`start_time_skipping` or :meth:`start_local`, and use it as a context
    manager (or call :meth:`close`). ``env.client`` is an ordinary :class:`~duraflow.Client`;
    every durable time of the engine (``ctx.now()``, timers, signal timeouts, retry backoffs,
    activity start-to-close, schedule-to-close and heartbeat timeouts) follows the stepped
    clock, never the wall clock. Activity code itself runs in real time, on threads of this
    process (async activities on the engine's loop).

    ``result(timeout=...)`` stays a wall-clock timeout: it is the test's own patience.

    Attributes:
        client: the environment's client.
        engine: the underlying :class:`~duraflow.Engine` (``runtime="local"``), for
            ``sync_archive()``, ``stats()`` and the like.
    """

    def __init__(
        self,
        *,
        skip_time: bool,
        data_dir: str | os.PathLike[str] | None = None,
        partitions: int | None = None,
        start_time: dt.datetime | float | None = None,
        archive: bool = False,
        max_resident_runs: int | None = None,
        hibernate_after: Duration | None = IDLE_BEFORE_HIBERNATE_S,
    ) -> None:
        """Use :meth:`start_time_skipping` or :meth:`start_local`."""
        self._clock = SteppedClock(_epoch_seconds(start_time))
        self._own_dir = data_dir is None
        path = Path(tempfile.mkdtemp(prefix="duraflow-env-") if data_dir is None else data_dir)
        try:
            engine = _SteppedEngine(
                self._clock,
                path,
                partitions=_partitions(path, partitions),
                synchronous="NORMAL",
                archive=archive,
                max_resident_runs=max_resident_runs,
                hibernate_after=hibernate_after,
            )
        except BaseException:
            self._remove_dir(path)
            raise
        self.data_dir = path
        self.engine: Engine = engine
        host = engine.stepped_host
        assert host is not None and host.stepper is not None
        self._host = host
        self._stepper: TimeStepper = host.stepper
        counting = engine.client()
        assert isinstance(counting, _CountingClient)
        self.client: Client = counting
        self._skipping = skip_time
        if skip_time:
            host.submit(self._stepper.start_skipping(counting.waiting_for_results)).result()

    @classmethod
    def start_time_skipping(
        cls,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        partitions: int | None = None,
        start_time: dt.datetime | float | None = None,
        archive: bool = False,
        max_resident_runs: int | None = None,
        hibernate_after: Duration | None = IDLE_BEFORE_HIBERNATE_S,
    ) -> WorkflowEnvironment:
        """An environment whose clock skips ahead: while the client waits on a result and no
        partition has work queued or an activity attempt running, the clock jumps to the next
        due time (a timer, a retry backoff, a deadline). :meth:`advance` moves it too.

        Args:
            data_dir: where the partition files go (default: a temporary directory, removed
                on :meth:`close`).
            partitions: partition count (default: the one recorded in ``data_dir``, or 2
                for a new one).
            start_time: the clock's first reading (default: the wall clock's now).
            archive: run the archive consumer, so ``client.sql`` works (default off: faster).
            max_resident_runs, hibernate_after: as for :class:`~duraflow.Engine`.

        Note:
            A skip fires whatever is due next, a signal timeout included: send signals before
            you wait on the result, or use :meth:`start_local`. An activity that runs (or
            hangs) holds the clock; test its timeouts with :meth:`start_local`.
        """
        return cls(
            skip_time=True,
            data_dir=data_dir,
            partitions=partitions,
            start_time=start_time,
            archive=archive,
            max_resident_runs=max_resident_runs,
            hibernate_after=hibernate_after,
        )

    @classmethod
    def start_local(
        cls,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        partitions: int | None = None,
        start_time: dt.datetime | float | None = None,
        archive: bool = False,
        max_resident_runs: int | None = None,
        hibernate_after: Duration | None = IDLE_BEFORE_HIBERNATE_S,
    ) -> WorkflowEnvironment:
        """An environment whose clock moves only by :meth:`advance` (arguments as for
        :meth:`start_time_skipping`)."""
        return cls(
            skip_time=False,
            data_dir=data_dir,
            partitions=partitions,
            start_time=start_time,
            archive=archive,
            max_resident_runs=max_resident_runs,
            hibernate_after=hibernate_after,
        )

    @property
    def time_skipping(self) -> bool:
        """Whether the clock skips ahead by itself (:meth:`start_time_skipping`)."""
        return self._skipping

    def now(self) -> dt.datetime:
        """The environment's current time (what ``ctx.now()`` would say), UTC."""
        return dt.datetime.fromtimestamp(self._clock.now(), tz=dt.timezone.utc)

    def time(self) -> float:
        """The environment's current time in seconds since the epoch (``ctx.time()``)."""
        return self._clock.now()

    async def advance_async(self, duration: Duration) -> None:
        """Move the clock ``duration`` forward; returns once what fell due has run.

        The clock stops at each due time on the way, in order, and lets the turns that follow
        settle before it moves on: a timer armed on the way fires at its own time too.
        Activity attempts that are running are not waited for: a jump past an attempt's
        start-to-close or heartbeat deadline times it out, as the same time passing on a wall
        clock would.

        Raises:
            InvalidDuration: ``duration`` is not a duration.
        """
        seconds = parse_duration(duration, "duration")
        await asyncio.wrap_future(self._host.submit(self._stepper.advance(seconds)))

    def advance(self, duration: Duration) -> None:
        """Blocking twin of :meth:`advance_async`."""
        seconds = parse_duration(duration, "duration")
        self._host.submit(self._stepper.advance(seconds)).result()

    def close(self) -> None:
        """Stop the engine and remove the temporary data directory (if the environment made
        it)."""
        if self._skipping:
            self._skipping = False
            self._host.submit(self._stepper.stop_skipping()).result(timeout=CLOSE_TIMEOUT_S)
        self.engine.close()
        if self._own_dir:
            self._remove_dir(self.data_dir)

    def _remove_dir(self, path: Path) -> None:
        if self._own_dir:
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> WorkflowEnvironment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _partitions(data_dir: Path, partitions: int | None) -> int | None:
    """The count asked for; else the recorded one (None) or, for a new directory, two."""
    if partitions is not None or deployment_path(data_dir).exists():
        return partitions
    return DEFAULT_PARTITIONS


def _epoch_seconds(start: dt.datetime | float | None) -> float:
    if start is None:
        return round(time.time(), 6)
    if isinstance(start, dt.datetime):
        if start.tzinfo is None:
            raise ConfigurationError(f"start_time must be timezone-aware (e.g. UTC), got {start!r}")
        return start.timestamp()
    return float(start)


# -- history files --------------------------------------------------------------------------------

_history_type = list[ev.AnyEvent]


def save_history(history: Iterable[ev.Event], path: str | os.PathLike[str]) -> Path:
    """Write a run's events (``handle.history()``) to ``path``: msgpack, or JSON (indented,
    for people to read and diff) when the name ends in ``.json``. Both load with
    :func:`load_history` and replay with :class:`Replayer`.

    Returns:
        The path written.
    """
    target = Path(path)
    events = list(history)
    if target.suffix == ".json":
        data = msgspec.json.format(msgspec.json.encode(events), indent=2) + b"\n"
    else:
        data = msgspec.msgpack.encode(events)
    target.write_bytes(data)
    return target


def load_history(path: str | os.PathLike[str]) -> list[ev.AnyEvent]:
    """The events in a history file written by :func:`save_history` (JSON when the name ends
    in ``.json``, msgpack otherwise).

    Raises:
        FileNotFoundError: no such file.
        PayloadError: the file does not hold a list of history events.
    """
    source = Path(path)
    data = source.read_bytes()
    try:
        if source.suffix == ".json":
            return msgspec.json.decode(data, type=_history_type)
        return msgspec.msgpack.decode(data, type=_history_type)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"{source} is not a duraflow history file: {exc}") from None


# -- replay ---------------------------------------------------------------------------------------


class Replayer:
    """Replays recorded histories against workflow code, to catch changes that would break
    runs already recorded.

    Args:
        workflows: the ``@workflow`` functions whose histories will be replayed (each is
            matched by its type name), or a mapping from a recorded type name to the async
            function that should replay it (to check a renamed or rewritten version).

    Example::

        Replayer(workflows=[checkout]).replay(handle.history())
        Replayer(workflows=[checkout]).replay("tests/histories/checkout.msgpack")
        Replayer(workflows=[checkout]).replay(
            client.sql("SELECT raw FROM history WHERE workflow_type = 'checkout'"))
    """

    def __init__(
        self, workflows: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]]
    ) -> None:
        if isinstance(workflows, Mapping):
            self._definitions = {
                name: WorkflowDefinition(name, fn, f"{fn.__module__}:{fn.__qualname__}", "")
                for name, fn in workflows.items()
            }
        else:
            found = [workflow_definition(fn) for fn in workflows]
            self._definitions = {d.name: d for d in found}

    def replay(self, history: History) -> int:
        """Replay every run in ``history`` (its events in event-ID order).

        Args:
            history: a run's events (``handle.history()``); the path of a history file
                (:func:`save_history`); a pyarrow Table with a ``raw`` column, as
                ``client.sql("SELECT raw FROM history WHERE ...")`` returns it (the rows of
                several runs are grouped by run); or a list of encoded events.

        Returns:
            How many runs were replayed.

        Raises:
            NonDeterminismError: the code issued other commands than a history holds; the
                message names the workflow ID, the run, the event ID, and the recorded and
                the issued command.
            UnknownWorkflowType: a history of a type this replayer was not given.
            PayloadError: ``history`` holds no events, is not one of the forms above, or a
                run lacks its first events.
        """
        runs = _runs(_events_of(history))
        for events in runs:
            self._replay_run(events)
        return len(runs)

    def _replay_run(self, events: list[ev.Event]) -> None:
        first = events[0]
        who = f"workflow {first.workflow_id!r} run {first.run_id}"
        if not isinstance(first, ev.WorkflowStarted) or first.event_id != 1:
            raise PayloadError(
                f"the history of {who} starts at event {first.event_id} "
                f"({ev.event_type(first)}); replay needs every event from workflow.started on"
            )
        definition = self._definitions.get(first.workflow_type)
        if definition is None:
            raise UnknownWorkflowType(
                f"the history of {who} is of type {first.workflow_type!r}; this replayer "
                f"was given {sorted(self._definitions)}"
            )
        try:
            run, _ = rebuild(definition, events)
        except NonDeterminismError as exc:
            raise NonDeterminismError(f"{who} ({first.workflow_type}): {exc}") from None
        run.discard()


def _events_of(history: History) -> list[ev.Event]:
    if isinstance(history, (str, os.PathLike)):
        return list(load_history(history))
    if hasattr(history, "column_names") and hasattr(history, "column"):  # a pyarrow Table
        if "raw" not in history.column_names:
            raise PayloadError(
                f"a table to replay needs the 'raw' column (SELECT raw FROM history ...); it "
                f"has {history.column_names}"
            )
        history = history.column("raw").to_pylist()
    if not isinstance(history, Iterable) or isinstance(history, (bytes, Mapping)):
        raise PayloadError(f"cannot replay {type(history).__name__}: {_FORMS}")
    events: list[ev.Event] = []
    for item in history:
        if isinstance(item, ev.Event):
            events.append(item)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            try:
                events.append(ev.decode_event(bytes(item)))
            except msgspec.DecodeError as exc:
                raise PayloadError(f"not an encoded history event: {exc}") from None
        else:
            raise PayloadError(f"cannot replay a history holding {type(item).__name__}: {_FORMS}")
    if not events:
        raise PayloadError("the history to replay holds no events")
    return events


_FORMS = (
    "give a list of events (handle.history()), a history file's path, a table with a 'raw' "
    "column (client.sql('SELECT raw FROM history ...')) or a list of encoded events"
)


def _runs(events: list[ev.Event]) -> list[list[ev.Event]]:
    """The events grouped by run (in order of first appearance), each in event-ID order."""
    by_run: dict[tuple[str, str], list[ev.Event]] = {}
    for event in events:
        by_run.setdefault((event.workflow_id, event.run_id), []).append(event)
    return [sorted(run, key=lambda e: e.event_id) for run in by_run.values()]
