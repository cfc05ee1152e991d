"""The archive tests' S3 fixtures (moto's server on 127.0.0.1), for the engine-level tests here."""

from tests.storage.conftest import moto_endpoint, s3_bucket, s3_config

__all__ = ["moto_endpoint", "s3_bucket", "s3_config"]
