"""Client links (``duraflow/actors/client_link.py``): a client on a partition actor's node
calls it over a Unix socket once the link is made, from each of its event loops; a partition
killed with SIGKILL while calls are in flight over its link loses none of them and does
nothing twice (the calls are retried by Ray, and the client links again to the new process)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import duraflow as df
from duraflow.actors import messages as m
from duraflow.actors.router import partition_of
from duraflow.cdc.events import decode_event
from tests.actors.test_ray_core import wait_until

RAY_ARCHIVE = False


@df.activity
def cl_step(i: int) -> int:
    return i + 1


@df.workflow
async def cl_flow(ctx: df.WorkflowContext, i: int) -> int:
    a = await ctx.activity(cl_step, i)
    return await ctx.activity(cl_step, a)


def links(client: df.Client) -> list[dict[str, int]]:
    """Each partition's ``client_links`` status: links open now, calls answered over them."""
    return [s["client_links"] for s in client._host.statuses()]  # type: ignore[attr-defined]


def id_on(partition: int, prefix: str) -> str:
    """A new workflow ID that partition ``partition`` of 2 owns."""
    while True:
        workflow_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        if partition_of(workflow_id, 2) == partition:
            return workflow_id


def linked_to(client: df.Client, partition: int) -> bool:
    """Whether ``client`` reaches ``partition`` over a link (calling it, so that it links)."""
    assert client.execute(cl_flow, 0, workflow_id=id_on(partition, "warm")) == 2
    return links(client)[partition]["open"] >= 1


def test_calls_go_over_the_link_from_every_event_loop(ray_client: df.Client) -> None:
    for partition in (0, 1):
        wait_until(lambda p=partition: linked_to(ray_client, p), what=f"a link to {partition}")
    before = sum(s["calls"] for s in links(ray_client))
    assert [ray_client.execute(cl_flow, i) for i in range(10)] == [i + 2 for i in range(10)]
    after_sync = sum(s["calls"] for s in links(ray_client))
    assert after_sync - before >= 10  # each workflow: its start and result wait at least

    async def from_a_new_loop() -> list[Any]:
        return await asyncio.gather(*(ray_client.execute_async(cl_flow, i) for i in range(40)))

    # The first calls of a new loop go by Ray while its links are made; then over them.
    assert asyncio.run(from_a_new_loop()) == [i + 2 for i in range(40)]

    async def twice() -> tuple[list[Any], int, int]:
        await from_a_new_loop()
        for _ in range(200):  # its links are made (on this loop, which must keep running)
            if min(s["open"] for s in await asyncio.to_thread(links, ray_client)) >= 2:
                break
            await asyncio.sleep(0.05)
        calls = sum(s["calls"] for s in links(ray_client))
        results = await from_a_new_loop()
        open_links = max(s["open"] for s in links(ray_client))
        return results, sum(s["calls"] for s in links(ray_client)) - calls, open_links

    results, calls, open_links = asyncio.run(twice())
    assert results == [i + 2 for i in range(40)]
    assert calls >= 2  # a batch per partition at least, over this loop's links
    assert open_links >= 2  # the sync client's link and this loop's


