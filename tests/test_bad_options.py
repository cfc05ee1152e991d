"""Bad options and values that used to be accepted and then hang or break a partition.

Every option of ``Engine``, ``duraflow serve``, the decorators and the context calls is
checked where it is given, with an error naming the option, the value and what is allowed.
A turn that fails for a reason retrying cannot fix fails only the request (or marks only the
run) that caused it, and a failed open leaves the partition's file lock free. As in
``test_bad_input.py``, a keeper workflow shows that what was durable is intact afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import math
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

import duraflow as df
from duraflow import config
from duraflow.actors import messages as m
from duraflow.actors.partition import Partition
from duraflow.actors.router import partition_of
from duraflow.cli.main import main
from duraflow.config import EngineConfig
from duraflow.engine import definitions, retry
from duraflow.engine.activities import InlineExecutor
from duraflow.engine.payloads import encode_args, workflow_types
from tests.test_bad_input import assert_keeper_intact, bad_echo, start_keeper

PARTITIONS = 2
KEEPER = "bad-keeper"
RAY_ARCHIVE = False  # their Ray variants test the transport, not the archive (see conftest)
"""start_keeper's workflow ID."""


def beside_keeper(prefix: str, count: int = 1) -> list[str]:
    """``count`` workflow IDs owned by the keeper's partition."""
    home = partition_of(KEEPER, PARTITIONS)
    found: list[str] = []
    n = 0
    while len(found) < count:
        if partition_of(f"{prefix}-{n}", PARTITIONS) == home:
            found.append(f"{prefix}-{n}")
        n += 1
    return found


# -- Engine options ---------------------------------------------------------------------------

WHOLE = "a whole number from {} to {}"
RESOURCES = "a dict of resource names to amounts above 0 and at most 1e+09"
ALLOWED = {
    "activity_threads": WHOLE.format(1, 1024),
    "max_resident_runs": WHOLE.format(0, 2**31 - 1) + ", or None (no cap)",
    "partitions": WHOLE.format(1, 1024),
    "archive_interval": "seconds above 0 and at most 100 years (3155760000 s)",
    "namespace": "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    "synchronous": "one of ('OFF', 'NORMAL', 'FULL', 'EXTRA')",
    "runtime": "one of ('ray', 'local')",
    "address": "a Ray address ('auto', 'host:port', 'ray://...') or None",
    "partition_resources": RESOURCES,
    "archive": "True or False",
    "s3": "a duraflow.config.S3Config or None",
    "warehouse": "s3://bucket/prefix, a path or a file:// URI",
}


