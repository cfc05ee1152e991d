"""One EngineConfig on every path: ``df.Engine`` and ``duraflow serve`` build it from their
options with the same function, and the in-process host, its partitions, the Ray partition
and consumer actors take every setting from it; the S3 credentials it carries are never shown.

The guards here fail when a setting is added to EngineConfig without a ``duraflow serve``
option or an ``Engine`` keyword (and so could be set on one path and dropped on another).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

import duraflow as df
from duraflow.cli.deploy import serve_config as cli_serve_config
from duraflow.cli.main import build_parser, main
from duraflow.config import EngineConfig, S3Config

KEY_ID = "cfg-access-key-id"
SECRET = "cfg-secret-do-not-show"
TOKEN = "cfg-session-token-do-not-show"
FIELDS = {field.name for field in msgspec.structs.fields(EngineConfig)}
ENGINE_CANNOT_SET = {"app_modules"}
"""Settings only ``duraflow serve`` sets: an Engine ships its script's workflows by value."""


def serve_config(*argv: str) -> EngineConfig:
    """The config ``duraflow serve ARGV`` would serve (parsed, built; no Ray joined)."""
    return cli_serve_config(build_parser().parse_args(["serve", *argv]))


def every_serve_option(data_dir: Path) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--partitions", "3", "--namespace", "cfg-ns",
        "--synchronous", "normal", "--activity-threads", "7", "--max-resident-runs", "50",
        "--hibernate-after", "never", "--no-archive", "--retention", "0",
        "--archive-interval", "1m30s", "--warehouse", "s3://bucket/prefix",
        "--s3-endpoint", "http://127.0.0.1:9", "--s3-region", "eu-west-3",
        "--app", "tests.cli_app", "--app", "tests.cdc.consumer_crash_app",
        "--partition-resources", '{"duraflow": 1}', "--deadlock-threshold", "never",
        "--workers", '{"gpu": {"size": 2, "num_gpus": 1}}',
    ]  # fmt: skip


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``duraflow serve`` reads the S3 credentials from (never its command line)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def test_serve_has_an_option_for_every_setting(tmp_path: Path, aws_credentials: None) -> None:
    defaults = serve_config("--data-dir", str(tmp_path / "a"))
    config = serve_config(*every_serve_option(tmp_path / "b"))

    assert FIELDS == set(config.differences(defaults))
    expected = EngineConfig(
        data_dir=str(tmp_path / "b"),
        partitions=3,
        namespace="cfg-ns",
        synchronous="NORMAL",
        activity_threads=7,
        max_resident_runs=50,
        hibernate_after_s=None,
        retention_s=0.0,
        archive=False,
        warehouse="s3://bucket/prefix",
        s3=S3Config(
            endpoint="http://127.0.0.1:9",
            access_key_id=KEY_ID,
            secret_access_key=SECRET,
            region="eu-west-3",
        ),
        archive_interval_s=90.0,
        app_modules=("tests.cli_app", "tests.cdc.consumer_crash_app"),
        partition_resources={"duraflow": 1.0},
        deadlock_threshold_s=None,
        workers={"gpu": df.WorkerPool(size=2, num_gpus=1)},
    )
    assert expected == config


def test_an_engine_builds_the_config_serve_builds_and_its_partitions_use_it(
    tmp_path: Path, aws_credentials: None
) -> None:
    served = serve_config(*every_serve_option(tmp_path / "data"))
    with df.Engine(
        tmp_path / "data",
        runtime="local",
        partitions=3,
        namespace="cfg-ns",
        synchronous="NORMAL",
        activity_threads=7,
        max_resident_runs=50,
        hibernate_after=None,
        archive=False,  # the S3 warehouse below is never opened
        retention=0,
        archive_interval="1m30s",
        warehouse="s3://bucket/prefix",
        s3=S3Config("http://127.0.0.1:9", KEY_ID, SECRET, "eu-west-3"),
        partition_resources={"duraflow": 1},
        deadlock_threshold=None,
        workers={"gpu": df.WorkerPool(size=2, num_gpus=1)},
    ) as engine:
        defaults = serve_config("--data-dir", str(tmp_path / "other"))
        assert FIELDS - ENGINE_CANNOT_SET == set(engine.config.differences(defaults))
        assert msgspec.structs.replace(served, app_modules=()) == engine.config
        parts = engine._host._parts  # type: ignore[union-attr]  # reason: the partitions themselves
        assert [engine.config] * 3 == [part.config for part in parts]


