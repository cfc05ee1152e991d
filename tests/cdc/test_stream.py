"""The change-log reader that subscriptions and the archive's consumer share: per-partition
offsets, nothing skipped, a batch its user did not take read again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duraflow as df
from duraflow.actors import messages as m
from duraflow.cdc.events import decode_event
from duraflow.cdc.stream import ChangeLogReader, heads


@df.workflow
async def stream_noop(ctx: df.WorkflowContext, i: int) -> int:
    return i


def test_every_event_is_handed_over_once_in_lsn_order_and_a_refused_batch_comes_again(
    tmp_path: Path,
) -> None:
    with df.Engine(tmp_path, runtime="local", partitions=2, archive=False) as engine:
        client = engine.client()
        for i in range(6):
            client.start(stream_noop, i, workflow_id=f"stream-{i}").result(timeout=10)
        host = engine._host

        async def follow() -> tuple[dict[int, int], dict[int, int], dict[int, list[int]]]:
            before = await heads(host)
            reader = ChangeLogReader(host, {}, limit=3)  # several batches per partition
            taken: dict[int, list[int]] = {p: [] for p in reader.offsets}
            refused: set[int] = set()

            async def take(partition: int, batch: m.EventBatch) -> bool:
                if batch.events and partition not in refused:
                    refused.add(partition)  # the first batch with events: not taken
                    return False
                taken[partition] += [decode_event(body).lsn for body in batch.events]
                return True

            tasks = [asyncio.create_task(reader.follow(p, take)) for p in reader.offsets]
            try:
                assert await reader.caught_up(10)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return before, reader.offsets, taken

        before, offsets, taken = asyncio.run(follow())

    assert before == offsets
    assert {0, 1} == {p for p, head in before.items() if head > 0}  # both partitions have runs
    assert {p: list(range(1, head + 1)) for p, head in before.items()} == taken
