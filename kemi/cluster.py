"""Several Kamailio nodes (WITH_CLUSTER, or pushgate.cfg's WITH_PUSHGATE_CLUSTER; docs/cluster.md):
the Kamailio-facing parts.

dmq_usrloc replicates every binding to every node; only the node that received the
phone's REGISTER owns its flow (socket, connection id). So:

- each node puts its own Path in front of a REGISTER it saves (``add_path``);
- a node with a call for a binding another node owns relays it there (its Path);
  the owner sends it over the flow (``relay_to_flow``), or answers 430 Flow Failed
  when the flow is gone, and the calling node then holds the call and pushes;
- a node holding a call learns that the device re-registered on another node from
  dmq_usrloc's own message (``usrloc_update``) and resumes the call through that node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import KSR

from kemi.settings import define, log
from pushgate import cluster
from pushgate.cluster import Node, Replicated

HELD_AOR_AVP = "$avp(pushgate_call_aor)"
"""The AoR a call relayed through other nodes is for (read back in its failure route)."""
PUSHED_AVP = "$avp(pushgate_call_pushed)"
"""Set on a call this node held and pushed for after a relay through other nodes failed."""
PEER_FR_MS = 3000
"""A node answers a relayed INVITE with 100 Trying at once; no reply within this means
the node is down: the call is then held here and the device pushed."""


@dataclass(frozen=True)
class Cluster:
    node: Node
    nodes: frozenset[str]

    @classmethod
    def from_cfg(cls) -> Cluster | None:
        if KSR.pv.get("$def(PUSHGATE_CLUSTER)") is None:
            return None
        nodes = cluster.nodes_of(define("CLUSTER_NODES", ""))
        if not nodes:
            raise ValueError(
                "pushgate: several nodes (WITH_CLUSTER, WITH_PUSHGATE_CLUSTER) need "
                "CLUSTER_NODES (the nodes' IPs)"
            )
        return cls(node=Node.from_uri(define("CLUSTER_SELF", "")), nodes=nodes)

    def from_node(self) -> bool:
        return str(KSR.pv.get("$si")) in self.nodes

    # ----- REGISTER -----
    def add_path(self) -> None:
        """Before ``save()``: this node's Path with the phone's flow (``received``)."""
        source = f"{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}"
        header = self.node.path_header(source, str(KSR.pv.get("$pr") or "udp"))
        # On top of any Path a proxy in front added (RFC 3327: nearest the registrar first).
        KSR.hdr.insert(f"Path: {header}\r\n")
        # save() reads the parsed message: apply the new header to it.
        KSR.textopsx.msg_apply_changes()

    def to_node(self) -> bool:
        """In a branch route: this branch goes to another node (the phone's flow is there)."""
        dst = f"{KSR.pv.get('$dd') or ''}:{KSR.pv.get('$dp') or ''}"
        return str(KSR.pv.get("$dd") or "") in self.nodes and dst != self.node.hostport

    # ----- KDMQ -----
    def usrloc_update(self, holds: Callable[[str], bool]) -> list[Replicated]:
        """A dmq_usrloc message from another node: applied to usrloc now (not queued to a
        dmq worker, so a call resumed next finds the new binding). Returns the contacts
        it (re-)registered just now over a new flow, for AoRs ``holds`` says have calls
        held here; the others only if registered just now."""
        fresh = cluster.updates(str(KSR.pv.get("$rb") or ""), time.time())
        before = {u.aor: flows_of(f"sip:{u.aor}") for u in fresh if holds(u.aor)}
        KSR.dmq.process_message_rc(1)
        # A full sync replays contacts as updates: only a flow this node did not know is
        # a device that woke.
        return [u for u in fresh if u.aor not in before or before[u.aor].get(u.ruid) != u.flow]

    # ----- a request another node relays to a flow of ours -----
    def relay_to_flow(self, on_reply: str) -> None:
        """After ``loose_route`` consumed our Path (``$du`` is the phone's flow): send it
        over that flow if it is still open, never opening a new connection; else 430."""
        if KSR.is_INVITE():
            KSR.rr.record_route()
        KSR.set_forward_no_connect()
        KSR.tm.t_set_disable_internal_reply(1)
        if on_reply:
            KSR.tm.t_on_reply(on_reply)
        if KSR.tm.t_relay() < 0:
            log("flow_failed", callid=KSR.pv.get("$ci"), dst=KSR.pv.get("$du"))
            KSR.tm.t_reply(cluster.FLOW_FAILED, "Flow Failed")

    # ----- the failure route of a call relayed through other nodes -----
    @staticmethod
    def through_peers() -> None:
        KSR.tm.t_set_fr(0, PEER_FR_MS)

    @staticmethod
    def flow_failed() -> bool:
        """The owner node said the flow is gone (430), or never answered (down)."""
        if KSR.tm.t_check_status(str(cluster.FLOW_FAILED)) > 0:
            return True
        return bool(KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0)


def alias_reply() -> None:
    """Reply route of a call relayed to a phone's flow here (KEMI hosts; pushgate.cfg's
    PUSHGATE_PEER_REPLY for a native cfg): the phone's Contact gets its flow as alias, so
    in-dialog requests follow that flow (handle_ruri_alias). Without it, the node holding
    the call would alias the Contact to this node, the reply's source, and the phone's BYE
    would loop back to this node (404)."""
    if not hasattr(KSR, "nathelper"):
        return
    status = int(KSR.pv.get("$rs") or 0)
    if 100 < status < 300 and KSR.pv.get("$pr") in ("tcp", "tls", "ws", "wss"):
        KSR.nathelper.add_contact_alias()


def flows_of(aor: str) -> dict[str, str]:
    """ruid -> Path (else received) of the bindings of ``aor`` (a SIP URI) in this node's
    usrloc."""
    if KSR.registrar.reg_fetch_contacts("location", aor, "pgc") < 0:
        return {}
    try:
        count = int(KSR.pv.get("$(ulc(pgc=>count))") or 0)
        out = {}
        for i in range(count):
            ruid = str(KSR.pv.get(f"$(ulc(pgc=>ruid)[{i}])") or "")
            path = KSR.pv.get(f"$(ulc(pgc=>path)[{i}])")
            received = KSR.pv.get(f"$(ulc(pgc=>received)[{i}])")
            out[ruid] = str(path or received or "")
        return out
    finally:
        KSR.registrar.reg_free_contacts("pgc")