@pytest.mark.parametrize(
    ("option", "value", "shown"),
    [
        ("activity_threads", 0, "0"),
        ("activity_threads", 10**6, "1000000"),
        ("activity_threads", 2.5, "2.5"),
        ("activity_threads", True, "True"),
        ("max_resident_runs", -1, "-1"),
        ("max_resident_runs", "10", "'10'"),
        ("partitions", 0, "0"),
        ("partitions", 100_000, "100000"),
        ("partitions", "4", "'4'"),
        ("archive_interval", 0, "0.0"),
        ("namespace", "has space", "'has space'"),
        ("namespace", "n" * 65, "'nnnnnnnn"),
        ("namespace", 7, "7"),
        ("synchronous", "SOMETIMES", "'SOMETIMES'"),
        ("runtime", "threads", "'threads'"),
        ("address", "", "''"),
        ("partition_resources", {"gpu": -1}, "{'gpu': -1}"),
        ("partition_resources", {"gpu": math.inf}, "{'gpu': inf}"),
        ("archive", "yes", "'yes'"),
        ("s3", "http://127.0.0.1:9000", "'http://127.0.0.1:9000'"),
        ("warehouse", "", "''"),
    ],
)
def test_engine_refuses_each_bad_option_naming_it_its_range_and_the_value(
    data_dir: Path, option: str, value: Any, shown: str
) -> None:
    kwargs: dict[str, Any] = {"runtime": "local", option: value}

    with pytest.raises(df.ConfigurationError) as caught:
        df.Engine(data_dir, **kwargs)

    assert str(caught.value).startswith(f"{option} must be {ALLOWED[option]}, got {shown}")
    assert not data_dir.exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("retention", 1e13, "retention must be at most 100 years (3155760000 s), got 1000000"),
        ("retention", 2**70, "retention must be at most 100 years (3155760000 s), got 1180"),
        ("retention", -1, "retention must be a finite, non-negative duration, got -1"),
        ("hibernate_after", math.inf, "hibernate_after must be a finite, non-negative duration"),
        ("hibernate_after", math.nan, "hibernate_after must be a finite, non-negative duration"),
        ("archive_interval", "1000y", "archive_interval '1000y' is not a duration"),
    ],
)
def test_engine_refuses_each_bad_duration_naming_it(
    data_dir: Path, option: str, value: Any, named: str
) -> None:
    kwargs: dict[str, Any] = {"runtime": "local", option: value}

    with pytest.raises(df.InvalidDuration) as caught:
        df.Engine(data_dir, **kwargs)

    assert str(caught.value).startswith(named)
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("pool", "named"),
    [
        ({"size": 0}, "WorkerPool size must be a whole number from 1 to 1024"),
        ({"size": 2.5}, "WorkerPool size must be a whole number from 1 to 1024"),
        ({"num_gpus": -1}, "WorkerPool num_gpus must be a number from 0 to"),
        ({"num_cpus": math.nan}, "WorkerPool num_cpus must be a number from 0 to"),
        ({"resources": {"tpu": 0}}, "WorkerPool resources must be a dict of resource names"),
        ({"runtime_env": "env"}, "WorkerPool runtime_env must be a dict"),
        ({"max_async": 0}, "WorkerPool max_async must be a whole number from 1 to 1024"),
    ],
)
def test_worker_pool_refuses_each_bad_option_naming_it(pool: dict[str, Any], named: str) -> None:
    with pytest.raises(df.ConfigurationError) as caught:
        df.WorkerPool(**pool)

    assert str(caught.value).startswith(named)


@pytest.mark.parametrize(
    ("workers", "named"),
    [
        ({"a b": df.WorkerPool()}, "a workers queue name must be 1 to 64 letters"),
        ({"gpu": {"size": 2}}, "workers['gpu'] must be a df.WorkerPool, got {'size': 2}"),
        (["gpu"], "workers must be a dict of queue names to df.WorkerPool"),
    ],
)
def test_engine_refuses_bad_workers(data_dir: Path, workers: Any, named: str) -> None:
    with pytest.raises(df.ConfigurationError) as caught:
        df.Engine(data_dir, runtime="local", workers=workers)

    assert str(caught.value).startswith(named)
    assert not data_dir.exists()


def test_activity_threads_zero_used_to_wait_forever_and_is_refused(data_dir: Path) -> None:
    # It was accepted, and then every sync activity waited for a thread that never came.
    with pytest.raises(df.ConfigurationError, match=r"activity_threads .* got 0"):
        df.Engine(data_dir, runtime="local", activity_threads=0)
    with df.Engine(data_dir, runtime="local", partitions=PARTITIONS, activity_threads=1) as engine:
        assert_keeper_intact(start_keeper(engine.client()))


def test_a_config_is_checked_on_every_path_to_it(tmp_path: Path) -> None:
    good = EngineConfig(data_dir=str(tmp_path), partitions=2)
    shown = good.public()

    with pytest.raises(df.ConfigurationError, match="max_resident_runs must be"):
        EngineConfig(data_dir=str(tmp_path), partitions=2, max_resident_runs=-1)
    with pytest.raises(df.ConfigurationError, match="retention must be seconds from 0 to 100"):
        EngineConfig.from_public({**shown, "retention_s": 1e13})
    with pytest.raises(df.ConfigurationError, match="deadlock_threshold must be seconds above 0"):
        EngineConfig.from_public({**shown, "deadlock_threshold_s": 0})
    with pytest.raises(df.ConfigurationError, match="activity_threads must be a whole number"):
        EngineConfig.decode(msgspec.msgpack.encode({**shown, "activity_threads": 0}))
    with pytest.raises(df.ConfigurationError, match=r"s3\.region must be a region name"):
        config.S3Config(region="")
    assert good == EngineConfig.decode(good.encode())
    assert config.MAX_DURATION_S == retry.MAX_DURATION_S  # one bound, defined in config


