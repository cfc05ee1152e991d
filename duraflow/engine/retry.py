"""Retry policies, and the durations they and every timeout are written in."""

from __future__ import annotations

import datetime as dt
import math
import re

import msgspec

from duraflow.config import MAX_DURATION_S
from duraflow.errors import ConfigurationError, InvalidDuration

Duration = float | int | str | dt.timedelta
"""Seconds, a ``timedelta``, or a string like ``"500ms"``, ``"30s"``, ``"5m"``, ``"24h"``, ``"7d"``,
``"1h30m"``."""

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


MAX_ATTEMPTS = 2**31 - 1
"""The largest ``maximum_attempts`` a retry policy accepts (0 means unlimited)."""


def parse_duration(value: Duration, what: str = "duration") -> float:
    """Seconds in ``value``.

    Raises:
        InvalidDuration: negative, not finite, over ``MAX_DURATION_S`` (100 years), or a string
            that is not a sequence of ``<number><unit>`` parts with units ms, s, m, h, d, w.
    """
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidDuration(f"{what} must be seconds or a string like '30s', got {value!r}")
    elif isinstance(value, (int, float)):
        # clamped first: an int beyond float range is too long, not an OverflowError
        seconds = float(value if isinstance(value, float) else max(-1, min(value, 2**63)))
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise InvalidDuration(
                f"{what} {value!r} is not a duration: use seconds or e.g. '500ms', '30s', '5m', "
                "'24h', '7d', '1h30m'"
            )
        seconds = sum(float(n) * _UNITS_S[u] for n, u in parts)
    else:
        raise InvalidDuration(f"{what} must be seconds or a string like '30s', got {value!r}")
    if not seconds >= 0 or seconds == math.inf:
        raise InvalidDuration(f"{what} must be a finite, non-negative duration, got {short(value)}")
    if seconds > MAX_DURATION_S:
        raise InvalidDuration(
            f"{what} must be at most 100 years ({MAX_DURATION_S:.0f} s), got {short(value)}"
        )
    return seconds


def _optional_duration(value: Duration | None, what: str) -> float | None:
    return None if value is None else parse_duration(value, what)


def parse_timeout(value: Duration | None, what: str) -> float | None:
    """Seconds in an activity timeout ``value``; None (no limit) stays None.

    Raises:
        InvalidDuration: as :func:`parse_duration` says, or 0 (an attempt that must end
            before it starts; None means no limit).
    """
    if value is None:
        return None
    seconds = parse_duration(value, what)
    if seconds == 0:
        raise InvalidDuration(f"{what} must be above 0 (None means no limit), got {value!r}")
    return seconds


def check_retry(retry: object, what: str = "retry") -> RetryPolicy | None:
    """``retry`` if it is a :class:`RetryPolicy` or None.

    Raises:
        ConfigurationError: anything else (a dict of its fields, say), named.
    """
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigurationError(
            f"{what} must be a duraflow.RetryPolicy(...) or None, got {short(retry)}"
        )
    return retry


def short(value: object) -> str:
    """``repr(value)`` cut to 40 characters, for error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a failed activity attempt is retried (Temporal's retry policy).

    Attributes:
        initial_interval: wait before the first retry (0 retries at once); at most 100 years.
        backoff_coefficient: each further wait is the previous one times this (>= 1).
        maximum_interval: waits never exceed this (default: 100 x initial_interval, at most
            100 years); at least ``initial_interval``.
        maximum_attempts: total attempts including the first; 0 means unlimited; at most
            ``MAX_ATTEMPTS`` (2**31 - 1).
        non_retryable_error_types: error type names (``"ValueError"``) that fail at once.

    Raises:
        InvalidDuration: an interval that is not a duration, or is negative, not finite, over
            100 years, or (``maximum_interval``) below ``initial_interval``.
        ConfigurationError: ``backoff_coefficient`` not a finite number >= 1,
            ``maximum_attempts`` not a whole number in 0..2**31-1, or an error type that is
            not a str.
    """

    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = None
    maximum_attempts: int = 0
    non_retryable_error_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Users may pass durations as strings; store seconds. force_setattr because frozen.
        set_ = msgspec.structs.force_setattr
        initial = parse_duration(self.initial_interval, "initial_interval")
        set_(self, "initial_interval", initial)
        maximum = _optional_duration(self.maximum_interval, "maximum_interval")
        if maximum is not None and maximum < initial:
            raise InvalidDuration(
                f"maximum_interval must be at least initial_interval ({initial} s), got {maximum} s"
            )
        set_(self, "maximum_interval", maximum)
        set_(self, "backoff_coefficient", _coefficient(self.backoff_coefficient))
        _check_attempts(self.maximum_attempts)
        set_(self, "non_retryable_error_types", _error_types(self.non_retryable_error_types))

    def allows(self, next_attempt: int, error_type: str) -> bool:
        """Whether ``next_attempt`` may run after an attempt failed with ``error_type``."""
        if error_type in self.non_retryable_error_types:
            return False
        return self.maximum_attempts == 0 or next_attempt <= self.maximum_attempts


def _coefficient(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"backoff_coefficient must be a number >= 1, got {value!r}")
    try:
        coefficient = float(value)
    except OverflowError:  # an int beyond float range
        coefficient = math.inf
    if not 1.0 <= coefficient < math.inf:
        raise ConfigurationError(
            f"backoff_coefficient must be a finite number >= 1, got {short(value)}"
        )
    return coefficient


def _check_attempts(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"maximum_attempts must be a whole number from 0 (unlimited) to {MAX_ATTEMPTS}, "
            f"got {value!r}"
        )
    if not 0 <= value <= MAX_ATTEMPTS:
        raise ConfigurationError(
            f"maximum_attempts must be from 0 (unlimited) to {MAX_ATTEMPTS}, got {short(value)}"
        )


def _error_types(value: object) -> tuple[str, ...]:
    # one name given as a bare string means that name, not its letters
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (tuple, list, set, frozenset)) or not all(
        isinstance(name, str) for name in names
    ):
        raise ConfigurationError(
            f"non_retryable_error_types must be error type names like 'ValueError', "
            f"got {short(value)}"
        )
    return tuple(names)


def maximum_interval_s(policy: RetryPolicy) -> float:
    """The longest wait ``policy`` allows: its ``maximum_interval``, else 100 x its initial
    interval (at most ``MAX_DURATION_S``)."""
    if policy.maximum_interval is not None:
        return policy.maximum_interval
    return min(100.0 * policy.initial_interval, MAX_DURATION_S)


def delay_s(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait before ``attempt`` (2 is the first retry); never overflows.

    ``initial_interval * backoff_coefficient ** (attempt - 2)``, at most the maximum interval.
    """
    initial = policy.initial_interval
    cap = maximum_interval_s(policy)
    # Past 2**63 steps every coefficient > 1 has reached the cap; the bound keeps floats finite.
    steps = min(attempt - 2, 2**63)
    coefficient = policy.backoff_coefficient
    if steps <= 0 or initial == 0.0 or initial >= cap or coefficient == 1.0:
        return min(initial, cap)
    # Cap before exponentiating: 2.0 ** 1024 already overflows a float. The delay reaches the
    # cap once steps * log(c) >= log(cap / initial); logs of each side keep this finite.
    if steps * math.log(coefficient) >= math.log(cap) - math.log(initial):
        return cap
    try:
        return min(cap, initial * coefficient**steps)
    except OverflowError:  # a tiny initial interval: c**steps alone is out of range
        return min(cap, math.exp(math.log(initial) + steps * math.log(coefficient)))
