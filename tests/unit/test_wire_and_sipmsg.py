"""Channel messages between Kamailio and pushd, and SIP header helpers."""

from __future__ import annotations

import json
import time

import pytest

from pushgate import sipmsg, wire


def test_push_message_round_trip() -> None:
    hid = wire.PushId(tx=wire.Tx(12, 345), n=1)
    text = wire.push_message(
        push_id=hid,
        kind="call",
        provider="apns",
        prid="ab",
        param="T.b.voip",
        aor="sip:a@d",
        ruid="r1",
        instance="<urn:uuid:1>",
        deadline=10.12345,
        data={"call_id": "c"},
    )
    msg = json.loads(text)
    assert msg["type"] == "push" and msg["id"] == "12:345:1" and msg["deadline"] == 10.123
    assert wire.PushId.parse(msg["id"]) == hid
    assert hid.tx is not None and hid.tx.key == "12:345"


def test_a_push_fits_pushds_frame_whatever_the_caller_sends() -> None:
    # Found by tests/unit/test_hostile_wire.py, then on the stack: 25,000 "é" as display
    # name made 150 kB of JSON; pushd refused the frame and reconnected, Kamailio resent it.
    text = wire.push_message(
        push_id=wire.PushId(tx=wire.Tx(1, 2)), kind="call", provider="apns", prid="ab",
        param="T.b.voip", aor="sip:a@d", ruid="r", instance="<urn:uuid:1>" + "x" * 9000,
        deadline=10.0, data={"caller_name": "\u00e9" * 25_000, "call_id": "c"},
    )  # fmt: skip
    msg = json.loads(text)
    assert len(text) < 4000
    assert msg["data"] == {"caller_name": "\u00e9" * wire.MAX_TEXT, "call_id": "c"}
    assert len(msg["instance"]) == wire.MAX_TEXT


def test_result_is_validated() -> None:
    r = wire.parse_result(
        {
            "type": "result",
            "id": "1:2:0",
            "verdict": "delete_token",
            "status": 410,
            "reason": "Unregistered",
            "aor": "sip:a@d",
            "ruid": "r",
        }
    )
    assert (r.verdict, r.status, r.id) == ("delete_token", 410, "1:2:0")
    with pytest.raises(wire.WireError, match="verdict"):
        wire.parse_result({"type": "result", "id": "1:2:0", "verdict": "retry"})
    with pytest.raises(wire.WireError, match="id"):
        wire.parse_result({"type": "result", "id": "x", "verdict": "delivered"})
    with pytest.raises(wire.WireError, match="ms"):
        wire.parse_result({"type": "result", "id": "1:2:0", "verdict": "give_up", "ms": None})
    with pytest.raises(wire.WireError, match="JSON"):
        wire.decode("{nope")


# Found by tests/unit/test_hostile_wire.py: a list as verdict raised TypeError, a 10**400
# ms OverflowError, "[[[..." RecursionError, a 5000-digit number ValueError (the evapi
# route only catches WireError: an unauthenticated client was not disconnected), and
# anything int() reads passed as an id, any type str() reads as aor/ruid.
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"verdict": ["delivered"]}, "verdict"),
        ({"ms": 10**400}, "ms"),
        ({"ms": float("nan")}, "ms"),
        ({"ms": -1}, "ms"),
        ({"id": " 1:2:0"}, "id"),
        ({"id": "+1:2:0"}, "id"),
        ({"id": "01:2:0"}, "id"),
        ({"id": "1_0:2:0"}, "id"),
        ({"id": "\u0661:2:0"}, "id"),
        ({"id": "1:2:0\n"}, "id"),
        ({"id": 7}, "id"),
        ({"aor": ["sip:a@d"]}, "aor"),
        ({"ruid": {"r": 1}}, "ruid"),
        ({"status": True}, "status"),
        ({"status": "200"}, "status"),
        ({"reason": ["x"]}, "reason"),
    ],
)
def test_hostile_result_fields_are_refused_by_name(fields: dict[str, object], field: str) -> None:
    msg = {"type": "result", "id": "1:2:0", "verdict": "delivered", **fields}
    with pytest.raises(wire.WireError) as err:
        wire.parse_result(msg)
    assert str(err.value).startswith(f"{field}: ")


