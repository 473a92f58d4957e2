"""Edge mode's decisions (pure): which bindings the edge keeps, which device a call is for.

In edge mode (docs/edge.md) the registrar is another server (the *upstream*). Phones
register through the edge, which keeps its own copy of a binding when, and only when,
the upstream answers the REGISTER 2xx; the upstream's 2xx lists every binding of the
AoR, and the copy must hold only the ones registered through this edge. A call reaches
the edge once per device: the upstream forks and sends each branch to one binding, so
the edge decides per *device* (same ``+sip.instance``, or the same Contact URI for a
device without one), not per AoR.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from pushgate import registration, sipmsg, wake_token
from pushgate.decision import Binding
from pushgate.pn_params import PushParams, refreshable_by_push


def device_key(instance: str, uri: str) -> str:
    """What identifies a device across its registrations: its instance, else its URI."""
    return wake_token.normalise_instance(instance) or uri


def device_of(binding: Binding) -> str:
    return device_key(binding.instance, binding.uri)


def contact_key(uri: str) -> str:
    """A Contact URI as the upstream's 2xx is matched against the REGISTER: scheme, user,
    host, port and transport. An upstream may add parameters of its own to the Contacts
    it lists (FreeSWITCH's ``fs_nat``, ``fs_path``); it must not change these."""
    scheme, _, rest = uri.strip().partition(":")
    main, *params = rest.split(";")
    transport = ""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport":
            transport = value.strip().lower()
    return f"{scheme.lower()}:{main.split('?', 1)[0].lower()};{transport}"


@dataclass(frozen=True)
class Kept:
    """A usrloc binding as the copy's bookkeeping sees it."""

    ruid: str
    uri: str


def stale(
    saved: Iterable[Kept],
    *,
    granted: Collection[str],
    registered: Collection[str],
    kept_before: Collection[str],
) -> list[str]:
    """ruids to remove from the edge's copy after ``save()`` of the upstream's 2xx.

    ``granted``: Contact URIs of the 2xx (what the upstream holds now); ``registered``:
    the URIs of the REGISTER the edge relayed; ``kept_before``: the copy's URIs before
    this ``save()``; all compared by :func:`contact_key`. A binding stays when the
    upstream still holds it and it came through this edge (this REGISTER, or already in
    the copy). Everything else the 2xx made ``save()`` store is another device's,
    registered elsewhere: removed.
    """
    granted_keys = {contact_key(u) for u in granted}
    ours = {contact_key(u) for u in (*registered, *kept_before)}
    return [
        k.ruid
        for k in saved
        if contact_key(k.uri) not in granted_keys or contact_key(k.uri) not in ours
    ]


def granted_expires(
    reply_contacts: Sequence[str], uri: str, expires_header: int | None = None
) -> int | None:
    """The expiry the upstream's 2xx gives the binding ``uri``: its Contact's ``expires``
    (Kamailio, Asterisk), else the 2xx's Expires header (FreeSWITCH echoes the Contact)."""
    for contact in reply_contacts:
        if contact_key(sipmsg.contact_uri(contact)) == contact_key(uri):
            return registration.contact_expires(contact, expires_header)
    return None


@dataclass(frozen=True)
class Grant:
    """One push binding the upstream accepted, as the metrics count it."""

    asked: int | None
    granted: int
    refreshable: bool
    """A refresh push can wake the device before the binding lapses (docs/refresh.md)."""

    @property
    def capped(self) -> bool:
        """The upstream granted less than the phone asked (PBXs cap registrations)."""
        return self.asked is not None and 0 < self.granted < self.asked


def grant(asked: int | None, granted: int, push: PushParams) -> Grant:
    return Grant(asked=asked, granted=granted, refreshable=refreshable_by_push(push))


def woken_by(targets: Iterable[Mapping[str, str]], binding: Binding) -> bool:
    """Whether a held call pushed ``targets`` waits for the device of ``binding``."""
    prid = binding.push.prid if binding.push is not None else ""
    return waits_for(targets, binding.instance, prid)


def waits_for(targets: Iterable[Mapping[str, str]], instance: str, prid: str) -> bool:
    """Whether a held call pushed ``targets`` waits for the device with ``instance`` (the
    same instance) or, for a device without one, the push token ``prid``."""
    instance = wake_token.normalise_instance(instance)
    for target in targets:
        if instance and wake_token.normalise_instance(target.get("instance", "")) == instance:
            return True
        if not instance and prid and target.get("prid") == prid:
            return True
    return False


# ----- several edges (WITH_CLUSTER in edge.cfg, docs/edge.md) -----
HANDOFF_PEER = "pushgate_edge"
"""The dmq peer name of the edges' own KDMQ messages (the R-URI user)."""


class HandoffError(ValueError):
    pass


@dataclass(frozen=True)
class Handoff:
    """A device registered over a new flow on another edge: told to every edge, so one
    holding a call for it delivers it there, and later calls that reach it through the
    device's old Path (the upstream keeps it until it expires) follow the device."""

    aor: str
    """usrloc's key of the AoR (the same on every edge: one upstream, one domain)."""
    device: str
    """:func:`device_key`."""
    instance: str
    prid: str
    contact: str
    """The Contact URI the device registered (the R-URI of a call delivered to it)."""
    route: str
    """The announcing edge's URI with the new flow's token (``sip:TOKEN@host:port;
    transport=tcp;lr``): a request sent with it as its top Route reaches the device."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Handoff:
        try:
            data = json.loads(raw)
        except ValueError:
            raise HandoffError("not JSON") from None
        if not isinstance(data, dict):
            raise HandoffError("not a JSON object")
        fields = {}
        for name in ("aor", "device", "instance", "prid", "contact", "route"):
            value = data.get(name, "")
            if not isinstance(value, str):
                raise HandoffError(f"{name}: not a string")
            fields[name] = value
        for name in ("aor", "device", "contact", "route"):
            if not fields[name]:
                raise HandoffError(f"{name}: missing")
        if not fields["route"].lower().startswith("sip:") or ";lr" not in fields["route"]:
            raise HandoffError("route: not a loose-routing SIP URI")
        if not fields["contact"].lower().startswith(("sip:", "sips:")):
            raise HandoffError("contact: not a SIP URI")
        return cls(**fields)

    @property
    def next_hop(self) -> str:
        """Where to send a request carrying ``route``: its host, port and transport."""
        _, _, rest = self.route.partition("@")
        hostport, _, params = rest.partition(";")
        transport = ""
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "transport":
                transport = f";transport={value.strip().lower()}"
        return f"sip:{hostport}{transport}"


def handoff_route(token: str, hostport: str) -> str:
    """The Route URI another edge puts on a request for the device behind ``token`` (a
    flow token of this edge's, this edge's ``host:port``). Edges talk over TCP: a 180
    and its 200 cannot overtake each other."""
    return f"sip:{token}@{hostport};transport=tcp;lr"