# -- duraflow serve flags ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--activity-threads", "0"], "argument --activity-threads: must be > 0 and finite, got 0"),
        (["--activity-threads", "5000"], f"activity_threads must be {WHOLE.format(1, 1024)}"),
        (["--max-resident-runs", "-1"], "argument --max-resident-runs: must be > 0"),
        (["--partitions", "5000"], f"partitions must be {WHOLE.format(1, 1024)}, got 5000"),
        (["--retention", "1e13"], "argument --retention: duration must be at most 100 years"),
        (["--hibernate-after", "nan"], "argument --hibernate-after: duration 'nan' is not a"),
        (["--archive-interval", "0"], "archive_interval must be seconds above 0"),
        (["--namespace", "not a namespace"], f"namespace must be {ALLOWED['namespace']}"),
        (["--partition-resources", '{"gpu": -1}'], "JSON object of resource amounts > 0"),
        (["--timeout", "inf"], "argument --timeout: must be > 0 and finite, got inf"),
        (["--workers", '{"gpu": {"size": 0}}'], "WorkerPool size must be a whole number"),
        (["--workers", '{"a b": {}}'], "a workers queue name must be 1 to 64 letters"),
        (["--workers", "[1]"], "expected a JSON object of queue names to pools"),
    ],
)
def test_serve_refuses_each_bad_flag_naming_it_before_joining_ray(
    tmp_path: Path, flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    unreachable = ["--address", f"127.0.0.1:{_free_port()}", "--data-dir", str(tmp_path / "d")]

    try:
        code = main(["serve", *unreachable, *flags])
    except SystemExit as exit_info:  # argparse's own refusals
        code = int(exit_info.code or 0)

    assert 2 == code
    assert named in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--queue", "a b"], "queue must be 1 to 64 letters"),
        (["--size", "0"], "argument --size: must be > 0"),
        (["--num-gpus", "-1"], "WorkerPool num_gpus must be a number from 0 to"),
    ],
)
def test_worker_refuses_each_bad_flag_naming_it_before_joining_ray(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["worker", "--address", f"127.0.0.1:{_free_port()}", *flags])
    except SystemExit as exit_info:  # argparse's own refusals
        code = int(exit_info.code or 0)

    assert 2 == code
    assert named in capsys.readouterr().err


def test_client_commands_refuse_a_bad_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{_free_port()}"
    assert 2 == main(["status", "--address", address, "--namespace", "a/b"])
    assert "namespace must be 1 to 64 letters" in capsys.readouterr().err


# -- decorator options ------------------------------------------------------------------------


NOT_AMOUNT = "must be a finite number >= 0, or None (Ray's default), got"
NOT_NAME = "@activity name must be a non-empty str without control characters, got"


