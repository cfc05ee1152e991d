"""``duraflow serve`` with its archive on S3 (moto's server on 127.0.0.1) and a retention of 0,
the way a user runs it: a Ray cluster started on its own (``ray start --head``), ``serve`` in a
subprocess reading the S3 credentials from its environment, and a separate driver process.

Workflows run; their events reach the bucket; ``client.sql`` answers from the S3 archive; the
closed runs leave the partition files, and ``describe`` and ``result`` still answer, from the
archive. The partitions and the archive's consumer report the config ``df.Engine`` builds from
the same settings, and the credentials show in no output, status or file of ours.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from duraflow import runtime
from duraflow.config import S3Config
from tests.cdc.test_archive_s3_engine import bucket_keys
from tests.cdc.test_archive_tiering import partition_rows
from tests.storage.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, moto_endpoint, s3_bucket, s3_config
from tests.test_cli import (
    COMMAND_TIMEOUT_S,
    NAMESPACE,
    REPO,
    RayCluster,
    driver,
    duraflow,
    ok,
    ray_cluster,
)

__all__ = ["moto_endpoint", "ray_cluster", "s3_bucket", "s3_config"]  # fixtures used here

RUNS = 6
ARCHIVED_TIMEOUT_S = 60.0

ARCHIVED_AND_PRUNED = f"""
    import time
    from tests.cdc import consumer_crash_app as app

    app.run_workflows(client, "srv-", {RUNS})
    deadline = time.monotonic() + {ARCHIVED_TIMEOUT_S}
    while True:  # committed to the S3 tables (every second) and gone from the partitions
        archived = client.sql("SELECT count(*) AS n FROM workflows").to_pylist()[0]["n"]
        listed = client.list()
        if archived == {RUNS} and not listed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(json.dumps({{
        "archived": archived,
        "listed": [d.workflow_id for d in listed],
        "joined": client.sql(
            "SELECT count(DISTINCT w.workflow_id) AS n, "
            "count(DISTINCT w.workflow_id) FILTER (WHERE w.status = 'failed') AS failed, "
            "count(a.seq) AS steps "
            "FROM workflows w JOIN activities a USING (workflow_id, run_id)"
        ).to_pylist(),
        "result": client.get_handle("srv-2").result(timeout=10),
        "described": client.get_handle("srv-4").describe().status,
        "last_event": client.get_handle("srv-3").history()[-1].__struct_config__.tag,
    }}))
"""


def with_aws_credentials(cluster: RayCluster) -> RayCluster:
    """The cluster's environment with the moto credentials, and no other AWS setting (an
    ambient profile, region or proxy bundle must not change what the processes do)."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=S3_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return dataclasses.replace(cluster, env=env)


def assert_hidden(text: str, where: str) -> None:
    for secret in (S3_ACCESS_KEY, S3_SECRET_KEY):
        assert secret not in text, f"a credential shows in {where}"


@pytest.mark.timeout(240)
def test_a_served_deployment_archives_to_s3_and_prunes_its_partitions(
    ray_cluster: RayCluster, tmp_path: Path, s3_config: S3Config, s3_bucket: str
) -> None:
    cluster = with_aws_credentials(ray_cluster)
    data_dir = tmp_path / "data"
    warehouse = f"s3://{s3_bucket}/prod"
    serve = [
        "serve", "--address", cluster.address, "--data-dir", str(data_dir),
        "--app", "tests.cdc.consumer_crash_app", "--partitions", "2", "--synchronous", "NORMAL",
        "--retention", "0", "--archive-interval", "1s",
        "--warehouse", warehouse, "--s3-endpoint", str(s3_config.endpoint),
    ]  # fmt: skip
    served = ok(duraflow(cluster, *serve))
    try:
        assert f"Archive: {warehouse} (endpoint {s3_config.endpoint})" in served
        statuses = json.loads(ok(duraflow(cluster, "status", "--json")))

        # the partitions got the config df.Engine builds from the same settings (credentials
        # stay out of what they report)
        expected = runtime.engine_config(
            data_dir,
            partitions=2,
            namespace=NAMESPACE,
            synchronous="NORMAL",
            retention=0,
            archive_interval="1s",
            warehouse=warehouse,
            s3=S3Config(endpoint=s3_config.endpoint, region="us-east-1"),
            app_modules=["tests.cdc.consumer_crash_app"],
        )
        assert [expected.public()] * 2 == [status["config"] for status in statuses]

        run = subprocess.run(
            driver(cluster, "auto", ARCHIVED_AND_PRUNED), env=cluster.env, cwd=REPO,
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S + ARCHIVED_TIMEOUT_S,
        )  # fmt: skip
        seen = json.loads(ok(run))
        assert {
            "archived": RUNS,
            "listed": [],
            "joined": [{"n": RUNS, "failed": 1, "steps": 2 * RUNS}],
            "result": 2 * 10 + 3 * 10,
            "described": "failed",
            "last_event": "workflow.completed",
        } == seen
        assert 0 == partition_rows(data_dir, "workflows")
        keys = bucket_keys(s3_config, s3_bucket, "prod/")
        assert any(k.startswith("prod/duraflow/history/data/") for k in keys), keys
        assert any(k.startswith("prod/duraflow/workflows/metadata/") for k in keys), keys

        again = ok(duraflow(cluster, *serve))  # the same config: nothing changes
        assert "Already serving" in again
        status_json = ok(duraflow(cluster, "status", "--json"))
    finally:
        stopped = duraflow(cluster, "stop")
    assert "Stopped 2 partition actors" in ok(stopped)
    for text, where in [
        (served + again, "serve's output"),
        (status_json, "the status"),
        (run.stdout + run.stderr, "the driver's output"),
        ((data_dir / "archive" / "catalog.sqlite").read_bytes().decode("latin-1"), "the catalog"),
    ]:
        assert_hidden(text, where)
