"""Archive fixtures: a real SqlCatalog in tmp_path, and a real S3 (moto's server) on 127.0.0.1."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duraflow.storage.catalog import Archive, S3Config, open_archive

# moto accepts any credentials; these are made up and only ever reach 127.0.0.1
S3_ACCESS_KEY = "test-access-key-id"
S3_SECRET_KEY = "test-secret-key-do-not-log"


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    """A fresh archive: SQLite catalog and local warehouse under tmp_path."""
    return open_archive(tmp_path / "archive")


@pytest.fixture
def warm_dir(tmp_path: Path) -> Path:
    return tmp_path / "warm"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread on 127.0.0.1 (never 0.0.0.0), one for the session.

    The process's AWS_* settings are cleared while it runs: the tests pass credentials
    explicitly, and an ambient profile, region or proxy bundle must not change what they do.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        import os

        for name in [n for n in os.environ if n.startswith("AWS_")]:
            env.delenv(name)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_config(moto_endpoint: str) -> S3Config:
    return S3Config(
        endpoint=moto_endpoint,
        access_key_id=S3_ACCESS_KEY,
        secret_access_key=S3_SECRET_KEY,
        region="us-east-1",
    )


@pytest.fixture
def s3_bucket(s3_config: S3Config) -> str:
    """A new, empty bucket (pyiceberg creates none)."""
    name = f"archive-{uuid.uuid4().hex[:12]}"
    s3_client(s3_config).create_bucket(Bucket=name)
    return name


def s3_client(config: S3Config) -> Any:
    """A boto3 S3 client of the moto server ``config`` points at."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=config.endpoint,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        region_name=config.region,
    )
