"""The archive's three tables (history, workflows, activities): schemas and how rows are made.

``history`` holds one row per event, made from events by :func:`history_rows`. ``workflows``
(one row per closed run) and ``activities`` (one row per closed activity) are derived from
history rows by the SQL in :data:`WORKFLOWS_SQL` and :data:`ACTIVITIES_SQL` (DuckDB, over the
rows :data:`FACTS_SQL` picks), so the cold tier (``storage/iceberg.py``) and the query views
over warm segments (``storage/query.py``) compute them the same way.

Every table carries ``partition`` and ``lsn``: for a history row, the event's own; for a
derived row, those of the event that closed it. Offsets per partition are what make each
table exactly-once (see ``storage/iceberg.py``).

Schema evolution: add optional columns only (DuckDB's ``read_parquet`` binds by name); never
rename, retype or reuse a field ID.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    BinaryType,
    DateType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from duraflow.cdc.events import (
    CLOSING,
    CLOSING_RULES,
    ClosingRule,
    Event,
    FromField,
    encode_event,
    event_type,
)
from duraflow.storage import codec

PAYLOAD_FIELDS = frozenset({"args", "result", "payload"})
"""Event fields holding msgpack made by ``storage/codec.py``; ``data`` shows them decoded."""

_COMMON_FIELDS = frozenset(
    {"workflow_id", "run_id", "workflow_type", "event_id", "partition", "lsn", "at_us"}
)


def _field(field_id: int, name: str, kind: object, required: bool = True) -> NestedField:
    return NestedField(field_id, name, kind, required=required)  # type: ignore[arg-type]  # reason: pyiceberg types are pydantic models


HISTORY_SCHEMA = Schema(
    _field(1, "workflow_id", StringType()),
    _field(2, "run_id", StringType()),
    _field(3, "workflow_type", StringType()),
    _field(4, "event_id", LongType()),
    _field(5, "event_type", StringType()),
    _field(6, "partition", IntegerType()),
    _field(7, "lsn", LongType()),
    _field(8, "event_time", TimestamptzType()),
    _field(9, "event_date", DateType()),
    _field(10, "data", StringType()),
    _field(11, "raw", BinaryType()),
)
"""One row per event. ``data`` is JSON of the type-specific fields (payloads decoded);
``raw`` is the whole event as msgpack (``encode_event``), so a history read back from the
archive replays exactly even where JSON cannot say a payload value exactly."""

WORKFLOWS_SCHEMA = Schema(
    _field(1, "workflow_id", StringType()),
    _field(2, "run_id", StringType()),
    _field(3, "workflow_type", StringType()),
    _field(4, "status", StringType()),
    _field(5, "start_time", TimestamptzType(), required=False),
    _field(6, "close_time", TimestamptzType()),
    _field(7, "duration_ms", LongType(), required=False),
    _field(8, "activity_count", LongType()),
    _field(9, "retry_count", LongType()),
    _field(10, "error_type", StringType(), required=False),
    _field(11, "error_message", StringType(), required=False),
    _field(12, "close_date", DateType()),
    _field(13, "partition", IntegerType()),
    _field(14, "lsn", LongType()),
    _field(15, "continued_from", StringType(), required=False),
    _field(16, "next_run_id", StringType(), required=False),
    _field(17, "attempt", IntegerType(), required=False),
    _field(18, "search_attributes", StringType(), required=False),
)
"""One row per closed run; ``status`` is completed, failed, cancelled, terminated, timed_out
or continued_as_new. ``continued_from`` and ``next_run_id`` link the runs of one ID (continue-
as-new, workflow retries); ``search_attributes`` is JSON of the run's last search attributes."""

ACTIVITIES_SCHEMA = Schema(
    _field(1, "workflow_id", StringType()),
    _field(2, "run_id", StringType()),
    _field(3, "workflow_type", StringType()),
    _field(4, "seq", LongType()),
    _field(5, "activity", StringType()),
    _field(6, "attempts", IntegerType()),
    _field(7, "scheduled_at", TimestamptzType(), required=False),
    _field(8, "closed_at", TimestamptzType()),
    _field(9, "duration_ms", LongType(), required=False),
    _field(10, "outcome", StringType()),
    _field(11, "error_type", StringType(), required=False),
    _field(12, "error_message", StringType(), required=False),
    _field(13, "closed_date", DateType()),
    _field(14, "partition", IntegerType()),
    _field(15, "lsn", LongType()),
)
"""One row per activity execution that closed (its own event, or its run closing first);
``outcome`` is completed, failed or cancelled."""


