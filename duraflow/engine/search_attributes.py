"""Search attributes: typed key/value pairs a run carries for ``client.list(search=...)``.

Keys are identifiers (letters, digits and ``_``, not starting with a digit, up to
:data:`MAX_KEY_LENGTH` characters); values are ``str``, ``int`` (64-bit), ``float``
(finite), ``bool`` or an aware ``datetime.datetime`` (naive means UTC). ``None`` removes a
key (in ``ctx.set_search_attributes``). They are recorded in ``workflow.started`` and
``workflow.search_attributes_set`` events as they are, stored in the run's row as msgpack
(typed: a datetime comes back a datetime) and shown to SQL as JSON (datetimes as ISO 8601).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from duraflow.errors import ConfigurationError

MAX_KEY_LENGTH = 100
MAX_TEXT_LENGTH = 2048
MAX_ATTRIBUTES = 100

SearchValue = str | int | float | bool | dt.datetime
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_encoder = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


def check(
    attributes: object, what: str = "search_attributes", *, removals: bool = False
) -> dict[str, Any]:
    """``attributes`` as a dict of checked keys and values (datetimes made UTC).

    Raises:
        ConfigurationError: not a mapping, a bad key, or a value of another type (named).
    """
    if not isinstance(attributes, Mapping):
        raise ConfigurationError(f"{what} must be a dict, got {type(attributes).__name__}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ConfigurationError(f"{what} has {len(attributes)} keys; at most {MAX_ATTRIBUTES}")
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
            raise ConfigurationError(
                f"{what}: key {key!r} is not an identifier (letters, digits and _, "
                f"at most {MAX_KEY_LENGTH} characters)"
            )
        out[key] = _value(value, f"{what}[{key!r}]", removals)
    return out


def _value(value: object, what: str, removals: bool) -> Any:
    if value is None and removals:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ConfigurationError(f"{what}: {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{what}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LENGTH:
            raise ConfigurationError(f"{what}: text over {MAX_TEXT_LENGTH} characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigurationError(f"{what}: {value!r:.60} is not valid UTF-8") from None
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)
    raise ConfigurationError(
        f"{what} must be str, int, float, bool or datetime, got {type(value).__name__}"
    )


def merge(current: Mapping[str, Any] | None, changed: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` with ``changed`` applied (a None value removes its key)."""
    merged = dict(current or {})
    for key, value in changed.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def encode(attributes: Mapping[str, Any] | None) -> bytes | None:
    """msgpack for a run's row (None when there are none)."""
    return _encoder.encode(dict(attributes)) if attributes else None


def decode(data: bytes | None) -> dict[str, Any]:
    """The typed attributes a row holds (``{}`` for none)."""
    if not data:
        return {}
    found: dict[str, Any] = msgspec.msgpack.decode(data)
    return found


def to_json(attributes: Mapping[str, Any] | None) -> str | None:
    """JSON text for SQL (``live_workflows``; datetimes as ISO 8601), None when empty."""
    return _json.encode(dict(attributes)).decode() if attributes else None


def matches(attributes: Mapping[str, Any], search: Mapping[str, Any]) -> bool:
    """Whether every key of ``search`` has that value (and that type) in ``attributes``."""
    for key, wanted in search.items():
        if key not in attributes:
            return False
        found = attributes[key]
        if type(found) is not type(wanted) and not (
            isinstance(found, (int, float))
            and isinstance(wanted, (int, float))
            and not isinstance(found, bool)
            and not isinstance(wanted, bool)
        ):
            return False
        if found != wanted:
            return False
    return True
