"""Backoff schedule: exponential growth, cap, jitter bounds, Retry-After, deadline fit."""

from __future__ import annotations

import email.utils
import random

import pytest

from pushd.retry import (
    MAX_RETRY_AFTER,
    RetryPolicy,
    fits_deadline,
    next_delay,
    parse_retry_after,
)

NO_JITTER = RetryPolicy(initial_delay=0.25, max_delay=5.0, multiplier=2.0, jitter=0.0)


def test_exponential_growth_without_jitter() -> None:
    rng = random.Random(1)
    delays = [next_delay(a, None, NO_JITTER, rng) for a in range(1, 8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_within_bounds_and_varies() -> None:
    policy = RetryPolicy()  # jitter 0.2
    rng = random.Random(42)
    for attempt in range(1, 12):
        base = min(5.0, 0.25 * 2 ** (attempt - 1))
        samples = [next_delay(attempt, None, policy, rng) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in samples)
        assert len(set(samples)) > 100  # actually random, not a constant


def test_seeded_rng_replays_the_same_schedule() -> None:
    policy = RetryPolicy()
    first = [next_delay(a, None, policy, random.Random(7)) for a in range(1, 6)]
    second = [next_delay(a, None, policy, random.Random(7)) for a in range(1, 6)]
    assert first == second
    assert first[0] == pytest.approx(0.25 * (1 + random.Random(7).uniform(-0.2, 0.2)))


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(3)
    assert next_delay(1, 30.0, RetryPolicy(), rng) == 30.0  # above max_delay: still honoured
    assert next_delay(5, 0.1, NO_JITTER, rng) == 4.0  # below backoff: backoff wins
    assert next_delay(1, 0.0, NO_JITTER, rng) == 0.25


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert next_delay(10_000, None, NO_JITTER, random.Random(0)) == 5.0


def test_attempt_zero_or_negative_is_treated_as_first() -> None:
    assert next_delay(0, None, NO_JITTER, random.Random(0)) == 0.25


def test_full_jitter_never_goes_negative() -> None:
    policy = RetryPolicy(jitter=1.0)
    rng = random.Random(5)
    assert all(next_delay(1, None, policy, rng) >= 0 for _ in range(500))


@pytest.mark.parametrize(
    ("now", "delay", "deadline", "fits"),
    [(100.0, 1.0, 102.0, True), (100.0, 2.0, 102.0, False), (100.0, 3.0, 102.0, False)],
)
def test_fits_deadline(now: float, delay: float, deadline: float, fits: bool) -> None:
    assert fits_deadline(now, delay, deadline) is fits


# -- parse_retry_after (APNs and FCM headers) --


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("86400", MAX_RETRY_AFTER),
        ("86401", MAX_RETRY_AFTER),
        ("9" * 5000, MAX_RETRY_AFTER),  # beyond int()'s digit limit: still no exception
    ],
)
def test_retry_after_in_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=1_000_000.0) == expected


def test_retry_after_as_http_date() -> None:
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now + 120, usegmt=True), now) == (
        pytest.approx(120.0)
    )
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # already past
    assert parse_retry_after("Sat, 14 Nov 2099 22:00:00 GMT", now) == MAX_RETRY_AFTER


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "²",  # str.isdigit() is True, float() raises
        "1²",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: isdigit(), and float() would take it
        "\uff13\uff10",  # FULLWIDTH "30"
        "-5",
        "+5",
        "2.5",
        "1e12",
        "inf",
        "nan",
        "5 s",
        "Tue, 99 Nov 2023 22:13:50 GMT",
        "Tue, 14 Nov 99999999999 22:13:50 GMT",
        "\x00",
    ],
)
def test_garbage_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, now=1_700_000_000.0) is None
