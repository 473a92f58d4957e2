"""Edge mode, Kamailio side: the phones' flows and the edge's copy of their bindings.

The upstream registrar stores each phone's binding with a Path through the edge, whose
user part is an RFC 5626 flow token naming the phone's flow (pushgate/flow_token.py).
The edge keeps:

- a copy of the push bindings in its own usrloc (``save()`` of the upstream's 2xx, in
  the REGISTER's onreply route), so pn params, instance and the granted expiry survive
  a restart and pushd's binding refresh reads them from the edge's ``location`` table;
- in htable ``pushgate_edge``, per device, the flow it last registered over (proto,
  addresses, TCP connection id) and, per flow, which device registered over it:

      d:<aor>|<device>   -> JSON FlowRecord   the device's current flow
      f:<flow key>       -> "<aor>|<device>"  a flow token names this device
      m:<aor>|<device>   -> JSON Handoff      several edges: the device registered on
                                              another edge since (its flow is there)
      h:<index:label>    -> JSON Handoff      a held call to deliver through that edge

  usrloc cannot hold the flow itself: ``save()`` in a reply route records the reply's
  connection (the upstream's), not the phone's. The table is memory only; after a
  restart every TCP flow is gone anyway, so every phone counts as asleep until it
  registers again, as bindings reloaded from the database do in the all-in-one mode.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import KSR

from pushgate import edge as plan
from pushgate import flow_token, registration, sipmsg
from pushgate.decision import Binding, flow_alive, transport_of
from pushgate.flow_token import Flow

FLOWS = "pushgate_edge"
LOCKS = "pushgate_edgelock"
STASH = "$avp(pushgate_edge)"
"""The REGISTER's flow and contacts, for its reply (AVPs travel with the transaction)."""
RR_USER = "$avp(pushgate_rr)"
"""rr's ``custom_user_avp`` (edge.cfg): the user part of our Record-Route, a flow token."""
TABLE = "location"
SAVE_FLAGS = 0x08
"""``save()`` of a reply: keep the expiry the upstream granted (no expires_range)."""
MARGIN = 300
"""Seconds a flow record outlives the binding it was registered for."""
HANDOFF_TTL = 3600 + MARGIN
"""Seconds an edge remembers that a device moved to another edge: the upstream's longest
usual binding (the old Path may bring calls here until it expires)."""

Fetch = Callable[[str], tuple[str, list[Binding]]]
"""``ksr_bindings.fetch``: usrloc's key of an AoR and its bindings."""


@dataclass(frozen=True)
class FlowRecord:
    flow: Flow
    conid: int
    """Kamailio's TCP connection id of the flow (-1: none, e.g. UDP)."""
    contact: str
    """The Contact URI registered over it."""

    def to_json(self) -> str:
        return json.dumps(
            {"flow": asdict(self.flow), "conid": self.conid, "contact": self.contact},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str) -> FlowRecord:
        data = json.loads(raw)
        return cls(flow=Flow(**data["flow"]), conid=int(data["conid"]), contact=data["contact"])


@dataclass(frozen=True)
class Stash:
    """What the onreply route needs of the REGISTER the edge relayed."""

    flow: Flow
    conid: int
    contacts: list[str]
    expires: int | None
    has_pns: bool
    """A proxy before the edge already added ``Feature-Caps: *;+sip.pns``."""


# ----- the current message's flow -----
def request_flow() -> Flow:
    """The flow the current request came over."""
    return Flow(
        proto=str(KSR.pv.get("$pr") or "udp").lower(),
        local_ip=str(KSR.pv.get("$Ri")),
        local_port=int(KSR.pv.get("$Rp") or 0),
        remote_ip=str(KSR.pv.get("$si")),
        remote_port=int(KSR.pv.get("$sp") or 0),
    )


def route_token_flow(hmac_key: bytes) -> Flow | None:
    """The flow named by the flow token of the current request's top Route, if that Route
    is this edge's and its token verifies; None otherwise (absent, forged, tampered)."""
    route = str(KSR.pv.get("$route_uri") or "")
    if not route or KSR.is_myself(route) < 1:
        return None
    user = str(KSR.pv.get("$(route_uri{uri.user})") or "")
    try:
        return flow_token.decode(user, hmac_key)
    except flow_token.FlowTokenError:
        return None


def flow_key(flow: Flow) -> str:
    return f"{flow.socket}>{flow.uri}"


