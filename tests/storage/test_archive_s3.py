"""The archive on S3 (moto's server on 127.0.0.1): write, query warm + cold, compact, expire;
credentials stay out of reprs, logs, errors and the catalog."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from duraflow.errors import ConfigurationError
from duraflow.storage.archive_schema import history_rows
from duraflow.storage.catalog import S3Config, open_archive
from duraflow.storage.iceberg import archive_batch, committed_offsets, data_files
from duraflow.storage.iceberg_upkeep import compact, days, expire
from duraflow.storage.query import connect
from duraflow.storage.warm import list_segments, write_segment
from tests.storage.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.storage.fakes import FakePartitions, expected_counts

COUNTS = (
    "SELECT (SELECT count(*) FROM history), "
    "(SELECT count(DISTINCT (workflow_id, run_id, event_id)) FROM history), "
    "(SELECT count(*) FROM workflows), (SELECT count(*) FROM activities)"
)


def test_archive_on_s3_end_to_end(
    tmp_path: Path, s3_config: S3Config, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    archive_dir, warm_dir = tmp_path / "archive", tmp_path / "warm"
    archive = open_archive(archive_dir, warehouse=f"s3://{s3_bucket}/prod", s3=s3_config)
    fake = FakePartitions(partitions=2, start=dt.datetime(2026, 3, 1, 22, tzinfo=dt.timezone.utc))
    seen = []
    for batch in range(4):
        for i in range(6):
            fake.run(f"wf-{batch}-{i}", activities=2, retries=i % 2)
        fake.advance(3600)  # the batches span midnight
        events = fake.take()
        seen += events
        if batch < 3:
            archive_batch(archive, history_rows(events))
        else:  # the last batch is still warm
            rows = history_rows(events)
            for p in (0, 1):
                write_segment(warm_dir, rows.filter(pc.equal(rows["partition"], p)))
    expected = expected_counts(seen)
    total = tuple(expected[k] for k in ("history", "history", "workflows", "activities"))

    with connect(archive, warm_dir) as q:
        assert [total] == q.sql(COUNTS).fetchall()
    assert all(p.startswith(f"s3://{s3_bucket}/prod/") for p in data_files(archive.history))
    assert 2 == len(list_segments(warm_dir))

    compacted = [compact(archive.history, day) for day in days(archive.history)]
    expired = expire(archive.history, time.time() + 1)
    reopened = open_archive(archive_dir, warehouse=f"s3://{s3_bucket}/prod", s3=s3_config)

    assert [1, 1] == [c.files_after for c in compacted]
    rewritten = [c.files_before for c in compacted if c.files_before > 1]
    assert expired.data_files_deleted == sum(rewritten) > 0
    assert committed_offsets(archive.history) == committed_offsets(reopened.history)
    with connect(reopened, warm_dir) as q:
        assert [total] == q.sql(COUNTS).fetchall()
        assert [("wf-3-5", 1)] == q.sql(
            "SELECT workflow_id, count(*) FROM workflows WHERE workflow_id = 'wf-3-5' GROUP BY 1"
        ).fetchall()

    for shown in (repr(s3_config), str(s3_config), repr(archive), repr(archive.catalog)):
        assert S3_SECRET_KEY not in shown and S3_ACCESS_KEY not in shown
    assert S3_SECRET_KEY not in caplog.text
    assert S3_SECRET_KEY.encode() not in (archive_dir / "catalog.sqlite").read_bytes()


def test_errors_about_a_bucket_never_show_the_credentials(
    tmp_path: Path, s3_config: S3Config
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_archive(tmp_path / "a", warehouse="s3://no-such-bucket/x", s3=s3_config)

    assert "s3://no-such-bucket/x" in str(caught.value)
    assert S3_SECRET_KEY not in str(caught.value)
    assert S3_ACCESS_KEY not in str(caught.value)


def test_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="local warehouse"):
        open_archive(tmp_path, s3=S3Config(endpoint="http://127.0.0.1:1"))
    with pytest.raises(ConfigurationError, match="needs a bucket"):
        open_archive(tmp_path, warehouse="s3://")
    with pytest.raises(ConfigurationError, match="cannot contain"):
        open_archive(tmp_path / "50%#off")
