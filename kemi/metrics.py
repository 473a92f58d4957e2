"""Prometheus counters kept by Kamailio's xhttp_prom (declared in pushgate.cfg).

Every timeline event the routing logs is also counted here, so the log and the metrics
never disagree. Without xhttp_prom loaded (PUSHGATE_METRICS off) nothing is counted.
"""

from __future__ import annotations

import KSR

# event -> (counter, label fields taken from the event, or fixed label values)
_EVENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "request_in": ("requests", ("method", "action")),
    "push_request": ("pushes", ("kind",)),
    "push_result": ("push_results", ("verdict",)),
    "resume": ("held_calls", ("=resumed",)),
    "hold_timeout": ("held_calls", ("=timeout",)),
    "push_failed_reply": ("held_calls", ("=push_failed",)),
    "cancel_held": ("held_calls", ("=cancelled",)),
    "push_unavailable": ("held_calls", ("=pushd_unavailable",)),
    "wake_token": ("wake_tokens", ("accepted",)),
    "push_resent": ("pushes_resent", ()),
    "push_taken_over": ("pushes_taken_over", ()),
    "push_result_late": ("push_results_late", ()),
    "push_limited": ("held_calls", ("=push_limited",)),
    "edge_binding": ("edge_bindings", ("capped", "refreshable")),
    "hold_refused": ("held_calls", ("=refused_no_memory",)),
}

ENABLED = hasattr(KSR, "xhttp_prom")


def observe(event: str, fields: dict[str, object]) -> None:
    spec = _EVENTS.get(event)
    if spec is None or not ENABLED:
        return
    name, label_specs = spec
    labels = [s[1:] if s.startswith("=") else str(fields.get(s, "")) for s in label_specs]
    metric = f"pushgate_{name}_total"
    if not labels:
        KSR.xhttp_prom.counter_inc_l0(metric, int(str(fields.get("count", 1))))
    elif len(labels) == 1:
        KSR.xhttp_prom.counter_inc_l1(metric, 1, labels[0])
    else:
        KSR.xhttp_prom.counter_inc_l2(metric, 1, labels[0], labels[1])


def pushd_connected(up: bool) -> None:
    if ENABLED:
        KSR.xhttp_prom.gauge_set_l0("pushgate_pushd_connected", "1" if up else "0")
