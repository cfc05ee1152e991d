"""The archive on S3 through the engine (moto's server on 127.0.0.1): workflows run, their
events reach the bucket, ``client.sql`` and the handles of runs that left the partitions read
them back; the credentials appear in no repr, log line, error or file of ours."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

import duraflow as df
from duraflow.storage.catalog import S3Config
from tests.cdc import consumer_crash_app as app
from tests.cdc.test_archive_tiering import partition_rows
from tests.storage.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, s3_client

SECRETS = (S3_ACCESS_KEY, S3_SECRET_KEY)


def bucket_keys(config: S3Config, bucket: str, prefix: str) -> list[str]:
    pages = (
        s3_client(config).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def assert_hidden(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a credential shows in {where}"


def test_engine_archives_to_s3_and_answers_from_it(
    runtime: str,
    data_dir: Path,
    s3_config: S3Config,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # duraflow's and pyiceberg's own log lines (boto3, used here to list the bucket, logs its
    # requests' Authorization headers at DEBUG: that is this test's doing, not the engine's)
    caplog.set_level(logging.DEBUG, logger="duraflow")
    caplog.set_level(logging.DEBUG, logger="pyiceberg")
    extra = {} if runtime == "local" else {"namespace": f"test-{uuid.uuid4().hex[:12]}"}
    with df.Engine(
        data_dir,
        runtime=runtime,
        partitions=app.PARTITIONS,
        synchronous="NORMAL",
        warehouse=f"s3://{s3_bucket}/prod",
        s3=s3_config,
        archive_interval=3600,
        retention=0,
        **extra,
    ) as engine:
        client = engine.client()
        app.run_workflows(client, "s3-", 6)
        assert engine.sync_archive(timeout=30)
        # warm: queryable before anything reaches the bucket
        assert [{"n": 6}] == client.sql("SELECT count(*) AS n FROM workflows").to_pylist()
        assert [] == bucket_keys(s3_config, s3_bucket, "prod/duraflow/history/data/")

        engine.commit_archive(timeout=60)  # cold: Parquet and metadata in the bucket

        keys = bucket_keys(s3_config, s3_bucket, "prod/")
        assert any(k.startswith("prod/duraflow/history/data/") for k in keys), keys
        assert any(k.startswith("prod/duraflow/workflows/metadata/") for k in keys), keys
        assert [] == sorted((data_dir / "archive" / "warm").glob("p*.parquet"))
        assert [{"n": 6, "failed": 1, "steps": 12}] == client.sql(
            "SELECT count(DISTINCT w.workflow_id) AS n, "
            "count(DISTINCT w.workflow_id) FILTER (WHERE w.status = 'failed') AS failed, "
            "count(a.seq) AS steps "
            "FROM workflows w JOIN activities a USING (workflow_id, run_id)"
        ).to_pylist()
        # retention 0: the runs left the partitions; their handles read the bucket
        assert 0 == partition_rows(data_dir, "workflows")
        assert app.expected(2) == client.get_handle("s3-2").result(timeout=10)
        assert "failed" == client.get_handle("s3-4").describe().status
        assert "workflow.completed" == client.get_handle("s3-3").history()[-1].__struct_config__.tag

        for shown in (repr(engine), repr(client), repr(client._archive), repr(s3_config)):
            assert_hidden(shown, "a repr")

    check_no_credentials_shown(data_dir, caplog, capfd)


def check_no_credentials_shown(
    data_dir: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    captured = capfd.readouterr()
    assert_hidden(caplog.text, "the log")
    assert_hidden(captured.out + captured.err, "the output")
    catalog = (data_dir / "archive" / "catalog.sqlite").read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in catalog


def test_a_warehouse_that_cannot_be_opened_is_reported_without_credentials(
    data_dir: Path,
    s3_config: S3Config,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="duraflow")
    caplog.set_level(logging.DEBUG, logger="pyiceberg")
    with df.Engine(
        data_dir,
        runtime="local",
        partitions=1,
        synchronous="NORMAL",
        warehouse="s3://no-such-bucket/x",
        s3=s3_config,
    ) as engine:
        assert not engine.sync_archive(timeout=1)
        with pytest.raises(TimeoutError) as caught:
            engine.commit_archive(timeout=1.5)
        assert "no-such-bucket" in str(caught.value)
        assert_hidden(str(caught.value), "an error")
        assert app.expected(0) == engine.client().execute(app.cc_flow, 0)  # runs go on
        assert "no-such-bucket" in caplog.text  # the consumer logs why it waits
    check_no_credentials_shown(data_dir, caplog, capfd)
