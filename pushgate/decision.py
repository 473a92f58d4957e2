"""Relay, push or reject: the decision for a request to an AoR, from its bindings.

A binding's flow is alive when its transport has no connection state (UDP: we
cannot know, so we try) or when its TCP/TLS/WS connection is still open. The
caller supplies the connection check: this module never touches Kamailio.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pushgate.pn_params import PushParams

CONNECTION_TRANSPORTS = frozenset({"tcp", "tls", "ws", "wss", "sctp"})


class Action(enum.Enum):
    RELAY = "relay"  # at least one live flow: send now
    PUSH = "push"  # only sleeping push-capable bindings: push, hold the request
    UNAVAILABLE = "unavailable"  # registered but unreachable: 480 now


@dataclass(frozen=True, kw_only=True)
class Binding:
    """One usrloc contact, as far as the decision needs it."""

    ruid: str
    uri: str
    instance: str
    transport: str
    alive: bool
    push: PushParams | None
    target: str = ""
    """Where a request for this binding goes: its ``received`` flow address, else its URI."""
    conid: int = 0
    """Kamailio's id of the binding's TCP/TLS/WS connection (0: none known)."""
    remote: bool = False
    """Its flow is another cluster node's (docs/cluster.md): reached through that node,
    which alone knows whether the flow is open; counted as alive here."""


@dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    relay: tuple[Binding, ...] = ()
    push: tuple[Binding, ...] = ()
    reason: str = ""


def flow_alive(transport: str, conid: int, connection_open: bool) -> bool:
    """Whether a binding's flow can carry a request right now.

    ``conid`` <= 0 on a connection transport means the binding was loaded from the
    database (Kamailio restarted) or never had a connection: asleep.
    """
    if transport.lower() not in CONNECTION_TRANSPORTS:
        return True
    return conid > 0 and connection_open


def decide(bindings: list[Binding]) -> Decision:
    """What to do with a call to an AoR that has ``bindings`` (already non-expired)."""
    if not bindings:
        return Decision(action=Action.UNAVAILABLE, reason="no registered device")
    live = tuple(b for b in bindings if b.alive)
    sleeping = tuple(b for b in bindings if not b.alive and b.push is not None)
    if live:
        return Decision(action=Action.RELAY, relay=live, push=sleeping)
    if sleeping:
        return Decision(action=Action.PUSH, push=sleeping)
    return Decision(action=Action.UNAVAILABLE, reason="device unreachable and not push-capable")


def expired(expires: int, now: float) -> bool:
    """usrloc ``expires`` is an absolute time; 0 means a permanent binding."""
    return 0 < expires <= now


def dead_targets(bindings: list[Binding]) -> frozenset[str]:
    """Destinations of bindings whose flow is dead: branches to them must not be sent."""
    return frozenset(b.target or b.uri for b in bindings if not b.alive)


def transport_of(socket: str, received: str, uri: str) -> str:
    """Transport of a binding from its usrloc socket (``tcp:1.2.3.4:5060``), else its URIs."""
    if ":" in socket:
        return socket.split(":", 1)[0].lower()
    for candidate in (received, uri):
        for part in candidate.split(";")[1:]:
            name, _, value = part.partition("=")
            if name.strip().lower() == "transport" and value:
                return value.strip().lower()
    return "udp"


def woke_on(bindings: list[Binding], conid: int, requested: bool) -> bool:
    """Whether a REGISTER that arrived on connection ``conid`` left a live binding there.

    Taken from what usrloc did, not from what the REGISTER asked: an un-REGISTER whose
    Contact matched nothing leaves no binding on the connection. Without a connection
    (UDP) it falls back to the request (``requested``: a Contact with a non-zero expiry).
    """
    if conid > 0:
        return any(b.alive and b.conid == conid for b in bindings)
    return requested and bool(bindings)