@dataclass(frozen=True)
class TableSpec:
    """What the archive knows about one of its tables.

    Attributes:
        name: the table's name in the catalog namespace.
        schema: its Iceberg schema; ``arrow`` is the same as an Arrow schema.
        date_column: the identity partition column (a UTC date).
        key: the columns that identify a row (duplicates are dropped on commit).
        sort: the order ``compact`` writes a day in.
    """

    name: str
    schema: Schema
    date_column: str
    key: tuple[str, ...]
    sort: tuple[str, ...]

    @property
    def arrow(self) -> pa.Schema:
        return _ARROW[self.name]

    def partition_spec(self) -> PartitionSpec:
        source = self.schema.find_field(self.date_column)
        return PartitionSpec(
            PartitionField(
                source_id=source.field_id,
                field_id=1000,
                transform=IdentityTransform(),
                name=self.date_column,
            )
        )

    def sort_order(self) -> SortOrder:
        fields = [
            SortField(source_id=self.schema.find_field(c).field_id, transform=IdentityTransform())
            for c in self.sort
        ]
        return SortOrder(*fields)

    def empty(self) -> pa.Table:
        """A table with no rows and the right columns."""
        return self.arrow.empty_table()


HISTORY = TableSpec(
    "history",
    HISTORY_SCHEMA,
    "event_date",
    key=("partition", "lsn"),
    sort=("workflow_id", "run_id", "event_id"),
)
WORKFLOWS = TableSpec(
    "workflows",
    WORKFLOWS_SCHEMA,
    "close_date",
    key=("workflow_id", "run_id"),
    sort=("workflow_id", "run_id"),
)
ACTIVITIES = TableSpec(
    "activities",
    ACTIVITIES_SCHEMA,
    "closed_date",
    key=("workflow_id", "run_id", "seq"),
    sort=("workflow_id", "run_id", "seq"),
)
TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (HISTORY, WORKFLOWS, ACTIVITIES)}
_ARROW = {
    spec.name: schema_to_pyarrow(spec.schema, include_field_ids=False) for spec in TABLES.values()
}

# -- events to history rows -------------------------------------------------------------------

