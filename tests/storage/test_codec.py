"""The codec, as pure functions: a value arrives as sent, or encode() refuses it, and the bytes
of a run's arguments keep the format every recorded history has (one msgpack array)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import threading
import uuid
from typing import Any

import msgspec
import pytest

from duraflow.errors import PayloadError
from duraflow.storage import codec


class Line(msgspec.Struct):
    sku: str
    qty: list[int]


@dataclasses.dataclass
class Stamp:
    at: dt.datetime


NAIVE = dt.datetime(2027, 1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    ("value", "declared"),
    [
        pytest.param({"a": [1, 2.5, None, True, b"x"]}, None, id="plain"),
        pytest.param(NAIVE.replace(tzinfo=dt.timezone.utc), None, id="aware-datetime"),
        pytest.param({1, 2}, set[int], id="set"),
        pytest.param(frozenset({"a"}), frozenset[str], id="frozenset"),
        pytest.param(NAIVE, dt.datetime, id="naive-datetime"),
        pytest.param(dt.time(3, 4), dt.time, id="time"),
        pytest.param(dt.timedelta(seconds=90), dt.timedelta, id="timedelta"),
        pytest.param(uuid.UUID(int=5), uuid.UUID, id="uuid"),
        pytest.param(decimal.Decimal("0.10"), decimal.Decimal, id="decimal"),
        pytest.param(Line("s", [1]), Line, id="struct"),
        pytest.param(Stamp(NAIVE), Stamp, id="dataclass"),
        pytest.param({"k": {1}}, dict[str, set[int]], id="set-in-dict"),
    ],
)
def test_values_round_trip_as_their_declared_type(value: Any, declared: Any) -> None:
    arrived = codec.decode(codec.encode(value, "v", declared), declared)

    assert (value, type(value)) == (arrived, type(arrived))


@pytest.mark.parametrize(
    ("value", "declared", "message"),
    [
        pytest.param({1}, None, "a set would arrive as a list: convert it", id="set"),
        pytest.param([{"a": NAIVE}], None, "a naive datetime would arrive as a str", id="deep"),
        pytest.param({uuid.UUID(int=1): 1}, None, "a UUID would arrive as a str", id="key"),
        pytest.param(Stamp(NAIVE), None, "a naive datetime would arrive as a str", id="field"),
        pytest.param({1}, list[int], "a set would arrive as a list (its annotation is", id="list"),
        pytest.param({"sku": "s", "qty": {1}}, Line, "a set would arrive as", id="dict-struct"),
        pytest.param("5", int, "v does not match its annotation int: Expected `int`", id="type"),
        pytest.param(object(), None, "is not msgspec-encodable", id="object"),
        pytest.param(2**64, None, "is not msgspec-encodable", id="big-int"),
    ],
)
def test_values_that_would_not_arrive_as_sent_are_refused(
    value: Any, declared: Any, message: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        codec.encode(value, "v", declared)

    assert message in str(caught.value)


def test_shapes_kept_without_a_type_pass() -> None:
    assert [1, [2]] == codec.decode(codec.encode((1, (2,))))
    assert {"sku": "s", "qty": [1]} == codec.decode(codec.encode(Line("s", [1])))


def test_depth_is_bounded_without_recursion() -> None:
    def nested(depth: int) -> Any:
        value: Any = []
        for _ in range(depth - 1):
            value = [value]
        return value

    assert nested(128) == codec.decode(codec.encode(nested(128)))
    for depth in (129, 100_000):
        with pytest.raises(PayloadError, match="v: nested deeper than 128 levels"):
            codec.encode(nested(depth), "v")
    with pytest.raises(PayloadError, match="nested deeper than 128 levels"):
        codec.encode([Stamp(nested(127))], "v")  # dataclasses and Structs count as levels


def test_the_limit_is_safe_on_a_small_thread_stack() -> None:
    # msgspec issue 1033: deep input crashed threads with small stacks on Python < 3.14;
    # 128 levels must not (measured: 900 levels crash on 256 KiB, 128 pass on 64 KiB).
    deep = b"\x91" * 127 + b"\x90"  # 128 nested msgpack arrays
    outcome: list[Any] = []
    old = threading.stack_size(256 * 1024)
    try:
        thread = threading.Thread(target=lambda: outcome.append(codec.decode(deep)))
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old)

    assert 1 == len(outcome)


def test_arguments_keep_the_recorded_format() -> None:
    parts = [codec.encode(1), codec.encode({"a": [1]}), codec.encode("s")]

    joined = codec.join(parts)

    assert msgspec.msgpack.encode([1, {"a": [1]}, "s"]) == joined
    assert [1, {"a": [1]}, "s"] == [codec.decode(raw) for raw in codec.split(joined)]
    assert [] == codec.split(None)
