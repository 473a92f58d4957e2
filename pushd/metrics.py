"""In-process counters and histograms, rendered as Prometheus text on ``GET /metrics``.

Deliberately tiny: pushd is one asyncio loop, so plain dicts need no locking, and
a few lines of text rendering save the Prometheus client library as a dependency.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds from receiving a push request to its final verdict."""


def _labels(names: Sequence[str], values: Sequence[str]) -> Labels:
    if len(names) != len(values):
        raise ValueError(f"expected labels {tuple(names)}, got {tuple(values)}")
    return tuple(zip(names, values, strict=True))


@dataclass
class Counter:
    name: str
    help: str
    label_names: tuple[str, ...] = ()
    values: dict[Labels, float] = field(default_factory=dict)

    _keys: dict[tuple[str, ...], Labels] = field(default_factory=dict, repr=False)
    """Label values -> their Labels key: a busy pushd counts the same few, 3 per push."""

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        key = self._keys.get(label_values)
        if key is None:
            key = self._keys[label_values] = _labels(self.label_names, label_values)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, *label_values: str) -> float:
        return self.values.get(_labels(self.label_names, label_values), 0.0)

    def total(self) -> float:
        return sum(self.values.values())


@dataclass
class HistogramSeries:
    buckets: tuple[float, ...]
    counts: list[int]
    sum: float = 0.0
    count: int = 0


@dataclass
class Histogram:
    name: str
    help: str
    label_names: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    series: dict[Labels, HistogramSeries] = field(default_factory=dict)

    def observe(self, value: float, *label_values: str) -> None:
        key = _labels(self.label_names, label_values)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = HistogramSeries(self.buckets, [0] * len(self.buckets))
        # Non-cumulative per bucket; render() accumulates, as Prometheus expects.
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.buckets):
            s.counts[i] += 1
        s.sum += value
        s.count += 1


class Metrics:
    """Every metric pushd keeps; one instance per daemon."""

    def __init__(self) -> None:
        self.pushes_total = Counter(
            "pushd_pushes_total", "Push requests by final verdict.", ("provider", "verdict")
        )
        self.attempts_total = Counter(
            "pushd_push_attempts_total",
            "Provider attempts by per-attempt verdict (retry included).",
            ("provider", "verdict"),
        )
        self.config_errors_total = Counter(
            "pushd_config_errors_total",
            "Provider answers that mean our configuration is wrong.",
            ("provider", "reason"),
        )
        self.results_dropped_total = Counter(
            "pushd_results_dropped_total",
            "Results dropped because the queue to Kamailio was full or pushd stopped.",
        )
        self.push_seconds = Histogram(
            "pushd_push_seconds", "Time from push request to final verdict.", ("provider",)
        )
        self.in_flight = 0

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for c in (
            self.pushes_total,
            self.attempts_total,
            self.config_errors_total,
            self.results_dropped_total,
        ):
            lines += [f"# HELP {c.name} {c.help}", f"# TYPE {c.name} counter"]
            lines += [f"{c.name}{_fmt(k)} {_num(v)}" for k, v in sorted(c.values.items())]
        h = self.push_seconds
        lines += [f"# HELP {h.name} {h.help}", f"# TYPE {h.name} histogram"]
        for key, s in sorted(h.series.items()):
            acc = 0
            for bound, n in zip(s.buckets, s.counts, strict=True):
                acc += n
                lines.append(f"{h.name}_bucket{_fmt((*key, ('le', _num(bound))))} {acc}")
            lines.append(f"{h.name}_bucket{_fmt((*key, ('le', '+Inf')))} {s.count}")
            lines.append(f"{h.name}_sum{_fmt(key)} {_num(s.sum)}")
            lines.append(f"{h.name}_count{_fmt(key)} {s.count}")
        lines += [
            "# HELP pushd_in_flight Push requests being worked on.",
            "# TYPE pushd_in_flight gauge",
            f"pushd_in_flight {self.in_flight}",
        ]
        return "\n".join(lines) + "\n"


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    if math.isfinite(v) and v == int(v):
        return str(int(v))
    return repr(v)