@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        ({"num_cpus": -1}, df.ConfigurationError, f"num_cpus {NOT_AMOUNT} -1"),
        ({"num_gpus": math.nan}, df.ConfigurationError, f"num_gpus {NOT_AMOUNT} nan"),
        ({"num_cpus": True}, df.ConfigurationError, f"num_cpus {NOT_AMOUNT} True"),
        (
            {"resources": {"gadget": -1}},
            df.ConfigurationError,
            "resources must be a dict of resource names to finite amounts >= 0, got {'gadget': -1}",
        ),
        ({"resources": ["gadget"]}, df.ConfigurationError, "resources must be a dict of"),
        ({"runtime_env": "env"}, df.ConfigurationError, "runtime_env must be a dict"),
        (
            {"retry": {"maximum_attempts": 3}},
            df.ConfigurationError,
            "retry must be a duraflow.RetryPolicy(...) or None, got {'maximum_attempts': 3}",
        ),
        ({"name": ""}, df.ConfigurationError, f"{NOT_NAME} ''"),
        ({"name": "a\nb"}, df.ConfigurationError, f"{NOT_NAME} 'a\\nb'"),
        ({"inline": "yes"}, df.ConfigurationError, "inline must be True or False, got 'yes'"),
        ({"queue": "a b"}, df.ConfigurationError, "queue must be 1 to 64 letters"),
        ({"queue": 7}, df.ConfigurationError, "queue must be 1 to 64 letters"),
        (
            {"queue": "gpu", "num_gpus": 1},
            df.ConfigurationError,
            "queue='gpu' cannot go with inline or num_cpus / num_gpus / resources / runtime_env",
        ),
        ({"queue": "gpu", "inline": True}, df.ConfigurationError, "queue='gpu' cannot go with"),
        (
            {"start_to_close_timeout": 0},
            df.InvalidDuration,
            "start_to_close_timeout must be above 0 (None means no limit), got 0",
        ),
        ({"heartbeat_timeout": 1e13}, df.InvalidDuration, "heartbeat_timeout must be at most 100"),
        (
            {"schedule_to_close_timeout": -5},
            df.InvalidDuration,
            "schedule_to_close_timeout must be a finite, non-negative duration, got -5",
        ),
    ],
)
def test_activity_decorator_refuses_each_bad_option(
    options: dict[str, Any], error: type[Exception], named: str
) -> None:
    with pytest.raises(error) as caught:

        @df.activity(**options)
        def bad_opt_never_registered() -> None:
            pass

    assert named in str(caught.value)
    with pytest.raises(df.UnknownActivity):
        definitions.resolve_activity("bad_opt_never_registered")


@pytest.mark.parametrize("name", ["", "  ", 7, "x\x00y"])
def test_workflow_decorator_refuses_a_bad_name(name: Any) -> None:
    with pytest.raises(df.ConfigurationError, match="@workflow name must be a non-empty str"):

        @df.workflow(name=name)
        async def bad_opt_unnamed(ctx: df.WorkflowContext) -> None:
            pass


def test_retry_policy_refuses_huge_maximum_attempts() -> None:
    with pytest.raises(df.ConfigurationError, match=r"maximum_attempts must be from 0 .* got 1180"):
        df.RetryPolicy(maximum_attempts=2**70)


# -- context calls: the run that makes the mistake fails, its partition goes on -----------------


@df.activity
def bad_opt_step(value: int) -> int:
    return value


@df.workflow
async def bad_opt_child(ctx: df.WorkflowContext) -> None:
    return None


MISTAKES: dict[str, Any] = {
    "ctx.sleep(1e13)": lambda ctx: ctx.sleep(1e13),
    "asyncio.sleep(1e13)": lambda ctx: asyncio.sleep(1e13),
    "asyncio.sleep(nan)": lambda ctx: asyncio.sleep(math.nan),
    "asyncio.wait_for(huge)": lambda ctx: asyncio.wait_for(
        asyncio.get_running_loop().create_future(), 1e13
    ),
    "ctx.sleep_until(year 9999)": lambda ctx: ctx.sleep_until(dt.datetime(9999, 1, 1)),
    "ctx.sleep_until(str)": lambda ctx: ctx.sleep_until("tomorrow"),
    "wait_for_signal(timeout=1e13)": lambda ctx: ctx.wait_for_signal("go", timeout=1e13),
    "ctx.activity(retry=dict)": lambda ctx: ctx.activity(bad_opt_step, 1, retry={"x": 1}),
    "ctx.activity(timeout=0)": lambda ctx: ctx.activity(bad_opt_step, 1, start_to_close_timeout=0),
    "start_child(policy)": lambda ctx: ctx.start_child(bad_opt_child, parent_close_policy="orphan"),
}


@df.workflow
async def bad_opt_makes_mistake(ctx: df.WorkflowContext, mistake: str) -> str:
    await ctx.sleep(0.01)  # the mistake comes from a timer's activation, not from the start
    await MISTAKES[mistake](ctx)
    return "no error"


