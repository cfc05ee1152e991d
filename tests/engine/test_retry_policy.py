"""RetryPolicy validation and the backoff delay, as pure functions (no engine).

Every field is checked when the policy is made, with an error naming the field and its allowed
range: a policy that cannot be honoured must never reach a partition, where a NaN or an
overflowing backoff once made an activity retry in a hot loop past its maximum attempts.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

import duraflow as df
from duraflow.config import MAX_DURATION_S
from duraflow.engine.retry import MAX_ATTEMPTS, delay_s

NAN = float("nan")
INF = float("inf")


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        pytest.param("initial_interval", NAN, "finite, non-negative", id="initial-nan"),
        pytest.param("initial_interval", INF, "finite, non-negative", id="initial-inf"),
        pytest.param("initial_interval", -1.0, "finite, non-negative", id="initial-negative"),
        pytest.param("initial_interval", 1e300, "at most 100 years", id="initial-1e300"),
        pytest.param("initial_interval", 10**400, "at most 100 years", id="initial-huge-int"),
        pytest.param("initial_interval", "36600d", "at most 100 years", id="initial-36600d"),
        pytest.param("maximum_interval", NAN, "finite, non-negative", id="maximum-nan"),
        pytest.param("maximum_interval", INF, "finite, non-negative", id="maximum-inf"),
        pytest.param("maximum_interval", -5, "finite, non-negative", id="maximum-negative"),
        pytest.param("maximum_interval", 1e300, "at most 100 years", id="maximum-1e300"),
        pytest.param("maximum_interval", 0, "at least initial_interval", id="maximum-zero"),
        pytest.param("maximum_interval", 0.5, "at least initial_interval", id="maximum-below"),
    ],
)
def test_bad_intervals_are_refused_naming_the_field(field: str, value: Any, named: str) -> None:
    with pytest.raises(df.InvalidDuration) as caught:
        df.RetryPolicy(**{field: value})

    message = str(caught.value)
    assert field in message
    assert named in message


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        pytest.param("backoff_coefficient", NAN, "finite number >= 1", id="coefficient-nan"),
        pytest.param("backoff_coefficient", INF, "finite number >= 1", id="coefficient-inf"),
        pytest.param("backoff_coefficient", 10**400, "finite number >= 1", id="coefficient-int"),
        pytest.param("backoff_coefficient", 0.5, "finite number >= 1", id="coefficient-half"),
        pytest.param("backoff_coefficient", 0, "finite number >= 1", id="coefficient-zero"),
        pytest.param("backoff_coefficient", -2.0, "finite number >= 1", id="coefficient-negative"),
        pytest.param("backoff_coefficient", "2", "a number >= 1", id="coefficient-str"),
        pytest.param("backoff_coefficient", True, "a number >= 1", id="coefficient-bool"),
        pytest.param("maximum_attempts", -1, f"from 0 (unlimited) to {MAX_ATTEMPTS}", id="neg"),
        pytest.param("maximum_attempts", 2**31, f"to {MAX_ATTEMPTS}, got 2147483648", id="2**31"),
        pytest.param("maximum_attempts", 10**100, f"to {MAX_ATTEMPTS}", id="attempts-googol"),
        pytest.param("maximum_attempts", 2.5, "a whole number", id="attempts-float"),
        pytest.param("maximum_attempts", NAN, "a whole number", id="attempts-nan"),
        pytest.param("maximum_attempts", True, "a whole number", id="attempts-bool"),
        pytest.param("non_retryable_error_types", [ValueError], "error type names", id="class"),
        pytest.param("non_retryable_error_types", 3, "error type names", id="types-int"),
    ],
)
def test_bad_numbers_are_refused_naming_the_field_and_range(
    field: str, value: Any, named: str
) -> None:
    with pytest.raises(df.ConfigurationError) as caught:
        df.RetryPolicy(**{field: value})

    message = str(caught.value)
    assert field in message
    assert named in message


def test_limits_themselves_are_accepted() -> None:
    policy = df.RetryPolicy(
        initial_interval=0,
        backoff_coefficient=1,
        maximum_interval=MAX_DURATION_S,
        maximum_attempts=MAX_ATTEMPTS,
        non_retryable_error_types="ValueError",
    )

    assert (0.0, 1.0, MAX_DURATION_S, MAX_ATTEMPTS, ("ValueError",)) == (
        policy.initial_interval,
        policy.backoff_coefficient,
        policy.maximum_interval,
        policy.maximum_attempts,
        policy.non_retryable_error_types,
    )
    assert 3155760000.0 == MAX_DURATION_S  # 100 years of 365.25 days, as documented


def test_maximum_interval_may_equal_initial_interval() -> None:
    policy = df.RetryPolicy(initial_interval="2s", maximum_interval=2)

    assert [2.0, 2.0, 2.0] == [delay_s(policy, n) for n in (2, 3, 50)]


# -- delay_s --------------------------------------------------------------------------------------


def test_default_policy_doubles_from_one_second_up_to_100_seconds() -> None:
    policy = df.RetryPolicy()

    assert [1.0, 2.0, 4.0, 8.0, 64.0, 100.0, 100.0] == [
        delay_s(policy, n) for n in (2, 3, 4, 5, 8, 9, 10)
    ]


@pytest.mark.parametrize("attempt", [1_025, 1_026, 1_027, 10**9, 10**30, 2**63 + 5])
def test_far_attempts_wait_the_maximum_interval_without_overflow(attempt: int) -> None:
    # 2.0 ** 1024 overflows a float: attempt 1,026 of the default policy raised OverflowError
    default = df.RetryPolicy()
    widest = df.RetryPolicy(maximum_interval=MAX_DURATION_S)

    assert 100.0 == delay_s(default, attempt)
    assert MAX_DURATION_S == delay_s(widest, attempt)


def test_huge_coefficient_reaches_the_cap_at_once() -> None:
    policy = df.RetryPolicy(
        initial_interval=0.001, backoff_coefficient=1e300, maximum_interval=0.01
    )

    assert [0.001, 0.01, 0.01, 0.01] == [delay_s(policy, n) for n in (2, 3, 4, 5)]


def test_tiny_initial_interval_grows_without_overflow() -> None:
    # 2.0 ** 1070 alone is out of float range, but 5e-324 * 2 ** 1070 is 1/16 s
    policy = df.RetryPolicy(initial_interval=5e-324, maximum_interval=1.0)

    assert 0.0625 == pytest.approx(delay_s(policy, 1072), rel=1e-9)
    assert 1.0 == delay_s(policy, 1080)


@pytest.mark.parametrize(
    "policy",
    [
        df.RetryPolicy(),
        df.RetryPolicy(initial_interval=0.05, backoff_coefficient=1.5, maximum_interval=7),
        df.RetryPolicy(initial_interval="1d", backoff_coefficient=1.0000001),
        df.RetryPolicy(initial_interval=1e-9, backoff_coefficient=1e10, maximum_interval="36500d"),
    ],
    ids=["default", "1.5x", "barely-growing", "steep"],
)
def test_delays_never_shrink_and_stay_within_the_maximum(policy: df.RetryPolicy) -> None:
    attempts = [*range(1, 3_000), 10**6, 10**12, 10**18]
    delays = [delay_s(policy, n) for n in attempts]

    cap = policy.maximum_interval or 100 * policy.initial_interval
    assert all(math.isfinite(d) and 0 <= d <= cap for d in delays)
    assert delays == sorted(delays)


def test_no_backoff_and_zero_interval() -> None:
    flat = df.RetryPolicy(initial_interval=0.25, backoff_coefficient=1.0)
    immediate = df.RetryPolicy(initial_interval=0)

    assert [0.25, 0.25, 0.25] == [delay_s(flat, n) for n in (2, 500, 10**9)]
    assert [0.0, 0.0, 0.0] == [delay_s(immediate, n) for n in (2, 500, 10**9)]
