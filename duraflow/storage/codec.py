"""The one place payload bytes are made: msgspec msgpack on disk, JSON for people.

A payload arrives as what was sent, or it is refused. :func:`encode` is given the type the
value will be decoded as (a parameter's or a result's annotation), or None for no type. It
encodes, decodes the bytes back as that type, and refuses (``PayloadError``) a value its
annotation does not accept or one that would arrive as another kind of value: without a type
a ``set`` would arrive as a list, a ``datetime`` (naive), ``date``, ``time``, ``timedelta``,
``UUID`` or ``Decimal`` as a string. Tuples arriving as lists and Structs and dataclasses as
dicts keep their shape and are let through. Nesting deeper than ``MAX_PAYLOAD_DEPTH`` is
refused before msgspec sees the value.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import functools
import reprlib
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from duraflow.errors import PayloadError

MAX_PAYLOAD_DEPTH = 128
"""Deepest nesting of containers (lists, tuples, dicts, sets, Structs, dataclasses) in one
payload. msgspec recurses in C once per level; on Python < 3.14 a thread with a small stack
crashes (SIGSEGV) before Python's recursion guard fires (msgspec issue 1033; measured here:
decoding 900 levels on a 256 KiB thread stack), while 128 levels decode on a 64 KiB one."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_split_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_json_encoder = msgspec.json.Encoder()

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
"""Types that hold nothing nested and arrive as themselves: no walk looks inside."""

_ARRIVE_AS_TEXT = (dt.date, dt.time, dt.timedelta, uuid.UUID, decimal.Decimal)
"""Types msgspec encodes as strings (``datetime`` is a ``date``; aware ones arrive as
datetimes in UTC, naive ones as strings): without a declared type they arrive as ``str``."""


def encode(value: Any, what: str = "value", declared: Any = None) -> bytes:
    """Encode a user value to msgpack bytes that decode to the same value.

    Args:
        value: any msgspec-encodable value (None, bool, int, float, str, bytes, list, tuple,
            dict, set, dataclass, msgspec.Struct, datetime, UUID, Decimal, ...).
        what: the role of the value, named in errors (``"argument 'order' of workflow 'x'"``).
        declared: the type the value will be decoded as (an annotation), or None for none.

    Raises:
        PayloadError: the value nests deeper than ``MAX_PAYLOAD_DEPTH``, cannot be encoded,
            does not match ``declared``, or would arrive as another kind of value.
    """
    plain = check_depth(value, what)
    try:
        data = _encoder.encode(value)
    except (
        TypeError,
        msgspec.EncodeError,
        OverflowError,
        RecursionError,
        UnicodeEncodeError,
    ) as exc:
        raise PayloadError(
            f"cannot encode {what}: {_short(value)} is not msgspec-encodable ({exc})"
        ) from None
    if plain and declared is None:
        return data  # nothing in it can arrive changed
    arrived = decode(data, declared, what)  # checks it against its annotation
    change = None if plain else _first_change(value, arrived)
    if change is None:
        return data
    if declared is None:
        raise PayloadError(
            f"cannot encode {what}: {change}: convert it, or declare its type with an "
            "annotation on the workflow or activity parameter (or activity result) receiving it"
        )
    raise PayloadError(f"cannot encode {what}: {change} (its annotation is {_name(declared)})")


def decode(data: bytes | msgspec.Raw | None, declared: Any = None, what: str = "value") -> Any:
    """Decode bytes made by :func:`encode` (``None`` stays ``None``), as ``declared`` if given.

    Raises:
        PayloadError: the value does not match ``declared``.
    """
    if data is None:
        return None
    if declared is None:
        return _decoder.decode(data)
    try:
        return typed_decoder(declared).decode(data)
    except msgspec.ValidationError as exc:
        raise PayloadError(
            f"{what} does not match its annotation {_name(declared)}: {exc}"
        ) from None


@functools.lru_cache(maxsize=1024)
def typed_decoder(declared: Any) -> msgspec.msgpack.Decoder[Any]:
    """A msgpack decoder for the type ``declared`` (cached).

    Raises:
        TypeError: msgspec cannot decode into that type.
    """
    return msgspec.msgpack.Decoder(declared)


def join(parts: Iterable[bytes]) -> bytes:
    """One msgpack array of values already encoded by :func:`encode` (a run's arguments)."""
    return _encoder.encode([msgspec.Raw(part) for part in parts])


def split(data: bytes | None) -> list[msgspec.Raw]:
    """The encoded items of a msgpack array made by :func:`join` (``None``: no items)."""
    return [] if data is None else _split_decoder.decode(data)


