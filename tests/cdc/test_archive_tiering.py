"""Tiering with the archive: closed runs leave the partitions' files once archived and past
their retention, and their handles still answer (describe, history, result) from the archive."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import duraflow as df


@df.activity
def at_double(x: int) -> int:
    return 2 * x


@df.activity(retry=df.RetryPolicy(maximum_attempts=1))
def at_refuse(x: int) -> int:
    raise ValueError(f"no {x}")


@df.workflow
async def at_child(ctx: df.WorkflowContext, x: int) -> int:
    return await ctx.activity(at_double, x)


@df.workflow
async def at_parent(ctx: df.WorkflowContext, x: int) -> dict[str, object]:
    doubled = await ctx.activity(at_double, x)
    child = await ctx.execute_child(at_child, doubled, workflow_id=f"{ctx.info.workflow_id}-child")
    return {"x": x, "doubled": doubled, "child": child, "bytes": b"\x00\xff"}


@df.workflow
async def at_failing(ctx: df.WorkflowContext, x: int) -> int:
    return await ctx.activity(at_refuse, x)


@df.workflow
async def at_waiting(ctx: df.WorkflowContext) -> object:
    return await ctx.wait_for_signal("go")


def partition_rows(data_dir: Path, table: str, workflow_ids: set[str] | None = None) -> int:
    """Rows of ``table`` in every partition file (read-only), of ``workflow_ids`` if given."""
    total = 0
    for path in sorted((data_dir / "partitions").glob("p*.sqlite")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            if workflow_ids is None:
                total += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            else:
                for wid in workflow_ids:
                    query = f"SELECT count(*) FROM {table} WHERE workflow_id = ?"
                    total += conn.execute(query, (wid,)).fetchone()[0]
        finally:
            conn.close()
    return total


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def tiering_engine(data_dir: Path) -> Iterator[df.Engine]:
    """Retention 0 and no commit on a timer: ``commit_archive()`` decides when runs leave."""
    with df.Engine(
        data_dir,
        runtime="local",
        partitions=2,
        synchronous="NORMAL",
        retention=0,
        archive_interval=3600,
    ) as engine:
        yield engine


def test_closed_runs_answer_from_the_archive_once_they_left_the_partitions(
    tiering_engine: df.Engine, data_dir: Path
) -> None:
    engine, client = tiering_engine, tiering_engine.client()
    tag = uuid.uuid4().hex[:8]
    parents = [client.start(at_parent, i, workflow_id=f"at-{tag}-{i}") for i in range(4)]
    failing = client.start(at_failing, 7, workflow_id=f"at-{tag}-fail")
    waiting = client.start(at_waiting, workflow_id=f"at-{tag}-wait")
    for i, handle in enumerate(parents):
        assert {"x": i, "doubled": 2 * i, "child": 4 * i, "bytes": b"\x00\xff"} == handle.result(
            timeout=10
        )
    with pytest.raises(df.WorkflowFailedError):
        failing.result(timeout=10)
    cancelled = client.start(at_waiting, workflow_id=f"at-{tag}-cancel")
    cancelled.cancel("no longer needed")
    terminated = client.start(at_waiting, workflow_id=f"at-{tag}-term")
    terminated.terminate("stop it")
    with pytest.raises(df.WorkflowCancelledError):
        cancelled.result(timeout=10)

    closed = [
        *parents,
        *(client.get_handle(f"{h.workflow_id}-child") for h in parents),
        failing,
        cancelled,
        terminated,
        client.get_handle(terminated.workflow_id, terminated.run_id),  # by run ID too
    ]
    hot = {id(h): (h.describe(), h.history(), _outcome(h)) for h in closed}
    closed_ids = {h.workflow_id for h in closed}
    assert partition_rows(data_dir, "workflows", closed_ids) == len(closed_ids)

    assert engine.sync_archive(timeout=10)
    engine.commit_archive()  # the report after the commit lets the partitions prune

    assert 0 == partition_rows(data_dir, "workflows", closed_ids)
    assert 0 == partition_rows(data_dir, "workflow_history", closed_ids)
    assert 1 == partition_rows(data_dir, "workflows")  # the open run stays
    assert {waiting.workflow_id} == {d.workflow_id for d in client.list()}

    for handle in closed:
        described, history, outcome = hot[id(handle)]
        assert described == handle.describe()
        assert history == handle.history()
        assert outcome == _outcome(handle)
    # The partition, the client's fold of an archived history and the archive's workflows
    # table say the same of how each run closed (one mapping, cdc.events.CLOSING_RULES).
    archived = {
        (row["workflow_id"], row["run_id"]): (
            row["status"],
            row["error_type"],
            row["error_message"],
        )
        for row in client.sql(
            "SELECT workflow_id, run_id, status, error_type, error_message FROM workflows "
            "WHERE workflow_id LIKE ?",
            [f"at-{tag}-%"],
        ).to_pylist()
    }
    for handle in closed:
        d = handle.describe()
        assert archived[(d.workflow_id, d.run_id)] == (d.status, d.error_type, d.error_message)
    assert "failed" == failing.describe().status
    assert (
        parents[0].workflow_id
        == client.get_handle(f"{parents[0].workflow_id}-child").describe().parent_workflow_id
    )

    # A run never seen anywhere is still not found, and the open run still answers hot.
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle(f"at-{tag}-nobody").describe()
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle(parents[0].workflow_id, "0" * 32).history()
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle(f"at-{tag}-nobody").result(timeout=5)
    assert "running" == waiting.describe().status
    waiting.signal("go", "now")
    assert "now" == waiting.result(timeout=10)
    assert engine.sync_archive(timeout=10)  # its events are warm (not committed): queryable

    joined = client.sql(
        "SELECT w.workflow_id, w.status, count(a.seq) AS activities, "
        "count(*) FILTER (WHERE a.outcome = 'completed') AS completed "
        "FROM workflows w LEFT JOIN activities a USING (workflow_id, run_id) "
        "WHERE w.workflow_id LIKE ? GROUP BY ALL ORDER BY 1",
        [f"at-{tag}-%"],
    ).to_pylist()
    by_id = {row["workflow_id"]: row for row in joined}
    assert by_id[parents[1].workflow_id] == {
        "workflow_id": parents[1].workflow_id,
        "status": "completed",
        "activities": 1,
        "completed": 1,
    }
    assert ("failed", 1, 0) == tuple(
        by_id[failing.workflow_id][k] for k in ("status", "activities", "completed")
    )
    assert {"completed": 4 + 4 + 1, "failed": 1, "cancelled": 1, "terminated": 1} == {
        status: sum(1 for r in joined if r["status"] == status)
        for status in ("completed", "failed", "cancelled", "terminated")
    }


def _outcome(handle: df.WorkflowHandle) -> tuple[str, object]:
    try:
        return ("ok", handle.result(timeout=10))
    except df.WorkflowFailedError as exc:
        return (type(exc).__name__, str(exc))


def test_runs_leave_on_the_consumers_timer_and_stay_readable(data_dir: Path) -> None:
    """archive_interval small, retention 0: no explicit commit; the rows go by themselves."""
    with df.Engine(
        data_dir,
        runtime="local",
        partitions=2,
        synchronous="NORMAL",
        retention=0,
        archive_interval=0.2,
    ) as engine:
        client = engine.client()
        handles = [client.start(at_child, i, workflow_id=f"timer-{i}") for i in range(6)]
        assert [2 * i for i in range(6)] == [h.result(timeout=10) for h in handles]
        wait_until(lambda: partition_rows(data_dir, "workflows") == 0, 15, "runs to leave")
        assert 0 == partition_rows(data_dir, "workflow_history")
        for i, handle in enumerate(handles):
            assert 2 * i == handle.result(timeout=10)
            assert "completed" == handle.describe().status
            events = handle.history()
            assert ["workflow.started", "workflow.completed"] == [
                events[0].__struct_config__.tag,
                events[-1].__struct_config__.tag,
            ]
            assert handle.describe().history_length == len(events)
    # A fresh engine over the same data directory reads them from the archive as well.
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as engine:
        assert 10 == engine.client().get_handle("timer-5").result(timeout=10)


def test_a_partition_that_let_no_run_go_does_not_ask_the_archive(
    tiering_engine: df.Engine,
) -> None:
    client = tiering_engine.client()

    def unreachable(workflow_id: str, run_id: str | None) -> list[bytes]:
        raise AssertionError("the archive was asked")

    client._archive.run_events = unreachable  # type: ignore[union-attr,method-assign]
    for call in ("describe", "history"):
        with pytest.raises(df.WorkflowNotFound) as caught:
            getattr(client.get_handle("never-started"), call)()
        assert not caught.value.maybe_archived
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("never-started").result(timeout=5)
