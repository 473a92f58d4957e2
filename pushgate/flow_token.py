"""RFC 5626 flow tokens (§5.2), in the format of Kamailio's outbound module (pure).

In edge mode (docs/edge.md) every REGISTER the edge relays to the upstream registrar
carries a Path whose user part is a flow token naming the phone's flow; requests the
upstream sends back for that binding have it in their Route, and the edge sends them
over that flow only if the token verifies. The edge's Record-Route carries the token
of the flow a dialog's requests must take (for a call held while its phone slept: the
phone's *new* flow).

Pushgate makes and checks the tokens itself: Kamailio 5.6's outbound module keys its
HMAC with SHA1 of "" whatever ``flow_token_secret`` says (the parameter is declared
``PARAM_STRING`` into a ``str``, whose length stays 0; fixed in Kamailio 6.1, commit
046ba41e), so its tokens can be forged by anyone; without the secret its key is random
per start and every Path stored upstream dies with a restart.

Format (``src/modules/outbound/outbound_mod.c``): the base64 (standard alphabet, ``=``
padding) of

    HMAC-SHA1-80 | proto | local IP | local port | remote IP | remote port
         10      |   1   |  4 / 16  |     2      |  4 / 16   |      2

``proto`` is Kamailio's ``sip_protos`` number, with bit 7 set for IPv6; ports are big
endian; the HMAC (its last 10 bytes) covers everything after it, keyed with
SHA1(secret), as outbound's ``flow_token_secret`` does once it works.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

HMAC_LEN = 10
# Kamailio's enum sip_protos (src/core/ip_addr.h).
PROTOS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}
_PROTO_NAMES = {v: k for k, v in PROTOS.items()}


class FlowTokenError(ValueError):
    """Not a flow token of ours (bad encoding, length, protocol or HMAC)."""


@dataclass(frozen=True)
class Flow:
    """One connection between a phone and the edge: what a flow token names."""

    proto: str
    """Transport, lower case: ``tcp``, ``tls``, ``udp``, ``ws``, ``wss``."""
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int

    def __post_init__(self) -> None:
        if self.proto not in PROTOS:
            raise FlowTokenError(f"unknown transport {self.proto!r}")
        local, remote = ipaddress.ip_address(self.local_ip), ipaddress.ip_address(self.remote_ip)
        if local.version != remote.version:
            raise FlowTokenError("local and remote address families differ")
        for port in (self.local_port, self.remote_port):
            if not 0 < port < 65536:
                raise FlowTokenError(f"bad port {port}")

    @property
    def uri(self) -> str:
        """Where a request over this flow goes (``$du``), as ``loose_route`` writes it."""
        return f"sip:{_host(self.remote_ip)}:{self.remote_port};transport={self.proto}"

    @property
    def socket(self) -> str:
        """The edge's socket of this flow (``$fs``): ``tcp:127.0.0.1:5060``."""
        return f"{self.proto}:{_host(self.local_ip)}:{self.local_port}"


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def key(secret: str) -> bytes:
    """outbound's HMAC key for ``modparam("outbound", "flow_token_secret", secret)``."""
    if not secret:
        raise FlowTokenError("no flow token secret")
    return hashlib.sha1(secret.encode()).digest()


def _body(flow: Flow) -> bytes:
    local, remote = ipaddress.ip_address(flow.local_ip), ipaddress.ip_address(flow.remote_ip)
    proto = PROTOS[flow.proto] | (0x80 if local.version == 6 else 0)
    return (
        bytes([proto])
        + local.packed
        + flow.local_port.to_bytes(2, "big")
        + remote.packed
        + flow.remote_port.to_bytes(2, "big")
    )


def _mac(hmac_key: bytes, body: bytes) -> bytes:
    return hmac.new(hmac_key, body, hashlib.sha1).digest()[-HMAC_LEN:]


def encode(flow: Flow, hmac_key: bytes) -> str:
    body = _body(flow)
    return base64.b64encode(_mac(hmac_key, body) + body).decode("ascii")


def decode(token: str, hmac_key: bytes) -> Flow:
    """The flow a token names; :class:`FlowTokenError` unless it verifies."""
    try:
        raw = base64.b64decode(token.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise FlowTokenError("not base64") from None
    if len(raw) not in (HMAC_LEN + 13, HMAC_LEN + 37):
        raise FlowTokenError(f"bad length {len(raw)}")
    mac, body = raw[:HMAC_LEN], raw[HMAC_LEN:]
    if not hmac.compare_digest(mac, _mac(hmac_key, body)):
        raise FlowTokenError("HMAC does not verify")
    v6 = bool(body[0] & 0x80)
    proto = _PROTO_NAMES.get(body[0] & 0x7F)
    size = 16 if v6 else 4
    if proto is None or len(body) != 1 + 2 * (size + 2):
        raise FlowTokenError("bad protocol or address family")
    local = body[1 : 1 + size]
    remote = body[3 + size : 3 + 2 * size]
    return Flow(
        proto=proto,
        local_ip=str(ipaddress.ip_address(local)),
        local_port=int.from_bytes(body[1 + size : 3 + size], "big"),
        remote_ip=str(ipaddress.ip_address(remote)),
        remote_port=int.from_bytes(body[3 + 2 * size :], "big"),
    )


def parse_socket(socket: str) -> tuple[str, str, int]:
    """``tcp:127.0.0.1:5060`` / ``tls:[::1]:5061`` -> (proto, ip, port)."""
    proto, _, rest = socket.partition(":")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not proto or not host or not port.isdigit():
        raise FlowTokenError(f"bad socket {socket!r}")
    return proto.lower(), host, int(port)
