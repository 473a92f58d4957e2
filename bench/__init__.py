"""Benchmarks for Pushgate: ``python -m bench.push_throughput`` and ``python -m bench.sip_latency``.

Both run on loopback only, against local fakes (APNs, FCM) or a throwaway Kamailio, and
stop by themselves: every loop is bounded in count and in time. See ``bench/README.md``.

This module holds the small helpers both benchmarks share: percentiles, and a look at how
busy the machine's cores are (a benchmark on a shared machine must notice its neighbours).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

PERCENTILES = (50.0, 90.0, 99.0)
QUIET_SHARE = 0.1
"""Mean busy share of the watched cores below which the machine counts as quiet."""
QUIET_SAMPLE = 0.5


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (NaN when it is empty)."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(pct / 100.0 * len(sorted_values))
    return float(sorted_values[min(max(rank, 1), len(sorted_values)) - 1])


def summarize_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max (and count) in milliseconds of durations given in seconds."""
    ordered = sorted(values_s)
    out = {f"p{pct:g}": round(percentile(ordered, pct) * 1000.0, 3) for pct in PERCENTILES}
    out["max"] = round(ordered[-1] * 1000.0, 3) if ordered else math.nan
    out["count"] = float(len(ordered))
    return out


def core_busy_seconds(cores: set[int]) -> float:
    """Busy time (everything but idle and iowait, steal included) of ``cores``, /proc/stat."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        ticks = [int(v) for v in values]
        busy += sum(ticks) - ticks[3] - ticks[4]  # idle, iowait
        if len(ticks) > 8:
            busy -= ticks[8] + (ticks[9] if len(ticks) > 9 else 0)  # guest: already in user
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(cores: set[int], limit: float, out: TextIO) -> float:
    """Wait (at most ``limit`` s) until ``cores`` are nearly idle; returns the time waited.

    The machine may be shared (a test suite running beside the benchmark); starting while
    it is busy would measure the neighbour rather than the system under test.
    """
    started = time.monotonic()
    told = False
    while True:
        busy0, t0 = core_busy_seconds(cores), time.monotonic()
        time.sleep(QUIET_SAMPLE)
        share = (core_busy_seconds(cores) - busy0) / (time.monotonic() - t0) / len(cores)
        waited = time.monotonic() - started
        if share <= QUIET_SHARE:
            if told:
                print(f"  quiet after {waited:.0f} s", file=out, flush=True)
            return waited
        if waited >= limit:
            print(
                f"  still {share:.0%} busy after {waited:.0f} s: measuring anyway",
                file=out,
                flush=True,
            )
            return waited
        if not told:
            print(
                f"  cores {sorted(cores)} are {share:.0%} busy with other work: waiting "
                f"up to {limit:.0f} s for quiet",
                file=out,
                flush=True,
            )
            told = True