_json = msgspec.json.Encoder()
_fields_by_type: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _fields(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(plain fields, payload fields) of an event class, beyond the common ones."""
    found = _fields_by_type.get(cls)
    if found is None:
        names = [n for n in cls.__struct_fields__ if n not in _COMMON_FIELDS]  # type: ignore[attr-defined]  # reason: every Event is a msgspec Struct
        found = (
            tuple(n for n in names if n not in PAYLOAD_FIELDS),
            tuple(n for n in names if n in PAYLOAD_FIELDS),
        )
        _fields_by_type[cls] = found
    return found


def _decoded(data: bytes) -> object:
    """A payload decoded for people; bytes that do not decode become ``{"$msgpack": base64}``."""
    if not data:
        return None
    try:
        return codec.decode(data)
    except (msgspec.DecodeError, TypeError, ValueError, RecursionError):
        return _undecoded(data)


def _undecoded(data: bytes) -> dict[str, str]:
    return {"$msgpack": base64.b64encode(data).decode("ascii")}


def _data_json(event: Event) -> bytes:
    """UTF-8 JSON of an event's type-specific fields (see :func:`event_data`)."""
    plain, payloads = _fields(type(event))
    fields = {name: getattr(event, name) for name in plain}
    for name in payloads:
        fields[name] = _decoded(getattr(event, name))
    try:
        return _json.encode(fields)
    except (TypeError, ValueError, msgspec.EncodeError):
        for name in payloads:
            data = getattr(event, name)
            try:
                _json.encode(fields[name])
            except (TypeError, ValueError, msgspec.EncodeError):
                fields[name] = _undecoded(data)
        return _json.encode(fields)


def event_data(event: Event) -> str:
    """JSON text of an event's type-specific fields, payloads decoded where possible.

    A payload that decodes to something JSON cannot hold (a msgpack extension type) is shown
    as ``{"$msgpack": base64}``; the ``raw`` column keeps every event exactly.
    """
    return _data_json(event).decode()


def history_rows(events: Sequence[Event], raw: Sequence[bytes] | None = None) -> pa.Table:
    """One ``history`` row per event, in the order given.

    Args:
        events: the events.
        raw: the events' own msgpack (``encode_event``), as the partition stored them, when
            the caller has it (the ``raw`` column is then not encoded again).
    """
    if raw is None:
        raw = [encode_event(event) for event in events]
    elif len(raw) != len(events):
        raise ValueError(f"{len(events)} events but {len(raw)} encoded events")
    schema = HISTORY.arrow
    event_time = pa.array([e.at_us for e in events], pa.int64()).cast(
        schema.field("event_time").type
    )
    arrays = {
        "workflow_id": pa.array([e.workflow_id for e in events], pa.string()),
        "run_id": pa.array([e.run_id for e in events], pa.string()),
        "workflow_type": pa.array([e.workflow_type for e in events], pa.string()),
        "event_id": pa.array([e.event_id for e in events], pa.int64()),
        "event_type": pa.array([event_type(e) for e in events], pa.string()),
        "partition": pa.array([e.partition for e in events], pa.int32()),
        "lsn": pa.array([e.lsn for e in events], pa.int64()),
        "event_time": event_time,
        "event_date": event_time.cast(pa.date32()),  # the UTC day
        # JSON bytes are UTF-8: cast (which checks it) instead of decoding each in Python
        "data": pa.array([_data_json(e) for e in events], pa.binary()).cast(pa.string()),
        "raw": pa.array(raw, pa.binary()),
    }
    return pa.Table.from_arrays([arrays[n] for n in schema.names], schema=schema)


def max_lsns(rows: pa.Table) -> dict[int, int]:
    """The highest LSN of each partition in history rows."""
    if rows.num_rows == 0:
        return {}
    grouped = rows.group_by("partition", use_threads=False).aggregate([("lsn", "max")])
    return dict(zip(grouped["partition"].to_pylist(), grouped["lsn_max"].to_pylist(), strict=True))


def drop_duplicates(rows: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """``rows`` keeping the first row of each ``key`` (in their original order)."""
    if rows.num_rows < 2:
        return rows
    numbered = rows.select(list(key)).append_column("__row", pa.array(range(rows.num_rows)))
    first = numbered.group_by(list(key), use_threads=False).aggregate([("__row", "min")])
    if first.num_rows == rows.num_rows:
        return rows
    keep = first["__row_min"]
    return rows.take(pc.take(keep, pc.sort_indices(keep)))


# -- history rows to workflows and activities (DuckDB SQL) -----------------------------------

RUN_CLOSING = tuple(str(cls.__struct_config__.tag) for cls in CLOSING)
ACTIVITY_CLOSING = (
    "workflow.activity_completed",
    "workflow.activity_failed",
    "workflow.activity_cancelled",
)
FACT_TYPES = (
    "workflow.started",
    "workflow.search_attributes_set",
    "workflow.activity_scheduled",
    "workflow.step.retry",
    *ACTIVITY_CLOSING,
    *RUN_CLOSING,
)
"""The event types the derived tables are made from (the others never change them)."""


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_CLOSING_FIELDS = frozenset({"error_type", "error_message", "reason", "timeout"})
"""The closing events' fields FACTS_SQL parses (the closing rules may name these)."""


def _closing_value(value: object, event: str) -> str:
    """SQL for one value of a closing rule (see ``cdc.events.ClosingRule``)."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return _sql_text(value)
    assert isinstance(value, FromField)
    if value.name not in _CLOSING_FIELDS:
        raise ValueError(
            f"a closing rule of {event} reads field {value.name!r}, which the archive's "
            f"facts do not carry; add it to _CLOSING_FIELDS and _DATA_FIELDS"
        )
    column = f"c.{value.name}"
    if value.or_else is None:
        return column
    return f"coalesce(nullif({column}, ''), {_sql_text(value.or_else)})"


def _closing_case(part: str, column: str = "c.event_type") -> str:
    """An SQL ``CASE`` giving ``part`` (status, error_type or error_message) of a run closed
    by the event whose type is ``column``, made from ``cdc.events.CLOSING_RULES`` (the one
    place that says what each closing event means; the fields it reads are ``c.``'s)."""
    rules: dict[str, ClosingRule] = {
        str(cls.__struct_config__.tag): rule for cls, rule in CLOSING_RULES.items()
    }
    whens = " ".join(
        f"WHEN '{tag}' THEN {_closing_value(getattr(rule, part), tag)}"
        for tag, rule in rules.items()
    )
    return f"CASE {column} {whens} END"


_RUN_CLOSING = _sql_list(RUN_CLOSING)
_ACTIVITY_CLOSING = _sql_list(ACTIVITY_CLOSING)
_DATA_FIELDS = (
    '{"seq": "BIGINT", "activity": "VARCHAR", "attempt": "INTEGER", '
    '"error_type": "VARCHAR", "error_message": "VARCHAR", "reason": "VARCHAR", '
    '"timeout": "VARCHAR", "continued_from": "VARCHAR", "new_run_id": "VARCHAR", '
    '"search_attributes": "JSON"}'
)

FACTS_SQL = f"""
SELECT workflow_id, run_id, workflow_type, event_id, event_type, partition, lsn, event_time,
       event_date, d.seq, d.activity, d.attempt, d.error_type, d.error_message, d.reason,
       d.timeout, d.continued_from, d.new_run_id, d.search_attributes,
       {{in_batch}} AS in_batch
FROM (
    SELECT *, from_json(data, '{_DATA_FIELDS.replace("{", "{{").replace("}", "}}")}') AS d
    FROM {{rows}}
    WHERE event_type IN ({_sql_list(FACT_TYPES)})
)
"""
"""The history rows in ``{rows}`` that the derived tables are made from, with the fields of
``data`` they need parsed once (``{in_batch}``: whether these rows may close runs and
activities, or only tell about runs closed by others). ``{facts}`` below is a table of these."""

CLOSERS_SQL = f"""
SELECT workflow_id, run_id, max(event_id) AS upto
FROM {{facts}}
WHERE in_batch AND event_type IN ({_RUN_CLOSING}, {_ACTIVITY_CLOSING}) AND {{after}}
GROUP BY workflow_id, run_id
"""
"""Runs with a closing event above the offsets (``{after}``), and the last such event ID:
deriving their rows needs every event of the run up to ``upto``."""

WORKFLOWS_SQL = f"""
WITH closing AS (
    SELECT DISTINCT ON (workflow_id, run_id)
           workflow_id, run_id, workflow_type, event_type, event_time, event_date, partition,
           lsn, error_type, error_message, reason, timeout, new_run_id
    FROM {{facts}}
    WHERE in_batch AND event_type IN ({_RUN_CLOSING}) AND {{after}}
    ORDER BY workflow_id, run_id, event_id
),
events AS (
    SELECT DISTINCT ON (workflow_id, run_id, event_id)
           workflow_id, run_id, event_id, event_type, event_time, attempt, continued_from,
           search_attributes
    FROM {{facts}} SEMI JOIN closing USING (workflow_id, run_id)
    WHERE event_type IN ('workflow.started', 'workflow.activity_scheduled', 'workflow.step.retry',
                         'workflow.search_attributes_set')
),
counts AS (
    SELECT workflow_id, run_id,
           min(event_time) FILTER (WHERE event_type = 'workflow.started') AS start_time,
           any_value(attempt) FILTER (WHERE event_type = 'workflow.started') AS attempt,
           any_value(continued_from) FILTER (WHERE event_type = 'workflow.started')
               AS continued_from,
           arg_max(search_attributes, event_id) FILTER (
               WHERE event_type IN ('workflow.started', 'workflow.search_attributes_set')
                 AND search_attributes IS NOT NULL AND CAST(search_attributes AS VARCHAR) != 'null'
           ) AS search_attributes,
           count(*) FILTER (WHERE event_type = 'workflow.activity_scheduled') AS activity_count,
           count(*) FILTER (WHERE event_type = 'workflow.step.retry') AS retry_count
    FROM events
    GROUP BY workflow_id, run_id
)
SELECT c.workflow_id, c.run_id, c.workflow_type,
       {_closing_case("status")} AS status,
       n.start_time,
       c.event_time AS close_time,
       date_diff('millisecond', n.start_time, c.event_time) AS duration_ms,
       coalesce(n.activity_count, 0) AS activity_count,
       coalesce(n.retry_count, 0) AS retry_count,
       {_closing_case("error_type")} AS error_type,
       {_closing_case("error_message")} AS error_message,
       c.event_date AS close_date,
       c.partition,
       c.lsn,
       n.continued_from,
       c.new_run_id AS next_run_id,
       n.attempt,
       CAST(n.search_attributes AS VARCHAR) AS search_attributes
FROM closing c LEFT JOIN counts n USING (workflow_id, run_id)
"""
"""``workflows`` rows for the runs that close in the ``in_batch`` rows of ``{facts}`` above
the offsets (``{after}``); ``{facts}`` must hold every event of those runs (duplicates
allowed)."""

ACTIVITIES_SQL = f"""
WITH run_closing AS (
    SELECT workflow_id, run_id,
           arg_min({{{{'workflow_type': workflow_type, 'event_type': event_type,
                      'event_time': event_time, 'event_date': event_date,
                      'partition': partition, 'lsn': lsn}}}}, event_id) AS r
    FROM {{facts}}
    WHERE in_batch AND event_type IN ({_RUN_CLOSING}) AND {{after}}
    GROUP BY workflow_id, run_id
),
steps AS (
    SELECT workflow_id, run_id, seq,
           min(event_time) FILTER (WHERE event_type = 'workflow.activity_scheduled')
               AS scheduled_at,
           any_value(activity) AS activity,
           count(DISTINCT event_id) FILTER (WHERE event_type = 'workflow.step.retry') AS retries,
           count(*) FILTER (WHERE event_type IN ({_ACTIVITY_CLOSING})) AS closings,
           arg_min({{{{'workflow_type': workflow_type, 'activity': activity, 'attempt': attempt,
                      'event_type': event_type, 'event_time': event_time,
                      'event_date': event_date, 'partition': partition, 'lsn': lsn,
                      'error_type': error_type, 'error_message': error_message}}}}, event_id)
               FILTER (WHERE in_batch AND event_type IN ({_ACTIVITY_CLOSING}) AND {{after}})
               AS a
    FROM {{facts}}
    WHERE event_type IN ('workflow.activity_scheduled', 'workflow.step.retry', {_ACTIVITY_CLOSING})
    GROUP BY workflow_id, run_id, seq
),
closed_by_event AS (
    SELECT workflow_id, run_id, a.workflow_type, seq, a.activity,
           CASE a.event_type
               WHEN 'workflow.activity_cancelled' THEN retries + 1
               ELSE a.attempt
           END AS attempts,
           scheduled_at,
           a.event_time AS closed_at,
           replace(a.event_type, 'workflow.activity_', '') AS outcome,
           CASE a.event_type
               WHEN 'workflow.activity_failed' THEN a.error_type
               WHEN 'workflow.activity_cancelled' THEN 'CancelledError'
           END AS error_type,
           CASE a.event_type
               WHEN 'workflow.activity_failed' THEN a.error_message
               WHEN 'workflow.activity_cancelled' THEN 'activity cancelled'
           END AS error_message,
           a.event_date AS closed_date, a.partition, a.lsn
    FROM steps
    WHERE a IS NOT NULL
),
closed_by_run AS (
    SELECT s.workflow_id, s.run_id, c.r.workflow_type, s.seq, s.activity,
           s.retries + 1 AS attempts,
           s.scheduled_at,
           c.r.event_time AS closed_at,
           'cancelled' AS outcome,
           'CancelledError' AS error_type,
           'run ' || {_closing_case("status", "c.r.event_type")} || ' first' AS error_message,
           c.r.event_date AS closed_date, c.r.partition, c.r.lsn
    FROM steps s JOIN run_closing c USING (workflow_id, run_id)
    WHERE s.closings = 0 AND s.scheduled_at IS NOT NULL
)
SELECT *, date_diff('millisecond', scheduled_at, closed_at) AS duration_ms FROM closed_by_event
UNION ALL BY NAME
SELECT *, date_diff('millisecond', scheduled_at, closed_at) AS duration_ms FROM closed_by_run
"""
"""``activities`` rows for the activities that close in the ``in_batch`` rows of ``{facts}``
above the offsets (``{after}``), by their own event or by their run closing while they were
still open; ``{facts}`` must hold every event of those runs (duplicates allowed)."""
