"""Several Kamailio nodes sharing registrations (dmq + dmq_usrloc): the pure parts.

Each node puts its own Path (RFC 3327) in front of a REGISTER it saves, so the binding,
replicated to the other nodes by dmq_usrloc, says which node owns the phone's flow: a
node that is not the owner relays a request through the owner (``loose_route`` there),
the only node that can tell whether the flow is still open. See docs/cluster.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

FLOW_FAILED = 430
"""RFC 5626 §5.3: the owner node answers this when the phone's flow is gone."""

# dmq_usrloc's actions (its usrloc_dmq_action_t): 1 = a contact added or updated.
DMQ_UPDATE = 1

FRESH_SECONDS = 10
"""A replicated contact modified this recently is a REGISTER that just happened; older
ones are a full sync replayed to a node that (re)joined, not a wake-up."""


class ClusterError(ValueError):
    pass


@dataclass(frozen=True)
class Node:
    """This node as the others see it: ``host:port`` of its SIP socket (dmq server_address)."""

    hostport: str

    @classmethod
    def from_uri(cls, uri: str) -> Node:
        hostport = hostport_of(uri)
        if not hostport:
            raise ClusterError(f"not a SIP URI with a host: {uri!r}")
        return cls(hostport)

    def path_header(self, source: str, transport: str) -> str:
        """The Path header value this node adds to a REGISTER it receives from ``source``
        (``ip:port``): the path module's own form, its ``received`` parameter is the flow
        (``loose_route`` on this node sends the request there)."""
        received = f"sip:{source};transport={transport.lower()}"
        # Nodes relay calls to each other over TCP: one connection, read in order (over
        # UDP two workers could pass a 200 on before its 180).
        return f"<sip:{self.hostport};transport=tcp;lr;received={escape_param(received)}>"

    def owns(self, path: str) -> bool:
        """Whether a binding with this Path (usrloc's ``path``, "" if none) is this node's:
        its first hop is this node, or it has none (registered without a cluster)."""
        first = first_hop(path)
        return not first or first == self.hostport


def hostport_of(uri: str) -> str:
    """``host:port`` of a SIP URI (port 5060 when absent); "" when it is not one."""
    uri = uri.strip().strip("<>")
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme.lower() not in ("sip", "sips"):
        return ""
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if not rest:
        return ""
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
        host = f"[{host}]"
    else:
        host, _, port = rest.partition(":")
    return f"{host.lower()}:{port or '5060'}" if host else ""


def first_hop(path: str) -> str:
    """``host:port`` of the first URI of a Path value (usrloc keeps it as the header had it)."""
    path = path.strip()
    if not path:
        return ""
    if path.startswith("<"):
        return hostport_of(path[1 : path.find(">")] if ">" in path else path[1:])
    return hostport_of(path.split(",", 1)[0])


def escape_param(value: str) -> str:
    """A URI parameter value with the characters that would end it escaped (RFC 3261
    ``pvalue``), as the path module escapes its ``received``."""
    out = []
    for ch in value:
        if ch.isalnum() or ch in "-_.!~*'()[]/:&+$":
            out.append(ch)
        else:
            out.append(f"%{ord(ch):02X}")
    return "".join(out)


def nodes_of(setting: str) -> frozenset[str]:
    """CLUSTER_NODES: the IP addresses of every node, comma-separated."""
    return frozenset(ip.strip() for ip in setting.split(",") if ip.strip())


@dataclass(frozen=True)
class Replicated:
    """One contact a dmq_usrloc message added or updated."""

    aor: str
    ruid: str
    flow: str
    """Its Path (with the owner node's ``received``), else its ``received``: a new
    connection of the phone gives a new value."""


def updates(body: str, now: float) -> list[Replicated]:
    """The contacts a dmq_usrloc message (re-)registered just now.

    One contact per message (``batch_msg_contacts`` 1, the default) or several under
    ``multi``. Deletions, and contacts not modified within ``FRESH_SECONDS`` (a full sync
    replaying old ones), are left out. A body that is not dmq_usrloc's JSON gives nothing.
    A full sync can still replay a contact registered seconds ago: the caller compares
    ``flow`` with the binding it had.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return []
    items = data.get("multi", [data]) if isinstance(data, dict) else []
    out: list[Replicated] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or item.get("action") != DMQ_UPDATE:
            continue
        aor, ruid, modified = item.get("aor"), item.get("ruid"), item.get("last_modified")
        if not isinstance(aor, str) or not aor or not isinstance(modified, int | float):
            continue
        if now - modified > FRESH_SECONDS:
            continue
        flow = item.get("path") or item.get("received") or ""
        out.append(
            Replicated(
                aor, ruid if isinstance(ruid, str) else "", flow if isinstance(flow, str) else ""
            )
        )
    return out
