"""Flow tokens in the format of Kamailio's outbound module (pushgate/flow_token.py)."""

from __future__ import annotations

import hashlib

import pytest

from pushgate import flow_token
from pushgate.flow_token import Flow, FlowTokenError

# Made by Kamailio 5.6.3's outbound module (add_path() of a REGISTER over TCP from
# 127.0.0.1:44177 to 127.0.0.1:52655) with flow_token_secret set: 5.6 keys its HMAC with
# SHA1 of "" whatever the secret (the parameter lands in a str's pointer, its length
# stays 0; fixed in Kamailio 6.1). The same bytes, then, as a known key reproduces them.
KAMAILIO_TOKEN = "8FzN4n8tVr18zwJ/AAABza9/AAABrJE="
KAMAILIO_FLOW = Flow("tcp", "127.0.0.1", 52655, "127.0.0.1", 44177)
KEY = flow_token.key("a long random secret")


def test_a_token_of_kamailios_outbound_module_is_read_and_made_byte_for_byte() -> None:
    empty_key = hashlib.sha1(b"").digest()
    assert flow_token.decode(KAMAILIO_TOKEN, empty_key) == KAMAILIO_FLOW
    assert flow_token.encode(KAMAILIO_FLOW, empty_key) == KAMAILIO_TOKEN


@pytest.mark.parametrize(
    "flow",
    [
        Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 40123),
        Flow("tls", "2001:db8::1", 5061, "2001:db8::beef", 65535),
        Flow("wss", "10.0.0.1", 443, "10.0.0.2", 1),
    ],
)
def test_tokens_round_trip(flow: Flow) -> None:
    token = flow_token.encode(flow, KEY)
    assert flow_token.decode(token, KEY) == flow
    # Fits a SIP URI user part: base64's alphabet and padding only.
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def test_a_tampered_or_foreign_token_is_refused() -> None:
    token = flow_token.encode(KAMAILIO_FLOW, KEY)
    flipped = token[:12] + ("A" if token[12] != "A" else "B") + token[13:]
    for bad in (
        flipped,
        flow_token.encode(KAMAILIO_FLOW, flow_token.key("another secret")),
        KAMAILIO_TOKEN,  # Kamailio 5.6's, keyed with SHA1("")
        "bm90LWEtdG9rZW4=",
        "not base64!",
        "",
        token[:-4],
    ):
        with pytest.raises(FlowTokenError):
            flow_token.decode(bad, KEY)


def test_destination_and_socket_read_as_kamailio_writes_them() -> None:
    flow = Flow("tls", "2001:db8::1", 5061, "2001:db8::2", 40000)
    assert flow.uri == "sip:[2001:db8::2]:40000;transport=tls"
    assert flow.socket == "tls:[2001:db8::1]:5061"
    assert flow_token.parse_socket(flow.socket) == ("tls", "2001:db8::1", 5061)
    assert flow_token.parse_socket("tcp:127.0.0.1:5060") == ("tcp", "127.0.0.1", 5060)


def test_impossible_flows_are_refused() -> None:
    with pytest.raises(FlowTokenError):
        Flow("sctp-ish", "127.0.0.1", 1, "127.0.0.1", 2)
    with pytest.raises(FlowTokenError):
        Flow("tcp", "127.0.0.1", 1, "::1", 2)
    with pytest.raises(FlowTokenError):
        Flow("tcp", "127.0.0.1", 0, "127.0.0.1", 2)
    with pytest.raises(FlowTokenError):
        flow_token.key("")