def text(value: str) -> str:
    """``value`` made storable as UTF-8: lone surrogates (``os.fsdecode`` of odd bytes, for
    one) become backslash escapes instead of failing the partition's turn."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def error_text(exc: BaseException) -> str:
    """``str(exc)`` made storable, for any exception user code raised: one whose ``__str__``
    raises (or returns something odd) is described by its type name instead."""
    try:
        message = str(exc)
    except BaseException as err:  # reason: user __str__ may raise anything, even SystemExit
        return f"<{type(exc).__name__} whose str() raised {type(err).__name__}>"
    if not isinstance(message, str):  # a __str__ returning a str subclass gone wrong
        return f"<{type(exc).__name__}>"
    return text(message)


def to_json(value: Any) -> str:
    """JSON text of a value, for people (CLI output, logs)."""
    return _json_encoder.encode(value).decode()


def check_depth(value: Any, what: str = "value") -> bool:
    """Refuse a value nested deeper than ``MAX_PAYLOAD_DEPTH`` levels of containers.

    Breadth first and without recursion, so a 100,000-deep list costs 129 short steps.

    Returns:
        Whether the value is plain: only str, int, float, bool, None, bytes, lists, tuples and
            dicts with such keys; a plain value arrives as itself (tuples as lists) untyped.

    Raises:
        PayloadError: it is nested deeper.
    """
    if type(value) in _SCALARS:
        return True
    plain = True
    level = [value]
    depth = 0
    while level:
        inner: list[Any] = []
        containers = False
        for item in level:
            kind = type(item)
            if kind is dict:
                inner.extend(item.values())
                plain = plain and _SCALARS.issuperset(map(type, item))
            elif kind is list or kind is tuple:
                inner.extend(item)
            else:
                plain = False  # a set, Struct, dataclass, datetime, UUID, subclass, ...
                items = _items(item)
                if items is None:
                    continue
                inner.extend(items)
            containers = True
        if not containers:
            break
        depth += 1
        if depth > MAX_PAYLOAD_DEPTH:
            raise PayloadError(
                f"cannot encode {what}: nested deeper than {MAX_PAYLOAD_DEPTH} levels"
            )
        if _SCALARS.issuperset(map(type, inner)):
            break
        level = [item for item in inner if type(item) not in _SCALARS]
    return plain


def _items(value: Any) -> Iterable[Any] | None:
    """What a container holds; None for anything that is not a container."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    if isinstance(value, dict):
        return value.values()
    if isinstance(value, msgspec.Struct):
        return msgspec.structs.astuple(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [getattr(value, f.name) for f in dataclasses.fields(value)]
    return None


def _first_change(sent: Any, arrived: Any) -> str | None:
    """How ``arrived`` (``sent`` after a round trip) differs in kind, or None if it does not."""
    if _equal(sent, arrived):
        return None  # the common case, compared in C
    pairs = collections.deque([(sent, arrived)])  # breadth first: the shallowest change is named
    while pairs:
        a, b = pairs.popleft()
        if type(a) in _SCALARS:
            continue
        if isinstance(a, (set, frozenset)):
            if not isinstance(b, (set, frozenset)) or not _equal(a, b):
                return f"{_kind(a)} would arrive as {_kind(b)}"
        elif isinstance(a, _ARRIVE_AS_TEXT):
            if not isinstance(b, type(a)):
                return f"{_kind(a)} would arrive as {_kind(b)}"
        elif isinstance(a, (list, tuple)):
            if isinstance(b, (list, tuple)):
                pairs.extend(zip(a, b, strict=False))
        elif isinstance(a, dict) and isinstance(b, dict):  # msgspec keeps the order of keys
            pairs.extend(zip(a.keys(), b.keys(), strict=False))
            pairs.extend(zip(a.values(), b.values(), strict=False))
        else:  # Structs, dataclasses and dicts, typed into one another: pair them by field
            sent_fields, arrived_fields = _fields(a), _fields(b)
            if sent_fields is not None and arrived_fields is not None:
                pairs.extend(
                    (value, arrived_fields[name])
                    for name, value in sent_fields.items()
                    if name in arrived_fields
                )
    return None


def _fields(value: Any) -> dict[Any, Any] | None:
    """A dict, Struct or dataclass as {encoded field name: value}; None for anything else."""
    if isinstance(value, dict):
        return value
    if isinstance(value, msgspec.Struct):
        return {f.encode_name: getattr(value, f.name) for f in msgspec.structs.fields(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # reason: a user __eq__ may raise; then compare part by part
        return False


def _kind(value: Any) -> str:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return "a naive datetime"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeioAEIO' else 'a'} {name}"


def _name(declared: Any) -> str:
    return declared.__name__ if isinstance(declared, type) else repr(declared)


_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


def _short(value: Any) -> str:
    try:
        text = _repr.repr(value)  # reprlib stops at a few levels: safe on deep values
    except Exception:  # reason: a user __repr__ may raise
        text = "<unprintable>"
    return f"{type(value).__name__} {text}"