TIMER_LIMIT = "a workflow timer must fire within 100 years (3155760000 s), got a delay of"


@pytest.mark.parametrize(
    ("mistake", "cause_type", "named"),
    [
        ("ctx.sleep(1e13)", "InvalidDuration", "sleep duration must be at most 100 years"),
        ("asyncio.sleep(1e13)", "InvalidDuration", f"{TIMER_LIMIT} 10000000000000.0 s"),
        ("asyncio.sleep(nan)", "InvalidDuration", f"{TIMER_LIMIT} nan s"),
        ("asyncio.wait_for(huge)", "InvalidDuration", f"{TIMER_LIMIT} 10000000000000.0 s"),
        (
            "ctx.sleep_until(year 9999)",
            "InvalidDuration",
            "sleep_until(9999-01-01T00:00:00+00:00) must be at most 100 years",
        ),
        ("ctx.sleep_until(str)", "InvalidDuration", "sleep_until needs a datetime.datetime"),
        ("wait_for_signal(timeout=1e13)", "InvalidDuration", "signal timeout must be at most"),
        (
            "ctx.activity(retry=dict)",
            "ConfigurationError",
            "retry must be a duraflow.RetryPolicy(...) or None, got {'x': 1}",
        ),
        ("ctx.activity(timeout=0)", "InvalidDuration", "start_to_close_timeout must be above 0"),
        (
            "start_child(policy)",
            "ConfigurationError",
            "parent_close_policy must be one of ('terminate', 'request_cancel', 'abandon'), "
            "got 'orphan'",
        ),
    ],
)
def test_a_bad_value_in_workflow_code_fails_that_run_only(
    engine: df.Engine, mistake: str, cause_type: str, named: str
) -> None:
    client = engine.client()
    keeper = start_keeper(client)
    (workflow_id,) = beside_keeper("bad-opt")

    with pytest.raises(df.WorkflowFailedError) as caught:
        client.execute(bad_opt_makes_mistake, mistake, workflow_id=workflow_id, timeout=30)

    assert ("failed", cause_type) == (caught.value.status, caught.value.cause_type)
    assert named in caught.value.cause_message
    assert_keeper_intact(keeper)


# -- a turn that fails: only what caused it fails ----------------------------------------------


def _start(workflow_id: str, value: Any, **fields: Any) -> m.Start:
    """The Start message ``client.start(bad_echo, value, workflow_id=...)`` sends."""
    definition = definitions.workflow_definition(bad_echo)
    args = encode_args(workflow_types(definition), [value], "workflow 'bad_echo'")
    return m.Start(
        workflow_id=workflow_id,
        workflow_type=definition.name,
        code_ref=definition.code_ref,
        args=args,
        run_id=uuid.uuid4().hex,
        **fields,
    )


def test_a_request_that_overflows_fails_alone_and_the_rest_of_its_turn_commits(
    any_engine: df.Engine,
) -> None:
    engine = any_engine
    # A parent_seq of 2**63 fits msgpack (which checks request fields at the boundary) but
    # not a SQLite INTEGER: it stands for any value a partition cannot store. The whole
    # batch used to roll back in a loop of PartitionUnavailable.
    client = engine.client()
    keeper = start_keeper(client)
    first, bad, last = beside_keeper("bad-turn", 3)
    overflowing = _start(bad, 2, parent_id="p", parent_run_id="r", parent_seq=2**63)
    batch = [_start(first, 1), overflowing, _start(last, 3)]
    host: Any = engine._host  # reason: one batch is one turn; the client may split its calls
    turns_before = engine.stats()[partition_of(KEEPER, PARTITIONS)]["turns"]

    replies = asyncio.run(host.call_batch(partition_of(KEEPER, PARTITIONS), batch))

    assert [m.StartReply, df.RequestFailed, m.StartReply] == [type(r) for r in replies]
    error = replies[1]
    assert (bad, "start", "OverflowError") == (error.workflow_id, error.request, error.cause_type)
    assert f"start of workflow {bad!r} could not be applied" in str(error)
    assert "Python int too large to convert to SQLite INTEGER" in str(error)
    assert not isinstance(error, df.PartitionUnavailable)
    assert [1, 3] == [client.get_handle(w).result(timeout=30) for w in (first, last)]
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle(bad).describe()
    assert_keeper_intact(keeper)
    # it failed once, not in a loop
    assert engine.stats()[partition_of(KEEPER, PARTITIONS)]["turns"] - turns_before < 20