@pytest.mark.parametrize("text", ["[" * 5000, '{"type":"result","n":' + "1" * 5000 + "}"])
def test_json_python_cannot_read_is_a_wire_error(text: str) -> None:
    with pytest.raises(wire.WireError, match=r"^not JSON"):
        wire.decode(text)


def test_results_pushd_writes_are_accepted() -> None:
    r = wire.parse_result(
        {"type": "result", "id": "0:0:17", "verdict": "give_up", "status": None,
         "reason": None, "aor": None, "ruid": None, "attempts": 0, "ms": 0}
    )  # fmt: skip
    assert (r.id, r.aor, r.ruid, r.status) == ("0:0:17", "", "", None)
    assert wire.PushId.parse(r.id) == wire.PushId(tx=None, n=17)  # version 1's "no held call"


def test_split_contacts_respects_quotes_and_brackets() -> None:
    value = '"Doe, J" <sip:a@h;x=1,2>;expires=5, <sip:b@h>, sip:c@h;q=0.5'
    parts = sipmsg.split_header_values(value)
    assert len(parts) == 3
    assert sipmsg.contact_uri(parts[0]) == "sip:a@h;x=1,2"
    assert sipmsg.contact_uri(parts[2]) == "sip:c@h"


def test_warning_header_is_quoted_safely() -> None:
    assert sipmsg.warning('pn-prid: bad "x"') == "Warning: 399 pushgate \"pn-prid: bad 'x'\""
    # One line whatever the text; a backslash (repr's escapes) as a quoted-pair.
    assert sipmsg.warning("a\r\nb: 'apns\\r'") == "Warning: 399 pushgate \"a??b: 'apns\\\\r'\""


def test_contact_without_angle_brackets_has_header_params_not_uri_params() -> None:
    # RFC 3261 §20.10: without <>, what follows the URI's first ';' belongs to the header.
    c = 'sip:alice@127.0.0.1:5070;transport=tcp;expires=0;+sip.instance="<urn:uuid:1>"'
    assert sipmsg.contact_uri(c) == "sip:alice@127.0.0.1:5070"
    assert sipmsg.contact_params(c) == {
        "transport": "tcp",
        "expires": "0",
        "+sip.instance": '"<urn:uuid:1>"',
    }


def test_contact_params_after_angle_brackets_only() -> None:
    c = '"A;b <c>" <sip:a@h;expires=9;ob>;Expires=0;+sip.pnsreg'
    assert sipmsg.contact_uri(c) == "sip:a@h;expires=9;ob"
    assert sipmsg.contact_params(c) == {"expires": "0", "+sip.pnsreg": ""}


def test_contact_params_of_a_huge_contact_take_linear_time() -> None:
    # Found by tests/unit/test_hostile_sip.py: the quote-aware split was a regex whose
    # lookahead rescanned the rest of the value at every ';' (quadratic: 4 s for 30,000 of
    # them). It runs before digest auth, on a REGISTER's Contacts with a Pushgate-Wake.
    started = time.monotonic()
    for contact in ("<sip:a@h>" + ";a" * 30_000, "<sip:a@h>" + ';"' * 30_000):
        sipmsg.contact_params(contact)
    assert time.monotonic() - started < 0.5


def test_contact_params_keep_semicolons_inside_quotes() -> None:
    c = '<sip:a@h>;+sip.instance="<urn:a;b>";x="q\\";y";z=1'
    assert sipmsg.contact_params(c) == {
        "+sip.instance": '"<urn:a;b>"',
        "x": '"q\\";y"',
        "z": "1",
    }
