"""An archive made before the runs family's columns (``continued_from``, ``next_run_id``,
``attempt``, ``search_attributes`` of ``workflows``) gets them when it is opened again: schema
evolution is additive, and the rows it held read them as null."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.schema import Schema

from duraflow.storage import archive_schema
from duraflow.storage.catalog import NAMESPACE, open_archive

NEW = ("continued_from", "next_run_id", "attempt", "search_attributes")


def _some(kind: pa.DataType) -> Any:
    """A value of a required column's type."""
    if pa.types.is_timestamp(kind):
        return dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    if pa.types.is_date(kind):
        return dt.date(2026, 1, 1)
    if pa.types.is_integer(kind):
        return 1
    return "x"


def test_an_older_workflows_table_gains_the_new_columns(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    archive = open_archive(root)
    spec = archive_schema.WORKFLOWS
    old = Schema(*(f for f in spec.schema.fields if f.name not in NEW))
    older = dataclasses.replace(spec, schema=old)
    archive.catalog.drop_table((NAMESPACE, spec.name))
    table = archive.catalog.create_table(
        (NAMESPACE, spec.name),
        schema=old,
        partition_spec=older.partition_spec(),
        sort_order=older.sort_order(),
    )
    assert not set(NEW) & {f.name for f in table.schema().fields}
    arrow_old = pa.schema([f for f in spec.arrow if f.name not in NEW])
    row = {f.name: None if f.nullable else _some(f.type) for f in arrow_old}
    row |= {"workflow_id": "w", "run_id": "r", "workflow_type": "t", "status": "completed"}
    table.append(pa.Table.from_pylist([row], schema=arrow_old).cast(table.schema().as_arrow()))

    reopened = open_archive(root)
    names = [f.name for f in reopened.workflows.schema().fields]
    assert names[-len(NEW) :] == list(NEW)
    [read] = reopened.workflows.scan().to_arrow().to_pylist()
    assert ("r", "completed") == (read["run_id"], read["status"])
    assert all(read[name] is None for name in NEW)
