"""pushd's metrics: prometheus_client collectors in a registry of pushd's own.

The HTTP API serves :meth:`Metrics.render` on ``GET /metrics``. A registry per
:class:`Metrics` (not the library's global one) keeps two daemons in one process (tests)
apart and leaves out the library's process/platform collectors.
"""

from __future__ import annotations

from typing import TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds from receiving a push request to its final verdict."""
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# Without this every counter and histogram gets a "<name>_created" series per label set:
# series pushd never had, and nothing to alert on.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """Every metric pushd keeps; one instance per daemon."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        r = self.registry
        self.pushes_total = Counter(
            "pushd_pushes_total",
            "Push requests by final verdict.",
            ("provider", "verdict"),
            registry=r,
        )
        self.attempts_total = Counter(
            "pushd_push_attempts_total",
            "Provider attempts by per-attempt verdict (retry included).",
            ("provider", "verdict"),
            registry=r,
        )
        self.config_errors_total = Counter(
            "pushd_config_errors_total",
            "Provider answers that mean our configuration is wrong.",
            ("provider", "reason"),
            registry=r,
        )
        self.results_dropped_total = Counter(
            "pushd_results_dropped_total",
            "Results dropped because the queue to Kamailio was full or pushd stopped.",
            registry=r,
        )
        self.push_seconds = Histogram(
            "pushd_push_seconds",
            "Time from push request to final verdict.",
            ("provider",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("pushd_in_flight", "Push requests being worked on.", registry=r)

    def child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, kept: a busy pushd counts the same few label sets,
        three per push, and ``labels()`` checks and locks on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child  # type: ignore[return-value]

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0 when it has none yet): for tests and diagnostics."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (:data:`CONTENT_TYPE`)."""
        return prometheus_client.generate_latest(self.registry)
