"""The one place payload bytes are made: msgspec msgpack on disk, JSON for people."""

from __future__ import annotations

from typing import Any

import msgspec

from duraflow.errors import PayloadError

MAX_PAYLOAD_DEPTH = 128
"""Deepest nesting of lists/dicts a payload may have (msgspec issue 1033: deep input crashes)."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_json_encoder = msgspec.json.Encoder()


def encode(value: Any, what: str = "value") -> bytes:
    """Encode a user value to msgpack bytes.

    Args:
        value: any msgspec-encodable value (None, bool, int, float, str, bytes, list, tuple,
            dict, dataclass, msgspec.Struct, datetime, uuid, ...).
        what: the role of the value, named in the error (``"argument 2 of workflow 'order'"``).

    Raises:
        PayloadError: the value (or something inside it) cannot be encoded, or it nests
            deeper than ``MAX_PAYLOAD_DEPTH``.
    """
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
    if len(data) > 2 * MAX_PAYLOAD_DEPTH and _depth(value) > MAX_PAYLOAD_DEPTH:
        raise PayloadError(f"cannot encode {what}: nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    return data


def decode(data: bytes | None) -> Any:
    """Decode bytes made by :func:`encode` (``None`` stays ``None``)."""
    if data is None:
        return None
    return _decoder.decode(data)


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


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_PAYLOAD_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, (list, tuple)):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"