_release = threading.Event()
_slow_runs: list[int] = []


@df.activity
def bad_opt_slow(value: int) -> int:
    _slow_runs.append(df.activity_info().attempt)
    assert _release.wait(30), "never released"
    return value


@df.workflow
async def bad_opt_runs_slow(ctx: df.WorkflowContext, value: int) -> int:
    return await ctx.activity(bad_opt_slow, value)


def test_a_failed_turn_keeps_result_waiters_and_running_activities(engine: df.Engine) -> None:
    # A rolled-back turn used to drop every run's result waiters (result() then hung) and
    # fail every running activity attempt as "PartitionRestarted", running it again.
    client = engine.client()
    slow_id, bad = beside_keeper("bad-keep", 2)
    _release.clear()
    _slow_runs.clear()
    slow = client.start(bad_opt_runs_slow, 7, workflow_id=slow_id)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(slow.result, timeout=30)
        deadline = time.monotonic() + 30
        while not _slow_runs:  # its attempt runs, and result() waits in the partition
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05)
        overflowing = _start(bad, 2, parent_id="p", parent_run_id="r", parent_seq=2**63)
        host: Any = engine._host  # reason: one batch is one turn

        (refused,) = asyncio.run(host.call_batch(partition_of(KEEPER, PARTITIONS), [overflowing]))
        _release.set()

        assert isinstance(refused, df.RequestFailed)
        assert 7 == result.result(timeout=30)
    assert [1] == _slow_runs  # ran once: its outcome was awaited, not run again
    completed = [e for e in slow.history() if type(e).__name__ == "ActivityCompleted"]
    assert [1] == [e.attempt for e in completed]  # type: ignore[attr-defined]  # reason: ActivityCompleted


@df.workflow
async def bad_opt_unstorable(ctx: df.WorkflowContext, after: str) -> str:
    """On ``after`` (an activity outcome or a signal), issues a timer SQLite cannot store."""
    if after == "activity":
        await ctx.activity(bad_opt_step, 1)
    elif await ctx.wait_for_signal("go") != "boom":
        return "fine"
    # Stands in for a bug that lets through a value the partition's file cannot hold: a
    # durable timer 10**13 s ahead, issued past the loop's own check.
    handle = asyncio.TimerHandle(ctx.time() + 1e13, print, (), asyncio.get_running_loop())
    ctx._run.start_timer(handle)  # reason: simulates the bug; workflow code cannot reach this
    await asyncio.Future()
    return "unreachable"


def test_a_run_whose_work_cannot_be_recorded_is_stuck_not_looping(data_dir: Path) -> None:
    def open_engine() -> df.Engine:
        return df.Engine(data_dir, runtime="local", partitions=PARTITIONS, synchronous="NORMAL")

    (workflow_id,) = beside_keeper("bad-stuck")
    with open_engine() as engine:
        client = engine.client()
        keeper = start_keeper(client)

        handle = client.start(bad_opt_unstorable, "activity", workflow_id=workflow_id)

        stuck = _wait_stuck(handle)
        assert stuck.startswith("recording its work failed: OverflowError: Python int too large")
        assert "running" == handle.describe().status
        # The activity's outcome is recorded, once; nothing loops: no more turns, no events.
        history = [type(e).__name__ for e in handle.history()]
        assert 1 == history.count("ActivityCompleted")
        turns = engine.stats()[partition_of(KEEPER, PARTITIONS)]["turns"]
        time.sleep(0.3)
        assert engine.stats()[partition_of(KEEPER, PARTITIONS)]["turns"] - turns < 3
        assert history == [type(e).__name__ for e in handle.history()]
        assert ["before"] == keeper.query("items")
    with open_engine() as engine:  # a restart tries the run again: stuck again, nothing else
        handle = engine.client().get_handle(workflow_id)
        assert _wait_stuck(handle).startswith("rebuilding it failed: OverflowError")
        assert history == [type(e).__name__ for e in handle.history()]
        assert_keeper_intact(engine.client().get_handle(KEEPER))
        handle.terminate("stuck")
        assert "terminated" == handle.describe().status


