"""Fencing by epoch, with real owners: a stalled owner is replaced, wakes, writes nothing and
stops.

* **a stopped process** (``tests/actors/fencing_owner.py``, an in-process engine): SIGSTOPped
  between turns, it still holds its partition file's lock, so a plain opening is refused; a
  new owner opened with ``takeover=True`` serves the partition (starts, signals, the old
  owner's timer); once the old one is woken (SIGCONT) its overdue timer makes it attempt a
  write turn: it finds the newer epoch, writes nothing (the file is the same, row for row, as
  the new owner left it) and closes its partition, and the process ends.
* **two engines in one process**: the same, without processes, through the partition's
  turn loop (a request to the old engine fails as retriable and its partition closes).
* **Ray**: a partition actor is killed and, the moment its file is free, a stand-in for an
  earlier incarnation that Ray holds dead but that lives on (a process under the actor's name
  in the lock file) takes it; the restarted actor takes the file over from it after
  TAKEOVER_AFTER_S and serves; the stand-in's next write turn is fenced and writes nothing.

Partition files are read directly (sqlite3, read-only).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.actors.router import partition_of
from duraflow.storage import fencing
from tests.actors import fencing_owner as owner

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 20.0


def file_rows(data_dir: Path) -> dict[str, Any]:
    """Everything partition 0's file holds, row for row."""
    path = data_dir / "partitions" / "p0000.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {
            table: conn.execute(
                f"SELECT * FROM {table} ORDER BY 1, 2"
            ).fetchall()  # our table names
            for table in (
                "meta",
                "workflows",
                "workflow_history",
                "workflow_activities",
                "workflow_timers",
                "workflow_signals",
                "outbox",
            )
        }
    finally:
        conn.close()