def conid_alive(conid: int) -> bool:
    return conid > 0 and KSR.tcpops.tcp_conid_alive(conid) > 0


# ----- the REGISTER and its reply -----
def stash_register(contacts: list[str], expires: int | None, has_pns: bool) -> None:
    data = {
        "flow": asdict(request_flow()),
        "conid": int(KSR.pv.get("$conid") or -1),
        "contacts": contacts,
        "expires": expires,
        "has_pns": has_pns,
    }
    KSR.pv.sets(STASH, json.dumps(data, separators=(",", ":")))


def stashed() -> Stash | None:
    raw = KSR.pv.get(STASH)
    if not raw:
        return None
    data = json.loads(str(raw))
    return Stash(
        flow=Flow(**data["flow"]),
        conid=int(data["conid"]),
        contacts=list(data["contacts"]),
        expires=data["expires"],
        has_pns=bool(data["has_pns"]),
    )


@dataclass(frozen=True)
class Saved:
    aor: str
    """usrloc's key of the AoR."""
    kept: list[Binding]
    """The AoR's bindings in the edge's copy."""
    new_flow: list[Binding]
    """Those this REGISTER brought over a flow the edge did not have for the device."""


def save_granted(
    aor_uri: str, stash: Stash, reply_contacts: list[str], fetch: Fetch
) -> Saved | None:
    """``save()`` the upstream's 2xx into the edge's usrloc, keeping only the bindings
    registered through this edge; remember the flow of the ones of this REGISTER.

    Serialised per AoR (htable ``pushgate_edgelock``): the copy's bookkeeping must not
    see another reply's ``save()`` half done. None: ``save()`` failed.
    """
    granted = {sipmsg.contact_uri(c) for c in reply_contacts if c.strip() != "*"}
    registered = {sipmsg.contact_uri(c) for c in stash.contacts if c.strip() != "*"}
    KSR.htable.sht_lock(LOCKS, aor_uri)
    try:
        _, before = fetch(aor_uri)
        if KSR.registrar.save(TABLE, SAVE_FLAGS) < 0:
            return None
        key, after = fetch(aor_uri)
        drop = set(
            plan.stale(
                (plan.Kept(b.ruid, b.uri) for b in after),
                granted=granted,
                registered=registered,
                kept_before={b.uri for b in before},
            )
        )
        for b in after:
            if b.ruid in drop:
                KSR.registrar.unregister_ruid(TABLE, aor_uri, b.ruid)
        kept = [b for b in after if b.ruid not in drop]
        new_flow: list[Binding] = []
        for b in kept:
            if plan.contact_key(b.uri) in {plan.contact_key(u) for u in registered}:
                expires = plan.granted_expires(reply_contacts, b.uri, expires_header()) or 3600
                record = FlowRecord(flow=stash.flow, conid=stash.conid, contact=b.uri)
                before_record = current(key, plan.device_of(b))
                if before_record is None or before_record.flow != stash.flow:
                    new_flow.append(b)
                remember(key, plan.device_of(b), record, expires + MARGIN)
        return Saved(key, kept, new_flow)
    finally:
        KSR.htable.sht_unlock(LOCKS, aor_uri)


# ----- the flow index -----
def remember(aor: str, device: str, record: FlowRecord, ttl: int) -> None:
    KSR.htable.sht_setxs(FLOWS, f"d:{aor}|{device}", record.to_json(), ttl)
    KSR.htable.sht_setxs(FLOWS, "f:" + flow_key(record.flow), f"{aor}|{device}", ttl)
    # Registered here again: no longer behind another edge.
    KSR.htable.sht_rm(FLOWS, f"m:{aor}|{device}")


def current(aor: str, device: str) -> FlowRecord | None:
    raw = KSR.htable.sht_get(FLOWS, f"d:{aor}|{device}")
    return FlowRecord.from_json(str(raw)) if raw else None


def device_of_flow(flow: Flow) -> tuple[str, str] | None:
    """(usrloc AoR key, device) that registered over ``flow``."""
    raw = KSR.htable.sht_get(FLOWS, "f:" + flow_key(flow))
    if not raw:
        return None
    aor, _, device = str(raw).partition("|")
    return aor, device


