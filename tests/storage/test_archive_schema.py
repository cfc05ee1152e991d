"""Archive schemas, and events to history rows for every event type."""

from __future__ import annotations

import datetime as dt
import json

import msgspec
import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.transforms import IdentityTransform

from duraflow.cdc import events as ev
from duraflow.description import describe_closed_run
from duraflow.storage import codec
from duraflow.storage.archive_schema import (
    HISTORY,
    PAYLOAD_FIELDS,
    TABLES,
    drop_duplicates,
    event_data,
    history_rows,
    max_lsns,
)
from duraflow.storage.catalog import Archive
from duraflow.storage.iceberg import archive_batch
from duraflow.storage.query import connect
from tests.storage.fakes import one_of_each

COMMON = {"workflow_id", "run_id", "workflow_type", "event_id", "partition", "lsn", "at_us"}


def _expected_data(event: ev.Event) -> dict[str, object]:
    fields = {k: v for k, v in msgspec.structs.asdict(event).items() if k not in COMMON}
    for name in PAYLOAD_FIELDS & fields.keys():
        fields[name] = codec.decode(fields[name])
    return fields


def test_one_of_each_covers_every_event_type() -> None:
    assert sorted(ev.EVENT_TYPES) == sorted(ev.event_type(e) for e in one_of_each())


def test_every_event_type_becomes_a_history_row_and_back() -> None:
    events = one_of_each()
    rows = history_rows(events).to_pylist()

    assert len(events) == len(rows)
    for event, row in zip(events, rows, strict=True):
        assert event == ev.decode_event(row["raw"])
        assert ev.event_type(event) == row["event_type"]
        assert (event.workflow_id, event.run_id, event.workflow_type) == (
            row["workflow_id"],
            row["run_id"],
            row["workflow_type"],
        )
        assert (event.event_id, event.partition, event.lsn) == (
            row["event_id"],
            row["partition"],
            row["lsn"],
        )
        assert event.at_us == round(row["event_time"].timestamp() * 1e6)
        assert row["event_time"].date() == row["event_date"]
        assert _expected_data(event) == json.loads(row["data"])


def test_every_event_type_round_trips_through_iceberg_and_duckdb(archive: Archive) -> None:
    events = one_of_each()
    archive_batch(archive, history_rows(events))

    with connect(archive) as q:
        raw = q.sql("SELECT raw FROM history ORDER BY lsn").fetchall()
        data = q.sql("SELECT data ->> '$.args[0].items[1]' FROM history WHERE event_id = 1")

        assert events == [ev.decode_event(r[0]) for r in raw]
        assert [("b",)] == data.fetchall()


def test_payload_json_cannot_hold_is_kept_as_base64_and_raw_stays_exact() -> None:
    ext = msgspec.msgpack.encode(msgspec.msgpack.Ext(5, b"\x00\x01"))
    event = ev.SignalReceived(
        workflow_id="w", run_id="r", workflow_type="t", name="odd", payload=ext
    )
    bad = ev.SignalReceived(
        workflow_id="w", run_id="r", workflow_type="t", name="bad", payload=b"\xc1"
    )

    assert {"name": "odd", "payload": {"$msgpack": "1QUAAQ=="}} == json.loads(event_data(event))
    assert {"name": "bad", "payload": {"$msgpack": "wQ=="}} == json.loads(event_data(bad))
    assert event == ev.decode_event(history_rows([event])["raw"][0].as_py())


def test_arrow_schemas_match_the_iceberg_schemas_and_partition_by_a_date() -> None:
    for spec in TABLES.values():
        assert schema_to_pyarrow(spec.schema, include_field_ids=False) == spec.arrow
        (field,) = spec.partition_spec().fields
        assert isinstance(field.transform, IdentityTransform)
        assert pa.date32() == spec.arrow.field(spec.date_column).type
        assert {"partition", "lsn"} <= set(spec.arrow.names)
        assert 0 == spec.empty().num_rows


def test_event_date_is_the_utc_day_even_across_midnight() -> None:
    (event,) = one_of_each()[:1]
    event.at_us = int(dt.datetime(2026, 3, 1, 23, 59, 59, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    late = ev.TimerFired(workflow_id="w", run_id="r", workflow_type="t", seq=1, lsn=2)
    late.at_us = event.at_us + 2_000_000

    rows = history_rows([event, late])

    assert [dt.date(2026, 3, 1), dt.date(2026, 3, 2)] == rows["event_date"].to_pylist()


def test_history_rows_of_no_events_is_an_empty_table_with_the_schema() -> None:
    assert HISTORY.arrow == history_rows([]).schema
    assert {} == max_lsns(history_rows([]))


def test_drop_duplicates_keeps_first_rows_in_order() -> None:
    rows = pa.table({"partition": [1, 0, 1, 1], "lsn": [5, 5, 5, 6], "x": ["a", "b", "c", "d"]})

    assert ["a", "b", "d"] == drop_duplicates(rows, ("partition", "lsn"))["x"].to_pylist()


def test_history_rows_keep_the_events_own_bytes_when_given() -> None:
    events = one_of_each()
    stored = [ev.encode_event(e) for e in events]

    rows = history_rows(events, stored)

    assert stored == rows["raw"].to_pylist()
    assert history_rows(events).equals(rows)
    with pytest.raises(ValueError, match="encoded events"):
        history_rows(events, stored[:-1])


def _closing_event(cls: type[ev.Event], text: str, **common: object) -> ev.Event:
    """A ``cls`` event with every text field ``text`` (each rule's "empty" case when it is
    ""), and its other fields set; defaults that are not empty text are kept."""
    fields: dict[str, object] = {}
    for field in msgspec.structs.fields(cls):
        if field.name in COMMON or field.default not in (msgspec.NODEFAULT, ""):
            continue
        fields[field.name] = {str: text, bytes: codec.encode({"by": cls.__name__})}[field.type]
    return cls(**common, **fields)


def test_every_closing_event_closes_its_run_alike_in_the_client_and_the_archive(
    archive: Archive,
) -> None:
    """One mapping from closing event to status, error type and message: what a client says
    of an archived run (folding its history) is what the archive's ``workflows`` table says.
    A closing event added to ``CLOSING`` without a rule fails here."""
    events: list[ev.Event] = []
    histories: dict[str, list[ev.Event]] = {}
    for cls in ev.CLOSING:
        for text in ("", "why: it's over"):
            workflow_id = f"{cls.__name__}/{text}"
            common = {"workflow_id": workflow_id, "run_id": "r", "workflow_type": "order"}
            lsn = len(events)
            started = ev.WorkflowStarted(
                args=codec.encode([]), event_id=1, lsn=lsn + 1, at_us=1_000_000, **common
            )
            closing = _closing_event(cls, text, event_id=2, lsn=lsn + 2, at_us=3_000_000, **common)
            histories[workflow_id] = [started, closing]
            events += [started, closing]
    archive_batch(archive, history_rows(events))

    with connect(archive) as q:
        rows = q.sql("SELECT workflow_id, status, error_type, error_message FROM workflows")
        archived = {r[0]: r[1:] for r in rows.fetchall()}

    folded = {}
    for workflow_id, history in histories.items():
        described = describe_closed_run(history)
        outcome = ev.run_closing(history[-1])
        assert (described.status, described.error_type, described.error_message) == outcome[:3]
        folded[workflow_id] = outcome[:3]
    assert folded == archived
    assert {"completed", "failed", "cancelled", "terminated", "timed_out", "continued_as_new"} == {
        s for s, _, _ in folded.values()
    }
