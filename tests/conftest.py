"""Shared fixtures: a fresh data directory per test and an in-process engine over it.

Workflow and activity names are global (a registry by name), so each test module gives its
workflows names of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import duraflow as df


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory no other test uses."""
    return tmp_path / "data"


@pytest.fixture
def engine(data_dir: Path) -> Iterator[df.Engine]:
    """An in-process engine with 2 partitions, so cross-partition paths are exercised.

    synchronous=NORMAL keeps the suite fast; durability under FULL is the crash test's job.
    """
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as eng:
        yield eng


@pytest.fixture
def client(engine: df.Engine) -> df.Client:
    return engine.client()
