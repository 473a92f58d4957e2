"""Push flood limits: which devices a call to a sleeping AoR may push (pure).

A VoIP push rings the phone and counts against the app at Apple, so a loop of INVITEs
(or INVITE/CANCEL pairs) to one sleeping user must not become a loop of pushes. Three
limits, each per target so other users are never affected:

- **coalescing**: a device with a call push still in flight (pushed, not yet
  re-registered, within the hold timeout) is not pushed again; the new call is held
  and released by the same wake-up;
- **held calls per AoR**: at most ``max_held`` INVITEs wait for one AoR at a time;
  more are answered at once (486);
- **pushes per device and per caller**: at most ``device_pushes`` call pushes per device
  and ``caller_pushes`` per (caller, AoR) in a sliding ``window``; over either, the
  device is not pushed; with no device left, the call is answered at once (480).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_held: int = 4
    device_pushes: int = 6
    caller_pushes: int = 3
    window: int = 60
    """Seconds over which pushes are counted."""


def device_count_key(provider: str, prid: str) -> str:
    """The htable key of a device's push count: its push token, the one thing that names
    the device the same way on every node and every edge (usrloc's ruid differs between
    edges, and changes when a device without an instance registers a new Contact).
    Hashed: a Web Push subscription URI is up to 1,024 characters."""
    digest = hashlib.sha256(f"{provider.lower()}|{prid}".encode()).hexdigest()
    return f"d:{digest[:32]}"


@dataclass(frozen=True, kw_only=True)
class Plan:
    push: tuple[str, ...] = ()
    """Devices (usrloc ruids) to push now."""
    coalesced: tuple[str, ...] = ()
    """Devices already pushed for an earlier call: wait for that wake-up."""
    reject: tuple[int, str, str] | None = None
    """(status, reason phrase, Reason text) to answer at once instead of holding."""

    @property
    def hold(self) -> bool:
        return self.reject is None and bool(self.push or self.coalesced)


def plan(
    devices: list[str],
    *,
    held_for_aor: int,
    caller_recent: int,
    device_recent: dict[str, int],
    in_flight: set[str],
    limits: Limits,
) -> Plan:
    """What to do with a call to an AoR whose sleeping push-capable ``devices`` are given.

    ``held_for_aor``: calls already held for the AoR; ``caller_recent``: call pushes this
    caller caused to this AoR within the window; ``device_recent``: call pushes per
    device within the window; ``in_flight``: devices pushed and not woken yet.
    """
    if held_for_aor >= limits.max_held:
        return Plan(reject=(486, "Busy Here", "Too many calls waiting for the device"))
    coalesced = tuple(d for d in devices if d in in_flight)
    fresh = [d for d in devices if d not in in_flight]
    if caller_recent >= limits.caller_pushes:
        fresh = []
    push = tuple(d for d in fresh if device_recent.get(d, 0) < limits.device_pushes)
    if not push and not coalesced:
        return Plan(reject=(480, "Temporarily Unavailable", "Push rate limit reached"))
    return Plan(push=push, coalesced=coalesced)
