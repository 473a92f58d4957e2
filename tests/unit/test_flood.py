"""Push flood limits: coalescing, held calls per AoR, pushes per device and per caller."""

from __future__ import annotations

from pushgate.flood import Limits, Plan, device_count_key, plan

LIMITS = Limits(max_held=4, device_pushes=6, caller_pushes=3, window=60)


def decide(
    devices: list[str],
    *,
    held: int = 0,
    caller: int = 0,
    recent: dict[str, int] | None = None,
    in_flight: set[str] | None = None,
) -> Plan:
    return plan(
        devices,
        held_for_aor=held,
        caller_recent=caller,
        device_recent=recent or {},
        in_flight=in_flight or set(),
        limits=LIMITS,
    )


def test_a_first_call_pushes_every_sleeping_device() -> None:
    p = decide(["a", "b"])
    assert (p.push, p.coalesced, p.reject, p.hold) == (("a", "b"), (), None, True)


def test_a_device_with_a_push_in_flight_is_not_pushed_again() -> None:
    p = decide(["a", "b"], held=1, in_flight={"a"})
    assert (p.push, p.coalesced) == (("b",), ("a",))
    assert decide(["a"], held=1, in_flight={"a"}).push == ()
    assert decide(["a"], held=1, in_flight={"a"}).hold


def test_too_many_held_calls_for_one_aor_are_answered_486_at_once() -> None:
    p = decide(["a"], held=4, in_flight={"a"})
    assert p.reject == (486, "Busy Here", "Too many calls waiting for the device")
    assert not p.hold


def test_a_device_over_its_push_budget_is_not_pushed() -> None:
    assert decide(["a", "b"], recent={"a": 6, "b": 5}).push == ("b",)
    p = decide(["a"], recent={"a": 6})
    assert p.reject is not None and p.reject[0] == 480


def test_a_caller_over_its_budget_pushes_nobody_but_may_still_wait_for_a_wake_up() -> None:
    assert decide(["a"], caller=3).reject is not None
    waiting = decide(["a", "b"], caller=3, in_flight={"a"})
    assert (waiting.push, waiting.coalesced, waiting.reject) == ((), ("a",), None)


def test_a_devices_push_count_is_keyed_by_its_push_token_not_its_binding() -> None:
    """Every node and every edge counts one device under one key (their ruids differ)."""
    token = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0"
    key = device_count_key("apns", token)
    assert key == device_count_key("APNs", token)
    assert key != device_count_key("apns", token[:-1] + "1")
    assert key != device_count_key("fcm", token)
    # A Web Push subscription URI (up to 1,024 characters) gives a short key too.
    assert len(device_count_key("webpush", "https://push.example/" + "x" * 1000)) == len(key)
    assert key.startswith("d:")
