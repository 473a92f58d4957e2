"""Backoff schedule for push retries and for reconnecting to Kamailio (pure, no clock, no sleep).

The caller owns time and randomness: it passes ``now`` and an RNG, so tests replay a
schedule exactly with a seeded :class:`random.Random`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
