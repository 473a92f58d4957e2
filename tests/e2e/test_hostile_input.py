"""Hostile REGISTERs on the real stack: malformed, oversized, duplicated and injection-laden
pn params, one SIPp scenario each (tests/scenarios/register_*).

Kamailio's own parser (5.6 and 6.0) takes every one of them (none is answered before the
digest challenge): each is refused by Pushgate after authentication, 400 with a Warning naming
the param. Nothing is stored, and a call to the user pushes nothing.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable

import pytest

from pushgate import wire
from testkit.stack import DOMAIN, FOREIGN_DOMAIN, Stack, push_data
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]

HEX_10K = "0123456789abcdef" * 640


@pytest.mark.parametrize(
    ("scenario", "provider", "keys", "warning"),
    [
        pytest.param(
            "register_pn_oversized", "apns", {"prid": HEX_10K},
            "pn-prid: APNs device token must be 16-200 hex digits, not 10240", id="apns-10kB",
        ),
        # Valid for FCM (4096 characters at most) but over registrar's 512-byte Contact:
        # save() answered a bare "400 Bad Request" (P-Registrar-Error: Contact/received too
        # long) carrying our Feature-Caps, before the fix.
        pytest.param(
            "register_pn_oversized", "fcm", {"prid": "A" * 450},
            "pn-prid: too long, the Contact URI must stay under 512 bytes", id="fcm-450B",
        ),
        pytest.param(
            "register_pn_oversized", "fcm", {"prid": "A" * 10_000},
            "pn-prid: FCM registration token must be 8-4096 characters, not 10000", id="fcm-10kB",
        ),
        pytest.param(
            "register_pn_crlf", "apns", {}, "pn-prid: APNs device token must be hexadecimal",
            id="crlf",
        ),
        pytest.param(
            "register_pn_quote", "apns", {},
            "pn-param: invalid bundle ID 'com.example.app.voip';expires=0'", id="quote",
        ),
        # Before the fix the last one won (apns): 200, stored, pushed to APNs.
        pytest.param(
            "register_pn_duplicate", "apns", {}, "pn-provider: given twice", id="duplicate",
        ),
        # Before the fix both were stored: two bindings of one device, both tokens pushed.
        pytest.param(
            "register_two_contacts_conflict", "apns", {},
            "pn-prid: differs between two Contacts of one +sip.instance", id="two-contacts",
        ),
        # Before the fix: 200 OK with 'Feature-Caps: *;+sip.pns="apns<CR><LF>"' (the '"'
        # alone on the next line: a broken header), the binding stored and pushed.
        pytest.param(
            "register_feature_caps_injection", "apns", {},
            "pn-provider: unsupported provider 'apns\\\\r\\\\n'", id="feature-caps",
        ),
        pytest.param(
            "register_pn_non_ascii", "apns", {}, "pn-prid: APNs device token must be hexadecimal",
            id="non-ascii",
        ),
    ],
)  # fmt: skip
@on_kamailio("5.6", "6.0")
def test_hostile_push_params_are_refused_naming_the_param_and_nothing_is_pushed(
    make_stack: MakeStack, scenario: str, provider: str, keys: dict[str, str], warning: str
) -> None:
    stack = make_stack(hold_timeout=3)
    phone = stack.phone("alice", provider=provider)
    run = stack.register_scenario(scenario, phone, **keys)
    assert run.wait(15) == 0, run.output()[-2000:]
    statuses = [m.splitlines()[0] for m in run.received() if m.startswith("SIP/2.0")]
    # Kamailio's parser let it through to the digest challenge; Pushgate refused it after.
    assert statuses == ["SIP/2.0 401 Unauthorized", "SIP/2.0 400 Bad Push Parameters"]
    refusal = run.received()[-1]
    assert f'Warning: 399 pushgate "{warning}"' in refusal.splitlines(), refusal
    assert "Feature-Caps" not in refusal
    assert stack.bindings("alice") == []
    assert stack.events("register_rejected")
    # Nothing to push: the call finds no binding (480: a subscriber not registered).
    caller = stack.call("alice", expect_answer=False)
    assert caller.wait(10) == 0, caller.output()[-2000:]
    assert caller.final_response()[0] == 480
    assert stack.apns is not None and stack.apns.pushes == []
    assert stack.fcm is not None and stack.fcm.messages == []
    assert "routing error" not in stack.kamailio.log.read_text(errors="replace")


def test_an_invite_with_a_50kB_display_name_is_pushed_and_cuts_nobody_off(
    make_stack: MakeStack,
) -> None:
    # An anonymous caller's display name goes into the push (caller_name): 25,000 "é" was
    # 150 kB of JSON, over pushd's 64 KiB frame. pushd dropped the connection, Kamailio
    # resent the push to the next one, and so on (600 reconnects in 5 s): every call to
    # every sleeping phone got 480 "Push service unavailable" while it lasted.
    stack = make_stack(hold_timeout=3)
    alice, bob = stack.phone("alice"), stack.phone("bob")
    stack.register_and_sleep(alice)
    stack.register_and_sleep(bob)
    call_id = uuid.uuid4().hex
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        invite = (
            f"INVITE sip:alice@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id[:12]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f'From: "{"é" * 25_000}" <sip:mallory@{FOREIGN_DOMAIN}>;tag=1\r\n'
            f"To: <sip:alice@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:mallory@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        assert len(invite) > 50_000
        udp.sendto(invite, ("127.0.0.1", stack.kamailio.sip_port))
        assert stack.apns is not None
        (push,) = stack.apns.wait_for_pushes(1, timeout=5)
    assert push.token == alice.token
    assert push_data(push)["caller_name"] == '"' + "é" * (wire.MAX_TEXT - 1)
    # pushd stayed connected, and the next caller's push goes out as usual.
    caller = stack.call("bob", expect_answer=False)
    assert caller.wait(10) == 0, caller.output()[-2000:]
    assert "Push service unavailable" not in caller.final_response()[1]
    assert bob.token in [p.token for p in stack.apns.pushes]
    assert stack.count_events("pushd_disconnected") == 0