def _wait_stuck(handle: df.WorkflowHandle) -> str:
    deadline = time.monotonic() + 30
    while (stuck := handle.describe().stuck) is None:
        assert time.monotonic() < deadline, "the run was never marked stuck"
        time.sleep(0.02)
    return stuck


def test_a_signal_whose_handling_cannot_be_recorded_is_refused(engine: df.Engine) -> None:
    client = engine.client()
    keeper = start_keeper(client)
    (workflow_id,) = beside_keeper("bad-signal")
    handle = client.start(bad_opt_unstorable, "signal", workflow_id=workflow_id)
    length = handle.describe().history_length

    with pytest.raises(df.RequestFailed) as caught:
        handle.signal("go", "boom")

    assert (workflow_id, "signal", "OverflowError") == (
        caught.value.workflow_id,
        caught.value.request,
        caught.value.cause_type,
    )
    assert (length, None) == (handle.describe().history_length, handle.describe().stuck)
    handle.signal("go", "anything else")  # the run goes on as if the refused signal never came
    assert "fine" == handle.result(timeout=30)
    assert_keeper_intact(keeper)


# -- a failed open keeps no lock ---------------------------------------------------------------


def test_a_failed_open_releases_the_file_so_a_retry_opens_it(data_dir: Path) -> None:
    def open_engine() -> df.Engine:
        return df.Engine(data_dir, runtime="local", partitions=PARTITIONS, archive=False)

    with open_engine() as engine:
        start_keeper(engine.client())
    path = data_dir / "partitions" / f"p{partition_of(KEEPER, PARTITIONS):04d}.sqlite"
    good = path.read_bytes()
    path.write_bytes(b"this is not a SQLite database " * 200)

    with pytest.raises(df.ConfigurationError, match="is not a SQLite database"):
        open_engine()

    path.write_bytes(good)
    with open_engine() as engine:  # used to say the file is open in another live process
        assert_keeper_intact(engine.client().get_handle(KEEPER))


def _set_meta(path: Path, key: str, value: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        conn.commit()
    finally:
        conn.close()


def test_a_partition_whose_open_failed_opens_when_tried_again(data_dir: Path) -> None:
    # What a Ray partition actor does: it tries open() again on the same Partition.
    with df.Engine(data_dir, runtime="local", partitions=1, archive=False) as engine:
        start_keeper(engine.client())
        settings = engine.config
    path = data_dir / "partitions" / "p0000.sqlite"
    _set_meta(path, "archived_lsn", "not a number")

    async def open_twice() -> dict[str, int]:
        executor = InlineExecutor(asyncio.get_running_loop(), 1)
        partition = Partition(0, path, settings, executor=executor, send=_nowhere)
        try:
            with pytest.raises(ValueError, match="invalid literal for int"):
                await partition.open()
            _set_meta(path, "archived_lsn", "0")
            await partition.open()  # used to find its own lock taken
            stats = partition.stats()
            await partition.close()
            return stats
        finally:
            executor.close()

    assert 1 == asyncio.run(open_twice())["open"]  # the keeper
    with df.Engine(data_dir, runtime="local", partitions=1, archive=False) as engine:
        assert_keeper_intact(engine.client().get_handle(KEEPER))


async def _nowhere(workflow_id: str, message: Any) -> Any:
    raise AssertionError(f"nothing is sent in this test, got {message!r} for {workflow_id!r}")
