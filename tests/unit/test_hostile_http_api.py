"""Hostile HTTP API requests (hypothesis): pushd.http_api's request validation.

``POST /v1/push`` bodies go through the real :class:`~pushd.http_api.ApiHandler` (its
``push``: JSON envelope, id, ttl/deadline, provider configured, then ``build_request``,
exactly as the server calls it) with a dispatcher stand-in that delivers at once (request
heads are aiohttp's to parse). Bodies are real pushes (APNs call,
Linphone multi-token, FCM) with fields replaced by wrong types, huge numbers, NaN,
injection strings, unknown fields, or with the JSON text mutated into invalid UTF-8 and
worse.

Properties: only :class:`~pushd.http_api.HttpError`, with a documented status; every 400
names the field (or says "invalid JSON" with where, or "body must be a JSON object"); what
reaches the dispatcher is a well-formed push message.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import example, given

from pushd.config import Secret
from pushd.dispatch import RequestDefaults, ResultSink, build_request
from pushd.http_api import (
    MAX_ID,
    MAX_TTL,
    PUSH_FIELDS,
    ApiHandler,
    HttpError,
)
from pushd.model import ProviderName
from tests.unit import hostile

NOW = 1_750_000_000.0
TOKEN = "0f" * 32
BODIES: tuple[dict[str, Any], ...] = (
    {
        "kind": "call",
        "provider": "apns",
        "prid": TOKEN,
        "param": "ABCDE12345.com.example.app.voip",
        "ttl": 30,
        "data": {"call_id": "a84b4c76e66710", "caller": "sip:bob@caller.example"},
    },
    {
        "id": "call-1",
        "kind": "message",
        "provider": "apns.dev",
        "prid": f"{TOKEN}:remote&{'ab' * 32}:voip",
        "param": "ABCDE12345.org.linphone.phone.remote&voip",
        "deadline": NOW + 60,
        "aor": "sip:alice@pushgate.test",
        "ruid": "uloc-1",
    },
    {
        "kind": "call",
        "provider": "fcm",
        "prid": "dGVzdA:APA91b-x_y.z",
        "param": "pushgate-test",
        "ttl": 600,
    },
    {
        "kind": "cancel",
        "provider": "fcm",
        "prid": "dGVzdA:APA91b-x_y.z",
        "param": "pushgate-test",
        "deadline": NOW + 0.5,
        "data": {},
    },
)
VALUES: dict[str, tuple[Any, ...]] = {
    "id": ("x", "", "i" * MAX_ID, "i" * (MAX_ID + 1), 7, None, ["x"], "\x00\r\n"),
    "kind": ("call", "message", "cancel", "missed", "refresh", "CALL", "ring", "", 0, None),
    "provider": ("apns", "apns.sandbox", "fcm", "APNS", "gcm", "apns\r\n", "", 1, None, {}),
    "prid": (TOKEN, TOKEN + "%0A", "x" * 10_000, "", None, 1, "tok:APA91b", "\u0663" * 64),
    "param": ("ABCDE12345.a.b", "pushgate-test", "ABCDE12345.a.b\n", "", None, 1.5, "x" * 5000),
    "ttl": (30, 0, -1, 600, 600.0001, 1e-9, 10**400, math.nan, math.inf, True, "30", None),
    "deadline": (NOW + 30, NOW, NOW - 1, NOW + MAX_TTL + 1, -(10**400), math.nan, "x", None),
    "data": ({}, {"a": "b"}, {"a": 1}, {"a": None}, {"": ""}, [], "x", {"n": {"a": "b"}}),
    "aor": ("sip:a@b", "", 1, None, ["sip:a@b"]),
    "ruid": ("r", "", 1, None, {"r": 1}),
}
ANY = (
    *hostile.HUGE_NUMBERS,
    math.nan,
    -math.inf,
    None,
    False,
    "",
    [],
    {},
    "\udcff",
    json.loads("[" * 900 + "]" * 900),
    "x" * 20_000,
)
# 400 names one of these (OpenAPI: PushRequest's fields, data.<key>) or an unknown field.
FIELDS = PUSH_FIELDS | {"data"}


class Dispatcher:
    """Stands in for pushd.dispatch.Dispatcher.submit: records the message, delivers."""

    def __init__(self) -> None:
        self.submitted: list[Mapping[str, Any]] = []

    def submit(self, msg: Mapping[str, Any], sink: ResultSink) -> None:
        self.submitted.append(msg)
        sink(
            {
                "id": msg["id"],
                "verdict": "delivered",
                "status": 200,
                "reason": None,
                "attempts": 1,
                "ms": 1.0,
            }
        )


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def handler(dispatcher: Dispatcher, providers: tuple[ProviderName, ...]) -> ApiHandler:
    return ApiHandler(
        token=Secret("api-token"),
        submit=dispatcher.submit,
        providers=lambda: providers,
        defaults=RequestDefaults(),
        kamailio_connected=lambda: True,
        metrics=lambda: "",
        clock=lambda: NOW,
    )


def hostile_body(b: hostile.Bits) -> tuple[bytes, dict[str, Any] | None]:
    """A push body, fields replaced / dropped / added, sometimes its text mutated; with the
    object it was made from (None when the text was mutated)."""
    body = dict(BODIES[b.take(len(BODIES))])
    names = sorted(VALUES)
    for _ in range(b.take(5)):
        how, name = b.take(6), names[b.take(len(names))]
        if how <= 2:
            body[name] = VALUES[name][b.take(len(VALUES[name]))]
        elif how == 3:
            body[name] = ANY[b.take(len(ANY))]
        elif how == 4:
            body.pop(name, None)
        else:
            body[hostile.mutate(name, b)] = ANY[b.take(len(ANY))]
    text = json.dumps(body, allow_nan=True)
    if b.take(4) == 0:
        return hostile.mutate(text, b).encode("utf-8", "surrogatepass"), None
    # A lone surrogate becomes invalid UTF-8, as a broken client would send it.
    return text.encode("utf-8", "surrogatepass"), body


@hostile.cases()
@given(hostile.case(512))
@example(hostile.Bits(0))
def test_hostile_push_bodies_are_refused_by_name_or_pushed_clean(
    loop: asyncio.AbstractEventLoop, b: hostile.Bits
) -> None:
    # FCM not configured now and then: a valid FCM push is then a 422.
    providers = (ProviderName.APNS, ProviderName.FCM) if b.take(3) else (ProviderName.APNS,)
    body, made_from = hostile_body(b)
    dispatcher = Dispatcher()
    try:
        answer = loop.run_until_complete(handler(dispatcher, providers).push(body))
    except HttpError as exc:
        assert not dispatcher.submitted
        if exc.status == 422:
            assert exc.field == "provider", exc
        elif exc.error == "invalid JSON":
            assert exc.status == 400 and exc.detail, exc
        elif exc.error == "unknown field":
            assert made_from is None or exc.field in made_from, exc
        else:
            assert exc.status == 400 and exc.error, exc
            assert exc.error == "body must be a JSON object" or (
                exc.field in FIELDS or (exc.field or "").startswith("data.")
            ), exc
        return
    # Accepted: the dispatcher got one push message, every field as the protocol says.
    (msg,) = dispatcher.submitted
    assert answer["verdict"] == "delivered" and answer["id"] == msg["id"]
    assert msg["type"] == "push" and set(msg) <= PUSH_FIELDS | {"type"} and "ttl" not in msg
    assert isinstance(msg["id"], str) and 0 < len(msg["id"]) <= MAX_ID
    assert type(msg["deadline"]) is float and NOW < msg["deadline"] <= NOW + MAX_TTL
    assert all(isinstance(msg[k], str) for k in ("aor", "ruid") if k in msg)
    request = build_request(msg, RequestDefaults())
    assert request.provider in providers
    if made_from is not None:
        assert {k: msg[k] for k in ("kind", "provider", "prid", "param")} == {
            k: made_from[k] for k in ("kind", "provider", "prid", "param")
        }
