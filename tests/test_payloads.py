"""Payloads arrive as what was sent: workflow and activity arguments, and activity results, are
decoded by the functions' annotations, so sets, datetimes, UUIDs, Decimals, Structs and
dataclasses keep their types; values without a declared type pass when nothing about them
changes on the way. (What is refused, and why, is in tests/test_bad_input.py.)

Names start with ``pay_`` (the registry is global).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any

import msgspec
import pytest

import duraflow as df
from duraflow.cdc import events as ev
from duraflow.engine.definitions import workflow_definition
from duraflow.engine.replay import rebuild
from duraflow.engine.run import PYTHON_VERSION
from duraflow.storage.codec import decode


class Parcel(msgspec.Struct, frozen=True):
    id: str
    tags: frozenset[str]
    weight: decimal.Decimal


@dataclasses.dataclass(frozen=True)
class Slot:
    at: dt.datetime  # naive: without its annotation it would arrive as a str
    day: dt.date


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class PlainSlot:
    at: str
    day: int


class Bundle(msgspec.Struct, frozen=True):
    """Everything a typed activity got, as it got it, plus the type names it saw."""

    tags: set[str]
    ids: frozenset[int]
    when: dt.datetime
    day: dt.date
    ident: uuid.UUID
    amount: decimal.Decimal
    parcel: Parcel
    slot: Slot
    seen: list[str]


WHEN = dt.datetime(2027, 1, 2, 3, 4, 5)
RAY_ARCHIVE = False  # their Ray variants test the transport, not the archive (see conftest)
ARGS: tuple[Any, ...] = (
    {"b", "a"},
    frozenset({3, 1}),
    WHEN,
    dt.date(2027, 1, 2),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("19.90"),
    Parcel("p-1", frozenset({"fragile"}), decimal.Decimal("1.250")),
    Slot(WHEN, dt.date(2027, 1, 3)),
)
TYPE_NAMES = ["set", "frozenset", "datetime", "date", "UUID", "Decimal", "Parcel", "Slot"]


def type_names(values: Any) -> list[str]:
    return [type(v).__name__ for v in values]


@df.activity
def pay_act_typed(
    tags: set[str],
    ids: frozenset[int],
    when: dt.datetime,
    day: dt.date,
    ident: uuid.UUID,
    amount: decimal.Decimal,
    parcel: Parcel,
    slot: Slot,
) -> Bundle:
    seen = type_names((tags, ids, when, day, ident, amount, parcel, slot))
    return Bundle(tags, ids, when, day, ident, amount, parcel, slot, seen)


@df.workflow
async def pay_wf_typed(
    ctx: df.WorkflowContext,
    tags: set[str],
    ids: frozenset[int],
    when: dt.datetime,
    day: dt.date,
    ident: uuid.UUID,
    amount: decimal.Decimal,
    parcel: Parcel,
    slot: Slot,
) -> dict:
    args = (tags, ids, when, day, ident, amount, parcel, slot)
    back = await ctx.activity(pay_act_typed, *args)
    returned = (back.tags, back.ids, back.when, back.day, back.ident, back.amount)
    returned += (back.parcel, back.slot)
    # The result goes to a client that may not have this code: plain values only.
    return {
        "workflow": type_names(args),
        "activity": back.seen,
        "returned": [type(back).__name__, *type_names(returned)],
        "same": [a == b for a, b in zip(args, returned, strict=True)],
        "sent_equal": [a == b for a, b in zip(args, ARGS, strict=True)],
    }


@df.workflow
async def pay_wf_child(ctx: df.WorkflowContext, tags: set[str], slot: Slot) -> list[str]:
    return [*type_names((tags, slot)), *sorted(tags), slot.at.isoformat()]


@df.workflow
async def pay_wf_parent(ctx: df.WorkflowContext) -> list[str]:
    return await ctx.execute_child(pay_wf_child, {"y", "x"}, Slot(WHEN, WHEN.date()))


@df.workflow
async def pay_wf_untyped(ctx: df.WorkflowContext, value):  # type: ignore[no-untyped-def]  # reason: unannotated on purpose
    return [type(value).__name__, value]


@df.activity
def pay_act_replayed(when: dt.datetime) -> dt.date:
    return when.date()


@df.workflow
async def pay_wf_replayed(ctx: df.WorkflowContext, when: dt.datetime, tags: set[str]) -> list:
    day = await ctx.activity(pay_act_replayed, when)
    return [type(when).__name__, type(tags).__name__, type(day).__name__, sorted(tags)]


# -- annotated values keep their types ------------------------------------------------------------


def test_annotated_arguments_and_results_round_trip_with_their_types(
    any_client: df.Client,
) -> None:
    result = any_client.execute(pay_wf_typed, *ARGS, timeout=30)

    assert {
        "workflow": TYPE_NAMES,
        "activity": TYPE_NAMES,
        "returned": ["Bundle", *TYPE_NAMES],
        "same": [True] * 8,
        "sent_equal": [True] * 8,
    } == result


def test_annotated_arguments_of_a_child_workflow_round_trip(client: df.Client) -> None:
    result = client.execute(pay_wf_parent, timeout=30)

    assert ["set", "Slot", "x", "y", "2027-01-02T03:04:05"] == result


def test_history_recorded_before_typed_decoding_replays() -> None:
    # An earlier version stored the arguments as plain msgpack of a list: the set as a list,
    # the naive datetime and the activity's date as strings. The same bytes rebuild the run,
    # now decoded by the annotations.
    base = {"workflow_id": "pay-old", "run_id": "r-1", "workflow_type": "pay_wf_replayed"}
    args = msgspec.msgpack.encode(["2027-01-02T03:04:05", ["b", "a"]])
    history: list[ev.Event] = [
        ev.WorkflowStarted(**base, event_id=1, args=args, python=PYTHON_VERSION),
        ev.ActivityScheduled(
            **base,
            event_id=2,
            seq=1,
            activity="pay_act_replayed",
            args=msgspec.msgpack.encode(["2027-01-02T03:04:05"]),
        ),
        ev.ActivityCompleted(
            **base,
            event_id=3,
            seq=1,
            activity="pay_act_replayed",
            result=msgspec.msgpack.encode("2027-01-02"),
        ),
    ]

    run, new = rebuild(workflow_definition(pay_wf_replayed), history)

    assert ["workflow.completed"] == [ev.event_type(e) for e in new]
    assert isinstance(run.closed, ev.WorkflowCompleted)
    assert ["datetime", "set", "date", ["a", "b"]] == decode(run.closed.result)


# -- values without a declared type ---------------------------------------------------------------


def test_unannotated_values_that_keep_their_kind_pass(client: df.Client) -> None:
    aware = dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))

    def echo(value: Any) -> Any:
        return client.execute(pay_wf_untyped, value, timeout=30)

    # an aware datetime arrives as a datetime (in UTC: the same instant)
    assert ["datetime", aware] == echo(aware)
    # tuples arrive as lists, Structs and dataclasses as dicts: their shape is kept
    assert ["list", [1, [2, 3]]] == echo((1, (2, 3)))
    assert ["dict", {"x": 1, "y": 2}] == echo(Point(1, 2))
    assert ["dict", {"at": "07:30", "day": 3}] == echo(PlainSlot("07:30", 3))


def test_a_struct_holding_a_set_is_refused_without_an_annotation(client: df.Client) -> None:
    parcel = Parcel("p-2", frozenset({"x"}), decimal.Decimal(0))

    with pytest.raises(df.PayloadError) as caught:
        client.start(pay_wf_untyped, parcel)

    assert (
        "cannot encode argument 'value' of workflow 'pay_wf_untyped': a frozenset would arrive "
        "as a list: convert it, or declare its type with an annotation"
    ) in str(caught.value)