def history_counts(data_dir: Path, workflow_ids: set[str]) -> dict[str, Counter[str]]:
    """Per workflow ID, how many events of each type its runs have (read from the files)."""
    counts: dict[str, Counter[str]] = {w: Counter() for w in workflow_ids}
    for path in sorted((data_dir / "partitions").glob("p*.sqlite")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT workflow_id, body FROM workflow_history").fetchall()
        finally:
            conn.close()
        for workflow_id, body in rows:
            if workflow_id in counts:
                counts[workflow_id][type(decode_event(body)).__name__] += 1
    return counts


@df.workflow
async def cl_gated(ctx: df.WorkflowContext, i: int) -> int:
    await ctx.wait_for_signal("go")
    return await cl_flow(ctx, i)


def test_a_partition_killed_mid_call_loses_nothing_and_repeats_nothing(
    ray_client: df.Client, data_dir: Path
) -> None:
    """Workflows parked on a signal have their result waits in flight over the link, and
    others start and run while the partition's process is killed: every one ends with its
    result, started once, each activity recorded once."""
    wait_until(lambda: linked_to(ray_client, 0), what="a link to partition 0")
    pid = ray_client._host.statuses()[0]["pid"]  # type: ignore[attr-defined]
    gated = [id_on(0, "gated") for _ in range(50)]
    flowing = [id_on(0, "flowing") for _ in range(150)]
    spans: list[tuple[float, float]] = []

    async def run_all() -> tuple[list[Any], list[Any], float]:
        loop = asyncio.get_running_loop()
        handles = [
            await ray_client.start_async(cl_gated, i, workflow_id=w) for i, w in enumerate(gated)
        ]
        waits = [asyncio.ensure_future(h.result_async()) for h in handles]

        async def one(i: int) -> Any:
            await asyncio.sleep(i * 0.005)  # starts spread over 0.75 s
            began = loop.time()
            result = await ray_client.execute_async(cl_flow, i, workflow_id=flowing[i])
            spans.append((began, loop.time()))
            return result

        running = [asyncio.ensure_future(one(i)) for i in range(len(flowing))]
        await asyncio.sleep(0.3)
        assert not any(wait.done() for wait in waits)  # their result waits are in flight
        killed_at = loop.time()
        os.kill(pid, signal.SIGKILL)
        for handle in handles:
            await handle.signal_async("go")
        return await asyncio.gather(*waits), await asyncio.gather(*running), killed_at

    parked, ran, killed_at = ray_client._block(run_all())  # type: ignore[attr-defined]
    assert parked == [i + 2 for i in range(len(gated))]
    assert ran == [i + 2 for i in range(len(flowing))]
    assert any(began < killed_at for began, _ in spans)  # some ran before the kill
    assert any(began > killed_at for began, _ in spans)  # and some after it
    reports = ray_client._host.status_reports(30.0)  # type: ignore[attr-defined]
    assert reports[0]["pid"] != pid  # the partition's process was replaced
    for workflow_id, seen in history_counts(data_dir, {*gated, *flowing}).items():
        assert seen["WorkflowStarted"] == 1, (workflow_id, seen)
        assert seen["ActivityCompleted"] == 2, (workflow_id, seen)
        assert seen["WorkflowCompleted"] == 1, (workflow_id, seen)
    wait_until(lambda: linked_to(ray_client, 0), what="a link to the restarted partition 0")


# -- the link itself, with a partition's end in a process of its own -------------------------

PARTITION_END = """
import asyncio, sys
from duraflow.actors import client_link

async def answer(kind, data):
    method, arg = client_link.decoded(kind, data)
    if method == "call_batch":
        raise ValueError("left to Ray")
    if arg.workflow_id == "slow":
        await asyncio.Event().wait()  # until the process is killed
    return {"method": method, "workflow_id": arg.workflow_id}

async def main():
    address, _server = await client_link.serve(answer, client_link.Served())
    print(address[1:], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_replies_refusals_and_a_killed_partition_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a real socket to another process: a reply comes back as the partition gave it; a
    call it cannot answer over the link is left to Ray; when its process is killed with
    SIGKILL, the call in flight and every later one fail with LinkClosed. With
    DURAFLOW_CLIENT_LINK=off nothing listens."""
    from duraflow.actors import client_link

    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", PARTITION_END], cwd=repo, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        address = "\0" + child.stdout.readline().strip()

        async def scenario() -> None:
            link = await client_link.ClientLink.connect(address)
            describe = client_link.encoded("call", m.Describe(workflow_id="w-1"))
            assert describe is not None
            assert await link.call(*describe) == (True, {"method": "call", "workflow_id": "w-1"})
            assert await link.call(client_link.BATCH, b"\x90") == (False, None)
            slow = client_link.encoded("call", m.Describe(workflow_id="slow"))
            assert slow is not None
            in_flight = asyncio.ensure_future(link.call(*slow))
            await asyncio.sleep(0.1)
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(client_link.LinkClosed):
                await in_flight
            assert not link.open
            with pytest.raises(client_link.LinkClosed):
                await link.call(*describe)

        asyncio.run(scenario())
    finally:
        child.kill()
        child.wait()

    async def nothing(kind: str, data: bytes) -> None:
        return None

    monkeypatch.setenv(client_link.LINK_ENV, "off")
    assert asyncio.run(client_link.serve(nothing, client_link.Served())) == (None, None)


def test_calls_keep_their_order_while_a_link_is_made() -> None:
    """A call made while an earlier one still goes by Ray goes by Ray too (it must not
    overtake it over the new link); a mailbox poll may; once nothing is on its way by Ray,
    calls take the link. (The partition's end runs in this process, on a real socket; the
    Ray calls are stand-ins that record the order they were made in.)"""
    from duraflow.actors import client_link

    answered: list[str] = []

    async def answer(kind: str, data: bytes) -> Any:
        answered.append(kind)
        return "over the link"

    async def scenario() -> list[str]:
        address, server = await client_link.serve(answer, client_link.Served())
        assert address is not None and server is not None
        links = client_link.Links(
            lambda partition: asyncio.sleep(0, {"node_id": "here", "address": address}),
            lambda: "here",
        )
        slow_ray = asyncio.Event()
        by_ray: list[str] = []

        def ray_call(label: str, wait: bool = False) -> Any:
            async def call() -> str:
                by_ray.append(label)
                if wait:
                    await slow_ray.wait()
                return "by Ray"

            return call

        signal = client_link.encoded(
            "call", m.Signal(workflow_id="w", name="go", payload=b"", request_id="r")
        )
        poll = client_link.encoded("call", m.CollectResults(mailbox="box", wait_s=0.0))
        first = asyncio.ensure_future(links.call(0, signal, ray_call("first", wait=True)))
        await asyncio.sleep(0.1)  # the link is made meanwhile
        assert await links.call(0, signal, ray_call("second")) == "by Ray"
        assert await links.call(0, poll, ray_call("poll")) == "over the link"
        slow_ray.set()
        assert await first == "by Ray"
        assert await links.call(0, signal, ray_call("third")) == "over the link"
        assert by_ray == ["first", "second"]
        server.close()
        return answered

    assert asyncio.run(scenario()) == ["CollectResults", "Signal"]
