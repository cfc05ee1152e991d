"""A subscriber in another driver process of the same Ray cluster sees the events."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray

import duraflow as df

ROOT = Path(__file__).resolve().parents[2]


@df.workflow
async def cdc_remote_flow(ctx: df.WorkflowContext, n: int) -> int:
    return n * 2


@pytest.mark.timeout(120)
def test_a_subscriber_in_another_driver_gets_every_completion(ray_engine: df.Engine) -> None:
    address = ray.get_runtime_context().gcs_address
    script = textwrap.dedent(
        f"""
        import json, sys
        import duraflow as df
        client = df.Client.connect({address!r}, namespace={ray_engine.namespace!r})
        sub = client.subscribe(event_types=["workflow.completed"], from_="earliest")
        print("READY", flush=True)
        seen = []
        while len(seen) < 10:
            event = sub.get(timeout=60)
            if event is None:
                break
            seen.append(event.workflow_id)
        sub.close()
        print(json.dumps(sorted(seen)), flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert "READY" == child.stdout.readline().strip(), (
            child.stderr.read() if child.stderr else ""
        )
        client = ray_engine.client()
        for i in range(10):
            client.start(cdc_remote_flow, i, workflow_id=f"cdc-remote-{i}")
        out, err = child.communicate(timeout=90)
    finally:
        if child.poll() is None:
            child.kill()
    assert sorted(f"cdc-remote-{i}" for i in range(10)) == json.loads(
        out.strip().splitlines()[-1]
    ), err