def epoch_of(rows: dict[str, Any]) -> int:
    return fencing.epoch_number(dict(rows["meta"])["epoch"])


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``fencing_owner.py args``, its output into ``log``."""
    pythonpath = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath), PYTHONUNBUFFERED="1")
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, owner.__file__, *args],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


class Owner:
    """The ``fencing_owner.py`` process this test started (the only one it signals)."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.log = log
        self.proc = spawn([str(data_dir)], log)
        self.pid = self.proc.pid
        ready = data_dir / owner.READY_FILE
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (ready.exists() and json.loads(ready.read_text())["pid"] == self.pid):
            assert self.proc.poll() is None, f"owner exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"owner not ready in time:\n{self.output()}"
            time.sleep(0.01)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while _state(self.pid) != "T":
            assert time.monotonic() < deadline, "the owner did not stop"
            time.sleep(0.005)

    def wake(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.fixture
def start_owner(tmp_path: Path) -> Iterator[Any]:
    started: list[Owner] = []

    def start(data_dir: Path) -> Owner:
        process = Owner(data_dir, tmp_path / "owner.log")
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            os.kill(process.pid, signal.SIGKILL)  # our own child, by PID (stopped or not)
            process.proc.wait(timeout=10)


@pytest.mark.timeout(90)
def test_a_stopped_owner_is_taken_over_and_when_woken_writes_nothing_and_stops(
    data_dir: Path, start_owner: Any
) -> None:
    old = start_owner(data_dir)
    old.stop()  # between turns: its timer is not due yet
    stopped_at = time.monotonic()
    before = file_rows(data_dir)
    assert epoch_of(before) == 2  # 1: created; 2: the old owner's opening

    # The stopped owner still holds the file's lock: a plain opening is refused.
    with pytest.raises(df.PartitionUnavailable, match="open in another live process"):
        owner.open_engine(data_dir)

    with owner.open_engine(data_dir, takeover=True) as engine:
        took_over_s = time.monotonic() - stopped_at
        client = engine.client()
        fresh = client.start(owner.fence_waiter, workflow_id="fence-new")
        fresh.signal(owner.SIGNAL, "new")
        client.get_handle("fence-signal").signal(owner.SIGNAL, "to the old owner's run")
        assert "new" == fresh.result(timeout=10)
        assert "to the old owner's run" == client.get_handle("fence-signal").result(timeout=10)
        assert "slept" == client.get_handle("fence-timer").result(timeout=10)
    after_takeover = file_rows(data_dir)
    assert epoch_of(after_takeover) == 3
    assert len(after_takeover["workflow_history"]) > len(before["workflow_history"])
    assert after_takeover["workflow_timers"] == []

    woke_at = time.monotonic()
    old.wake()  # its timer is overdue: it attempts a write turn at once
    try:
        code = old.proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the woken owner did not stop:\n{old.output()}")
    stopped_s = time.monotonic() - woke_at
    assert code == 0, f"the woken owner exited with {code}:\n{old.output()}"
    report = json.loads((data_dir / owner.OUT_FILE).read_text())
    print(
        f"\ntook over {took_over_s:.2f}s after the stop; the woken owner stopped in "
        f"{stopped_s:.2f}s"
    )

    # It found the newer epoch, closed its partition, and refuses requests as retriable.
    assert "epoch 3; this owner opened it at epoch 2" in report["fenced"]["0"]
    assert report["signal_after"].startswith("PartitionFenced: ")
    assert "this owner writes nothing more and stops" in old.output()
    assert "rolled back" not in old.output()  # fenced before it began: nothing to roll back
    # It wrote nothing: the file is, row for row, what the new owner left.
    assert file_rows(data_dir) == after_takeover

    # And the file opens as usual afterwards (no lock left held, the next epoch).
    with owner.open_engine(data_dir) as engine:
        assert engine.client().get_handle("fence-new").result(timeout=10) == "new"
    assert epoch_of(file_rows(data_dir)) == 4


@pytest.mark.timeout(60)
def test_an_engine_whose_files_another_took_over_closes_its_partition(data_dir: Path) -> None:
    with owner.open_engine(data_dir) as first:
        handle = first.client().start(owner.fence_waiter, workflow_id="fence-a")
        with owner.open_engine(data_dir, takeover=True) as second:
            taken = file_rows(data_dir)
            # The first engine's next turn finds the newer epoch: the request fails as
            # retriable, the partition closes, and nothing reached the file.
            with pytest.raises(df.PartitionUnavailable, match="taken over by a newer owner"):
                handle.signal(owner.SIGNAL, "first")
            with pytest.raises(
                df.PartitionFenced, match="epoch 3; this owner opened it at epoch 2"
            ):
                first.client().start(owner.fence_waiter, workflow_id="fence-b")
            assert file_rows(data_dir) == taken
            host: Any = first._host  # reason: the host's record of its fenced partitions
            assert list(host.fenced) == [0]
            # The second serves.
            second.client().get_handle("fence-a").signal(owner.SIGNAL, "second")
            assert "second" == second.client().get_handle("fence-a").result(timeout=10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"takeover": "yes"}, "takeover must be True or False, got 'yes'"),
        ({"takeover": True, "runtime": "ray"}, "takeover=True is for runtime='local'"),
    ],
)
def test_engine_refuses_a_bad_takeover(
    data_dir: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(df.ConfigurationError, match=message.replace("(", r"\(")):
        df.Engine(data_dir, **options)
    assert not data_dir.exists()  # refused before anything was written


@pytest.mark.timeout(120)
def test_a_restarted_ray_actor_takes_its_file_over_from_a_stalled_earlier_incarnation(
    ray_engine: df.Engine, ray_client: df.Client, data_dir: Path, tmp_path: Path
) -> None:
    import ray

    from duraflow.actors import ray_host

    host: Any = ray_client._host  # reason: the test needs the actors
    actor = host._handles[0]
    pid = ray.get(actor.status.remote(), timeout=30)["pid"]
    path = data_dir / "partitions" / "p0000.sqlite"
    label = fencing.read_holder(path)
    assert label is not None and label.owner.startswith("Ray actor ") and label.pid == pid
    wid = next(w for w in (f"fence-ray-{n}" for n in range(100)) if partition_of(w, 2) == 0)
    handle = ray_client.start(owner.fence_waiter, workflow_id=wid)

    stand_in = spawn(["stand-in", str(path), label.owner], tmp_path / "stand-in.log")
    try:
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # the actor's process, by the PID it reported
        ready = path.with_name("stand-in.ready")
        while not ready.exists():
            assert stand_in.poll() is None, (tmp_path / "stand-in.log").read_text()
            assert time.monotonic() - killed_at < 20, "the stand-in did not take the file"
            time.sleep(0.01)
        assert int(ready.read_text()) == 3  # 1: created, 2: the actor, 3: the stand-in

        # Ray restarts the actor; it finds the file held under its own name, waits, takes
        # the file over and serves.
        handle.signal(owner.SIGNAL, "after the takeover")
        assert "after the takeover" == handle.result(timeout=60)
        served_s = time.monotonic() - killed_at
        status = ray.get(actor.status.remote(), timeout=30)
        assert status["pid"] not in (pid, stand_in.pid)
        assert served_s >= ray_host.TAKEOVER_AFTER_S
        holder = fencing.read_holder(path)
        assert holder is not None and (holder.owner, holder.pid) == (label.owner, status["pid"])
        taken = file_rows(data_dir)
        assert epoch_of(taken) == 4

        path.with_name("stand-in.go").touch()  # the stand-in attempts a write turn
        assert stand_in.wait(timeout=20) == 0, (tmp_path / "stand-in.log").read_text()
    finally:
        if stand_in.poll() is None:
            stand_in.kill()  # our own child, by its Popen
            stand_in.wait(timeout=10)
    report = json.loads(path.with_name("stand-in.json").read_text())
    print(f"\nthe restarted actor served {served_s:.2f}s after the kill")
    assert report["raised"].startswith("PartitionFenced: "), report
    assert "epoch 4; this owner opened it at epoch 3" in report["raised"]
    after = file_rows(data_dir)
    assert "stand_in" not in dict(after["meta"])
    assert after["workflow_history"][: len(taken["workflow_history"])] == taken["workflow_history"]


@pytest.mark.timeout(120)
def test_a_fenced_ray_actor_exits_and_its_restart_waits_for_a_foreign_owner(
    ray_engine: df.Engine, ray_client: df.Client, data_dir: Path
) -> None:
    import ray
    from ray.exceptions import RayActorError

    from duraflow.actors import messages as m

    host: Any = ray_client._host  # reason: the test needs the actors
    actor = host._handles[0]
    pid = ray.get(actor.status.remote(), timeout=30)["pid"]
    wid = next(w for w in (f"fence-ray-{n}" for n in range(100)) if partition_of(w, 2) == 0)
    ray_client.start(owner.fence_waiter, workflow_id=wid)

    # An operator takes the data directory over in-process, though the actor is not stalled.
    with df.Engine(
        data_dir, runtime="local", partitions=2, archive=False, synchronous="NORMAL", takeover=True
    ) as local:
        taken = file_rows(data_dir)
        signal_ = m.Signal(workflow_id=wid, name=owner.SIGNAL, payload=b"", request_id="r-1")
        reply = ray.get(actor.call.remote(signal_), timeout=30)
        assert "taken over by a newer owner" in str(reply.error), reply
        deadline = time.monotonic() + 20
        while _alive(pid):  # the fenced incarnation ends its process
            assert time.monotonic() < deadline, "the fenced actor's process did not exit"
            time.sleep(0.05)
        assert file_rows(data_dir) == taken
        # Ray restarts it; the file is held by a process that is not an earlier incarnation
        # of the actor, so the restart waits instead of taking it back.
        while True:  # (calls that reached the dying incarnation fail: ask again)
            waiting = actor.status.remote()
            ready, _ = ray.wait([waiting], timeout=ray_host_takeover_s() + 2)
            if not ready:
                break
            with pytest.raises(RayActorError):
                ray.get(waiting)
            assert time.monotonic() < deadline, "the fenced actor was not restarted"
        local.client().get_handle(wid).signal(owner.SIGNAL, "local")
        assert "local" == local.client().get_handle(wid).result(timeout=10)
    # Once the in-process owner closed, the restarted actor opens the file and serves.
    status = ray.get(waiting, timeout=30)
    assert status["pid"] != pid
    assert "local" == ray_client.get_handle(wid).result(timeout=30)


def ray_host_takeover_s() -> float:
    from duraflow.actors import ray_host

    return ray_host.TAKEOVER_AFTER_S


def _alive(pid: int) -> bool:
    try:
        return _state(pid) not in ("Z", "X")
    except FileNotFoundError:
        return False