def with_flow(aor: str, binding: Binding) -> Binding:
    """A binding of the edge's copy with its phone's flow: live or asleep, and where to."""
    record = current(aor, plan.device_of(binding))
    if record is None or record.contact != binding.uri:
        # Not registered over a flow this edge knows (since its start): asleep, unless
        # it is a UDP phone (no connection to lose: tried, as the all-in-one does).
        transport = transport_of("", "", binding.uri)
        return replace(
            binding,
            transport=transport,
            alive=flow_alive(transport, -1, False),
            target=binding.uri,
        )
    proto = record.flow.proto
    return replace(
        binding,
        transport=proto,
        alive=flow_alive(proto, record.conid, conid_alive(record.conid)),
        target=record.flow.uri,
    )


# ----- Path, Record-Route, sending over a flow -----
def add_path(flow: Flow, hmac_key: bytes) -> None:
    """RFC 3327 Path with ``flow``'s token (RFC 5626 §5.2): the upstream sends requests for
    the binding back here with it in their Route."""
    if KSR.path.add_path_user_params(flow_token.encode(flow, hmac_key), "ob") < 0:
        raise RuntimeError("add_path failed")


def record_route(flow: Flow, hmac_key: bytes) -> None:
    """Record-Route an INVITE / SUBSCRIBE with ``flow``'s token (rr's ``custom_user_avp``):
    requests of its dialog from the upstream then go over ``flow``."""
    if KSR.is_method_in("IS"):
        KSR.pv.sets(RR_USER, flow_token.encode(flow, hmac_key))
        KSR.rr.record_route()


def send_over(flow: Flow, ruri: str = "") -> None:
    """Send the current request over ``flow``, never over a new connection; ``ruri``: the
    device's current Contact."""
    aim_at(flow, ruri)
    KSR.set_forward_no_connect()


def aim_at(flow: Flow, ruri: str = "") -> None:
    """``$du``/``$fs`` of ``flow``. (The no-new-connection flag cannot be unset: it is set
    only once the request surely goes to a phone, not to another edge.)"""
    if ruri:
        KSR.pv.sets("$ru", ruri)
    KSR.pv.sets("$du", flow.uri)
    KSR.pv.sets("$fs", flow.socket)


# ----- several edges: a device behind another edge -----
def announce(handoff: plan.Handoff) -> None:
    """Tell the other edges (dmq) that ``handoff``'s device is reached through this edge."""
    if KSR.dmq.bcast_message(plan.HANDOFF_PEER, handoff.to_json(), "application/json") < 0:
        KSR.err(f"pushgate: dmq bcast of a handoff failed: {handoff.aor}\n")


def remember_moved(handoff: plan.Handoff) -> None:
    KSR.htable.sht_setxs(FLOWS, f"m:{handoff.aor}|{handoff.device}", handoff.to_json(), HANDOFF_TTL)


def moved(aor: str, device: str) -> plan.Handoff | None:
    """The edge the device registered on after its last registration here, if any."""
    raw = KSR.htable.sht_get(FLOWS, f"m:{aor}|{device}")
    return plan.Handoff.from_json(str(raw)) if raw else None


def hand_over(tx_key: str, handoff: plan.Handoff) -> None:
    """The held call ``tx_key`` goes to ``handoff``'s edge when it resumes next."""
    KSR.htable.sht_setxs(FLOWS, f"h:{tx_key}", handoff.to_json(), 60)


def handed_over(tx_key: str) -> plan.Handoff | None:
    raw = KSR.htable.sht_get(FLOWS, f"h:{tx_key}")
    if not raw:
        return None
    KSR.htable.sht_rm(FLOWS, f"h:{tx_key}")
    return plan.Handoff.from_json(str(raw))


def send_through(handoff: plan.Handoff) -> None:
    """Send the current request to the device through the edge that has its flow: that
    edge's Route (its flow token) on top; that edge record-routes, this one stays out of
    the dialog."""
    KSR.pv.sets("$ru", handoff.contact)
    KSR.pv.sets("$du", handoff.next_hop)
    KSR.hdr.insert(f"Route: <{handoff.route}>\r\n")


def expires_header() -> int | None:
    raw = str(KSR.pv.get("$hdr(Expires)") or "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() else None


def asked_expires(stash: Stash, uri: str) -> int | None:
    for contact in stash.contacts:
        if plan.contact_key(sipmsg.contact_uri(contact)) == plan.contact_key(uri):
            return registration.contact_expires(contact, stash.expires)
    return None
