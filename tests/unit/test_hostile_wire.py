"""Hostile messages on the Kamailio <-> pushd channel (hypothesis), through both ends.

Each case is a ``push`` (Kamailio -> pushd) or a ``result`` (pushd -> Kamailio) built
from real values, with fields replaced by wrong types, huge numbers, NaN, injection
strings and deep nesting, sometimes with the JSON text itself mutated. It goes through
Kamailio's parsers (``pushgate.wire.decode`` / ``parse_result``, as
``kemi/pushd_channel.py`` calls them) and pushd's (``pushd.netstring.Decoder`` and
``pushd.dispatch.build_request``, as ``pushd.kamailio_link`` and the dispatcher do).

Properties: only the documented errors (WireError, NetstringError, BadPush); what is
accepted is well-formed (a canonical hold id, a final verdict, strings where strings
belong, a finite deadline, a hex token and a bundle topic); every refusal names the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from pushd import dispatch, netstring
from pushd.dispatch import BadPush, RequestDefaults
from pushd.model import ProviderName, PushKind
from pushd.netstring import NetstringError
from pushgate import pn_params, registration, wire
from pushgate.wire import WireError
from tests.unit import hostile

NOW = 1_750_000_000.0
TOKEN = "0f" * 32
DEFAULTS = RequestDefaults()

PUSH = {
    "type": "push",
    "id": "123:4567:0",
    "kind": "call",
    "provider": "apns",
    "prid": TOKEN,
    "param": "ABCDE12345.com.example.app.voip",
    "aor": "sip:alice@pushgate.test",
    "ruid": "uloc-5f3a-1",
    "instance": "<urn:uuid:00000000-0000-4000-8000-000000000001>",
    "deadline": NOW + 30,
    "data": {"call_id": "a84b4c76e66710", "caller": "sip:bob@caller.example"},
}
RESULT = {
    "type": "result",
    "id": "123:4567:0",
    "verdict": "delivered",
    "status": 200,
    "reason": None,
    "aor": "sip:alice@pushgate.test",
    "ruid": "uloc-5f3a-1",
    "attempts": 1,
    "ms": 12.4,
}

DEEP = json.loads("[" * 900 + "]" * 900)
IDS = (
    "0:0:7",
    "1:2",
    "1:2:3:4",
    "x",
    "",
    " 1:2:3",
    "+1:2:3",
    "01:2:3",
    "1_0:2:3",
    "-1:2:3",
    "\u0663:2:3",
    "1:2:3\n",
    "9" * 30 + ":1:1",
    "1:2:" + "9" * 5000,
    7,
    None,
    True,
)
PUSH_VALUES: dict[str, tuple[Any, ...]] = {
    "type": ("push", "PUSH", "result", "", None, 1),
    "id": IDS,
    "kind": (*(k.value for k in PushKind), "CALL", "retry", "", 1, None, ["call"]),
    "provider": (
        "apns",
        "apns.dev",
        "apns.prod",
        "fcm",
        "FCM",
        "webpush",
        "apns\r\n",
        " fcm",
        "",
        1,
        None,
        ["apns"],
    ),
    "prid": (
        TOKEN,
        f"{TOKEN}:remote&{TOKEN}:voip",
        TOKEN + "\n",
        TOKEN.upper(),
        "ab" * 101,
        "tok:APA91b-x_y.z",
        "fcm token",
        "",
        1,
        None,
        "\u0663" * 64,
    ),
    "param": (
        "ABCDE12345.com.example.app.voip",
        "ABCDE12345.a.b%0A",
        "pushgate-test",
        "ABCDE12345..voip",
        "abcde12345.a.b",
        "",
        0,
        None,
        "x" * 10_000,
    ),
    "deadline": (
        NOW + 30,
        NOW - 30,
        0,
        -1,
        1e308,
        -1e308,
        10**400,
        -(10**400),
        math.nan,
        math.inf,
        True,
        "1750000030",
        None,
        [],
    ),
    "data": (
        {},
        {"call_id": "x"},
        {"a": 1},
        {"a": None},
        {"": ""},
        {"k" * 100: "v" * 10_000},
        [],
        "x",
        None,
        {"nested": {"a": "b"}},
    ),
    "aor": ("sip:a@b", "", None, 1, ["sip:a@b"], {"a": "b"}),
    "ruid": ("r", "", None, 1, ["r"]),
}
RESULT_VALUES: dict[str, tuple[Any, ...]] = {
    "type": ("result", "RESULT", "push", "", None),
    "id": IDS,
    "verdict": (
        "delivered",
        "delete_token",
        "config_error",
        "give_up",
        "retry",
        "Delivered",
        "",
        None,
        1,
        ["delivered"],
    ),
    "status": (200, 410, None, True, "200", 2**64, -1, 1.5, math.nan),
    "reason": (None, "BadDeviceToken", "", 1, ["x"], {"a": "b"}),
    "aor": PUSH_VALUES["aor"],
    "ruid": PUSH_VALUES["ruid"],
    "ms": (12.4, 0, None, True, "12", -1.0, 10**400, math.nan, math.inf, 1e308),
}
# What a peer may send instead of any field: JSON of every kind and size.
ANY = (
    *hostile.HUGE_NUMBERS,
    math.nan,
    math.inf,
    None,
    True,
    "",
    [],
    {},
    DEEP,
    "\x00",
    "\udcff",
    "x" * 70_000,
    {"type": "push"},
)


def hostile_message(b: hostile.Bits) -> tuple[dict[str, Any], bool]:
    """A push or a result with up to four fields replaced, dropped or added; True: the
    fields are as Kamailio / pushd send them."""
    base, typed = (PUSH, PUSH_VALUES) if b.take(2) else (RESULT, RESULT_VALUES)
    msg = dict(base)
    names = sorted(typed)
    untouched = True
    for _ in range(b.take(5)):
        how, name = b.take(6), names[b.take(len(names))]
        if how <= 2:
            options = typed[name]
            msg[name] = options[b.take(len(options))]
        elif how == 3:
            msg[name] = ANY[b.take(len(ANY))]
        elif how == 4:
            msg.pop(name, None)
        else:
            msg[hostile.mutate(name, b)] = ANY[b.take(len(ANY))]
        untouched = untouched and msg == base
    return msg, untouched


def as_text(msg: dict[str, Any], b: hostile.Bits) -> str:
    """The message as JSON text (NaN and Infinity included: Python's json writes them),
    sometimes with the text itself mutated."""
    text = json.dumps(msg, allow_nan=True)
    return hostile.mutate(text, b) if b.take(4) == 0 else text


# ----- what Kamailio accepts (pushgate.wire) ----------------------------------------------------

WIRE_FIELDS = ("type", "id", "verdict", "status", "reason", "aor", "ruid", "attempts", "ms")


def kamailio_side(text: str) -> None:
    try:
        msg = wire.decode(text)
    except WireError as exc:
        assert str(exc).startswith(("not JSON", "type: ")), exc
        return
    assert isinstance(msg, dict) and isinstance(msg["type"], str)
    if msg["type"] != "result":
        return
    try:
        result = wire.parse_result(msg)
    except WireError as exc:
        assert str(exc).split(":", 1)[0] in WIRE_FIELDS, exc
        return
    # Accepted: every field is what the protocol says, nothing coerced from another type.
    assert result.verdict in wire.FINAL_VERDICTS
    assert result.id == msg["id"] and wire.PushId.parse(result.id)
    assert result.status is None or (type(result.status) is int and 100 <= result.status <= 599)
    assert result.status == msg.get("status")
    assert result.reason is None or (
        isinstance(result.reason, str) and result.reason == msg["reason"]
    )
    for name in ("aor", "ruid"):
        assert getattr(result, name) == (msg.get(name) or "")
    assert math.isfinite(result.ms) and result.ms >= 0


# ----- what pushd accepts (pushd.netstring + pushd.dispatch) --------------------------------------

PUSH_FIELDS = (
    "id",
    "kind",
    "deadline",
    "provider",
    "prid",
    "param",
    "data",
    "aor",
    "ruid",
    "instance",
)


def pushd_side(text: str) -> None:
    payload = text.encode("utf-8", "surrogatepass")  # a lone surrogate: invalid UTF-8
    frame = b"%d:%s," % (len(payload), payload)
    decoder = netstring.Decoder()
    try:
        (msg,) = decoder.feed(frame)
    except NetstringError as exc:
        assert str(exc).startswith(("netstring", "bad netstring")), exc
        return
    assert isinstance(msg, dict)
    if msg.get("type") != "push":
        return
    try:
        request = dispatch.build_request(msg, DEFAULTS)
    except BadPush as exc:
        assert exc.field in PUSH_FIELDS or exc.field.startswith("data."), exc
        assert exc.reason
        return
    assert math.isfinite(request.deadline)
    assert request.kind.value == msg["kind"]
    assert all(type(k) is str and type(v) is str for k, v in request.data.items())
    if request.provider is ProviderName.APNS:
        assert re.fullmatch(r"[0-9A-Fa-f]{16,200}", request.token), request.token
        assert re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", request.topic), request.topic
    else:
        assert re.fullmatch(r"[A-Za-z0-9_:.-]{8,4096}", request.token), request.token
        assert re.fullmatch(r"[a-z][a-z0-9-]{4,61}[a-z0-9]", request.topic), request.topic
    result_goes_back(msg)


def result_goes_back(push: dict[str, Any]) -> None:
    """The result pushd writes for a push it took (as Dispatcher._finish builds it) reaches
    Kamailio and is accepted there, whatever the push's aor and ruid strings hold."""
    result = {
        "type": "result",
        "id": push.get("id"),
        "verdict": "delivered",
        "status": 200,
        "reason": None,
        "aor": push.get("aor"),
        "ruid": push.get("ruid"),
        "attempts": 1,
        "ms": 3.2,
    }
    try:
        frame = netstring.encode(result)
    except NetstringError as exc:
        assert "exceeds" in str(exc)  # the only reason pushd may fail to write a result
        return
    (payload,) = re.findall(rb"^\d+:(.*),$", frame, re.S)
    try:
        ours = wire.PushId.parse(push.get("id")) is not None  # an id Kamailio wrote
    except WireError:
        ours = False
    if ours and all(isinstance(push.get(k), str | None) for k in ("aor", "ruid")):
        wire.parse_result(wire.decode(payload.decode("utf-8")))


@hostile.cases()
@given(hostile.case(512))
@example(hostile.Bits(0))
def test_hostile_channel_messages_through_both_ends(b: hostile.Bits) -> None:
    msg, untouched = hostile_message(b)
    text = as_text(msg, b)
    kamailio_side(text)
    pushd_side(text)
    if untouched and msg["type"] == "push" and text == json.dumps(msg):
        dispatch.build_request(msg, DEFAULTS)  # a real push is accepted
    if untouched and msg["type"] == "result" and text == json.dumps(msg):
        wire.parse_result(wire.decode(text))  # a real result is accepted


@hostile.cases(500)
@given(st.text(max_size=200) | st.sampled_from(["[" * 5000, '{"type":"result","id":' * 3000]))
def test_any_text_from_an_evapi_client(text: str) -> None:
    # Anyone who can reach the evapi port sends this before (instead of) a hello.
    kamailio_side(text)
    pushd_side(text)


@hostile.cases(500)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_any_bytes_into_pushds_decoder(chunks: list[bytes]) -> None:
    decoder = netstring.Decoder()
    try:
        for chunk in chunks:
            for msg in decoder.feed(chunk):
                assert isinstance(msg, dict)
    except NetstringError:
        # Broken for good: the connection is dropped and made again.
        try:
            decoder.feed(b"2:{},")
        except NetstringError:
            return
        raise AssertionError("a broken decoder went on decoding") from None


@hostile.cases(1_000)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    hostile.mutations(st.just(TOKEN)),
    hostile.mutations(st.just('"Bob" <sip:bob@caller.example>')),
    hostile.mutations(st.just("<urn:uuid:00000000-0000-4000-8000-000000000001>")),
)
@example(1, 2, 0, TOKEN, "\u00e9" * 25_000, "<urn:uuid:1>")
def test_a_push_kamailio_writes_is_read_by_pushd_as_written(
    index: int, label: int, n: int, prid: str, caller: str, instance: str
) -> None:
    # Kamailio fills data from the caller's INVITE: a 25,000-character display name made
    # a push pushd refused as a frame (connection dropped, resent, dropped, ...).
    hold_id = wire.PushId(tx=wire.Tx(index, label) if index or label else None, n=n)
    try:
        text = wire.push_message(
            push_id=hold_id, kind="call", provider="apns", prid=prid,
            param="ABCDE12345.com.example.app.voip", aor="sip:a@d", ruid="r",
            instance=instance, deadline=NOW + 30,
            data={"call_id": caller, "caller": caller, "caller_name": caller},
        )  # fmt: skip
    except WireError as exc:
        # Only for a prid the registrar would never have stored (escaped to over 60 kB).
        assert str(exc).startswith("push: ") and len(prid) > registration.MAX_CONTACT_URI
        return
    assert len(text) <= wire.MAX_MESSAGE
    (msg,) = netstring.Decoder().feed(netstring.encode(json.loads(text)))
    assert wire.PushId.parse(msg["id"]) == hold_id
    assert msg["data"]["caller"] == caller[: wire.MAX_TEXT] and msg["prid"] == prid
    try:
        request = dispatch.build_request(msg, DEFAULTS)
    except BadPush as exc:
        assert exc.field == "prid" and prid != TOKEN
        return
    assert request.token == pn_params.select_token(prid, "voip")
    assert request.topic == "com.example.app.voip"