def test_the_credentials_are_never_shown(
    tmp_path: Path, aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    config = serve_config("--data-dir", str(tmp_path), "--warehouse", "s3://b/p")
    s3 = config.s3
    assert s3 is not None
    assert (KEY_ID, SECRET, TOKEN) == (s3.access_key_id, s3.secret_access_key, s3.session_token)
    other = msgspec.structs.replace(config, retention_s=5.0)
    rich = list(config.__rich_repr__()) + list(s3.__rich_repr__())
    shown: list[Any] = [repr(config), str(config), config.public(), rich, other.differences(config)]
    shown.append(s3.scrub(f"refused: {KEY_ID} {SECRET} {TOKEN}"))
    for text in map(str, shown):
        assert KEY_ID not in text and SECRET not in text and TOKEN not in text
    assert None is EngineConfig.from_public(config.public()).s3.access_key_id  # type: ignore[union-attr]  # reason: as above
    assert config == EngineConfig.decode(config.encode())  # what the actors get: all of it


def test_a_namespace_serving_other_settings_is_refused_naming_them(tmp_path: Path) -> None:
    from duraflow.actors.ray_host import check_same_deployment  # no Ray call made

    running = serve_config("--data-dir", str(tmp_path), "--retention", "1h")
    wanted = msgspec.structs.replace(running, retention_s=0.0, s3=S3Config(None, KEY_ID, SECRET))
    status = {"data_dir": running.data_dir, "config": running.public()}
    check_same_deployment(status, running)
    with pytest.raises(df.ConfigurationError) as caught:
        check_same_deployment(status, wanted)
    message = str(caught.value)
    assert "retention_s=3600.0, not 0.0" in message and "s3=None, not {" in message
    assert KEY_ID not in message and SECRET not in message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--s3-endpoint", "http://127.0.0.1:9"], "go with an s3:// --warehouse"),
        (["--warehouse", "s3://b/p", "--s3-region", "eu-west-3"], "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_s3_options_of_serve_exit_2_at_once(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    unreachable = ["--address", "127.0.0.1:1", "--data-dir", str(tmp_path)]
    assert 2 == main(["serve", *unreachable, *argv])
    err = capsys.readouterr().err
    assert message in err and KEY_ID not in err


def test_ray_actors_report_the_config_the_engine_built(ray_session: None, tmp_path: Path) -> None:
    from duraflow.actors import ray_host

    namespace = f"test-{uuid.uuid4().hex[:12]}"
    options: dict[str, Any] = {
        "runtime": "ray",
        "partitions": 2,
        "namespace": namespace,
        "synchronous": "NORMAL",
        "activity_threads": 5,
        "max_resident_runs": 20,
        "hibernate_after": "2m",
        "retention": "1h",
        "warehouse": str(tmp_path / "warehouse"),
        "archive_interval": "1m",
        "partition_resources": {"gadget": 0.01},
    }
    with df.Engine(tmp_path / "data", **options) as engine:
        shown = engine.config.public()
        statuses = engine._host.statuses()  # type: ignore[union-attr]  # reason: the actors' own status
        assert [shown, shown] == [status["config"] for status in statuses]
        consumer = ray_host.call_actor(engine._consumer_actor, "status", timeout=30)
        assert shown == consumer["config"]
        # another engine over the same namespace with other settings does not silently
        # run with the first one's
        with pytest.raises(df.ConfigurationError, match=r"retention_s=3600\.0, not 0\.0"):
            df.Engine(tmp_path / "data", **{**options, "retention": 0})


def test_temporary_credentials_reach_the_archives_readers_and_writers() -> None:
    from duraflow.storage.catalog import catalog_properties, s3_filesystem

    s3 = S3Config("http://127.0.0.1:9", KEY_ID, SECRET, "eu-west-3", session_token=TOKEN)
    assert TOKEN == catalog_properties(s3)["s3.session-token"]
    assert s3_filesystem(s3)  # pyarrow takes the token (it refuses a token without a key)
    assert None is s3.without_credentials().session_token
    with pytest.raises(df.ConfigurationError, match="session_token goes with access_key_id"):
        S3Config(session_token=TOKEN)
