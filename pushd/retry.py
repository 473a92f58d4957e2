"""Backoff schedule for push retries and for reconnecting to Kamailio (pure, no clock, no sleep).

The caller owns time and randomness: it passes ``now`` and an RNG, so tests replay a
schedule exactly with a seeded :class:`random.Random`. :func:`parse_retry_after` reads
the providers' Retry-After headers (APNs and FCM alike).
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass

MAX_RETRY_AFTER = 24 * 3600.0
"""Cap on a server-provided Retry-After: a typo or an "infinity" must not park a push forever."""

# 2**64 is already far beyond any max_delay; capping the exponent keeps float maths finite
# however long a connection stays down.
_MAX_EXPONENT = 64


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with multiplicative jitter."""

    initial_delay: float = 0.25
    """Delay (s) before the second attempt, before jitter."""
    max_delay: float = 5.0
    """Cap (s) on the exponential part; Retry-After may still ask for more."""
    multiplier: float = 2.0
    """Growth factor per attempt (>= 1)."""
    jitter: float = 0.2
    """Fraction (0..1): each delay is scaled by a random factor in [1 - jitter, 1 + jitter]."""


def next_delay(
    attempt: int, retry_after: float | None, policy: RetryPolicy, rng: random.Random
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Never less than ``retry_after``: the provider told us when it will take us back, and
    coming earlier only earns another 429/503.
    """
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    base = min(policy.max_delay, policy.initial_delay * policy.multiplier**exponent)
    # Jitter spreads the retries of a burst that failed together (APNs 503, FCM 429).
    delay = base * (1.0 + rng.uniform(-policy.jitter, policy.jitter))
    delay = max(delay, 0.0)
    if retry_after is not None and retry_after > delay:
        return float(retry_after)
    return delay


def fits_deadline(now: float, delay: float, deadline: float) -> bool:
    """True when an attempt ``delay`` s after ``now`` would still start before ``deadline``."""
    return now + delay < deadline


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header; None when absent or unusable.

    RFC 9110 allows two forms: delay-seconds (ASCII digits only: ``str.isdigit`` alone
    would let superscript or non-Latin digits through) and an HTTP-date, for which ``now`` (epoch
    seconds) is needed. The result lies within 0..:data:`MAX_RETRY_AFTER`; a date in the
    past gives 0. Anything else ("soon", "-5", "2.5") is ignored: the caller's own
    backoff applies.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        seconds = float(text)  # float, not int: no digit limit, huge values become inf
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
            seconds = when.timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
