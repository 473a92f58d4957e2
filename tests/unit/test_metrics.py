"""Counters and histograms, and their Prometheus text rendering."""

from __future__ import annotations

import pytest

from pushd.metrics import Metrics


def test_counters_by_label() -> None:
    m = Metrics()
    m.pushes_total.inc("apns", "delivered")
    m.pushes_total.inc("apns", "delivered")
    m.pushes_total.inc("fcm", "give_up")
    assert m.pushes_total.get("apns", "delivered") == 2
    assert m.pushes_total.total() == 3
    with pytest.raises(ValueError):
        m.pushes_total.inc("apns")


def test_render_prometheus_text() -> None:
    m = Metrics()
    m.pushes_total.inc("apns", "delivered")
    m.push_seconds.observe(0.02, "apns")
    m.push_seconds.observe(0.2, "apns")
    m.push_seconds.observe(100.0, "apns")
    text = m.render()
    assert 'pushd_pushes_total{provider="apns",verdict="delivered"} 1' in text
    assert 'pushd_push_seconds_bucket{provider="apns",le="0.025"} 1' in text
    assert 'pushd_push_seconds_bucket{provider="apns",le="0.25"} 2' in text
    assert 'pushd_push_seconds_bucket{provider="apns",le="30"} 2' in text
    assert 'pushd_push_seconds_bucket{provider="apns",le="+Inf"} 3' in text
    assert 'pushd_push_seconds_count{provider="apns"} 3' in text
    assert "# TYPE pushd_push_seconds histogram" in text
    assert text.endswith("pushd_in_flight 0\n")


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.config_errors_total.inc("apns", 'bad "quote"\\')
    assert 'reason="bad \\"quote\\"\\\\"' in m.render()
