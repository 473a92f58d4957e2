"""What Pushgate needs of the Kamailio it runs in, decided from what Kamailio says.

Kamailio answers over its RPC interface (``core.tcp_info``, ``core.sockets_list``,
``ul.db_users``); the KEMI side runs them at start-up and hands the answers here. Every
problem is one sentence that names what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

CONNECTION_PROTOS = frozenset({"tcp", "tls", "ws", "wss"})


@dataclass(frozen=True, kw_only=True)
class KamailioFacts:
    missing_modules: tuple[str, ...] = ()
    tcp_error: str = ""
    """The error of ``core.tcp_info`` ("tcp support disabled"), "" when TCP is on."""
    protos: frozenset[str] = frozenset()
    """Transports Kamailio listens on (``core.sockets_list``)."""
    usrloc_db_error: str = ""
    """The error of ``ul.db_users location`` ("... db_mode=0" when usrloc has no DB)."""
    memory_only_ok: bool = False
    """PUSHGATE_USRLOC_MEMORY is defined: the operator accepts bindings lost on restart."""
    edge_secret_missing: bool = False
    """Edge mode without a PUSHGATE_EDGE_FLOW_SECRET (or with the placeholder)."""
    edge_missing_modules: tuple[str, ...] = ()
    """Edge mode: modules its hooks call (rr, path) that are not loaded."""
    edge_outbound_loaded: bool = False
    """Edge mode with Kamailio's outbound module loaded (its loose_route hook refuses
    Pushgate's flow tokens)."""


def problems(facts: KamailioFacts) -> list[str]:
    out = []
    if facts.missing_modules:
        out.append(
            "module(s) not loaded: "
            + ", ".join(facts.missing_modules)
            + ": import pushgate.cfg after your modules section (it loads what is missing)"
        )
    if facts.tcp_error:
        out.append(
            f"TCP is off ({facts.tcp_error}): phones keep RFC 5626 flows over TCP/TLS; "
            "remove disable_tcp=yes"
        )
    elif facts.protos and not facts.protos & CONNECTION_PROTOS:
        out.append(
            "no TCP/TLS/WS listener: phones keep their flows over TCP or TLS; add e.g. "
            "listen=tcp:<ip>:5060"
        )
    if "db_mode=0" in facts.usrloc_db_error and not facts.memory_only_ok:
        out.append(
            "usrloc keeps bindings in memory only (db_mode=0): a restart forgets every "
            "sleeping phone, and a sleeping phone cannot re-register without a push; set "
            'modparam("usrloc", "db_mode", 1 or 2) (WITH_USRLOCDB in Kamailio\'s default '
            "cfg), or #!define PUSHGATE_USRLOC_MEMORY to accept it"
        )
    if facts.edge_missing_modules:
        out.append(
            "edge mode needs module(s) "
            + ", ".join(facts.edge_missing_modules)
            + ": loadmodule them (edge.cfg does)"
        )
    if facts.edge_outbound_loaded:
        out.append(
            "edge mode with the outbound module loaded: remove its loadmodule (Kamailio "
            "5.6's outbound keys flow tokens with SHA1 of an empty string and its "
            "loose_route hook refuses Pushgate's own; docs/edge.md)"
        )
    if facts.edge_secret_missing:
        out.append(
            "edge mode without a flow token secret: #!define PUSHGATE_EDGE_FLOW_SECRET as a "
            "long random string (outbound's flow_token_secret; tokens must survive a "
            "restart and Pushgate makes them too)"
        )
    return out
