"""The pure parts of the APNs layer: message building, TTL, the shared JWT, settings checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushd.apns_auth import ProviderToken, certificate_topic, load_apns_key
from pushd.apns_message import ApnsPushType, build_message, time_to_live
from pushd.model import Environment, ProviderName, PushKind, PushRequest
from pushd.provider_settings import ApnsSettings
from testkit.certs import TestPki, make_test_pki

NOW = 1_700_000_000.25


def request(kind: PushKind, topic: str = "com.example.app.voip", **kw: object) -> PushRequest:
    fields: dict[str, object] = {
        "provider": ProviderName.APNS,
        "token": "ab" * 32,
        "topic": topic,
        "kind": kind,
        "deadline": NOW + 30,
    }
    fields.update(kw)
    return PushRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


# -- build_message --


def test_call_is_a_voip_push_with_flat_payload() -> None:
    msg = build_message(
        request(PushKind.CALL, data={"call_id": "x", "aps": "dropped"}, collapse_id="x"), NOW
    )

    assert msg.push_type is ApnsPushType.VOIP
    assert (msg.topic, msg.priority, msg.collapse_id) == ("com.example.app.voip", 10, "x")
    assert msg.payload == {"aps": {}, "call_id": "x"}
    assert msg.size_limit() == 5120


def test_call_gets_the_voip_suffix_when_missing() -> None:
    assert build_message(request(PushKind.CALL, topic="com.example.app"), NOW).topic == (
        "com.example.app.voip"
    )


@pytest.mark.parametrize("kind", [PushKind.MESSAGE, PushKind.MISSED, PushKind.CANCEL])
def test_notices_are_alerts_on_the_bare_bundle(kind: PushKind) -> None:
    msg = build_message(request(kind, data={"title": "Bob", "body": "hi", "msg_id": "7"}), NOW)

    assert (msg.push_type, msg.topic, msg.priority) == (ApnsPushType.ALERT, "com.example.app", 10)
    assert msg.payload["aps"]["alert"] == {"title": "Bob", "body": "hi"}
    assert msg.payload["msg_id"] == "7"
    assert "title" not in msg.payload and "body" not in msg.payload
    assert msg.size_limit() == 4096


def test_alert_without_text_gets_a_default_body_and_cancel_stays_silent() -> None:
    missed = build_message(request(PushKind.MISSED), NOW).payload["aps"]
    cancel = build_message(request(PushKind.CANCEL), NOW).payload["aps"]

    assert missed == {"alert": {"body": "Missed call"}, "sound": "default"}
    assert "sound" not in cancel and cancel["alert"]["body"]


def test_refresh_is_a_low_priority_background_push() -> None:
    msg = build_message(request(PushKind.REFRESH, data={"reason": "refresh"}), NOW)

    assert (msg.push_type, msg.topic, msg.priority) == (
        ApnsPushType.BACKGROUND,
        "com.example.app",
        5,
    )
    assert msg.payload == {"aps": {"content-available": 1}, "reason": "refresh"}


def test_size_is_measured_on_the_body_as_sent_compact_utf8() -> None:
    msg = build_message(request(PushKind.CALL, data={"name": "é" * 10}), NOW)

    # No spaces after separators (Apple counts them against the limit), UTF-8 unescaped.
    assert msg.body == '{"aps":{},"name":"ééééééééééé"}'.replace("é", "", 1).encode()
    assert msg.encoded_size() == len(b'{"aps":{},"name":"') + 20 + 2


@pytest.mark.parametrize(
    ("deadline", "now", "ttl"),
    [(NOW + 30, NOW, 30), (NOW + 30.9, NOW, 31), (NOW + 0.1, NOW, 1), (NOW - 5, NOW, 1)],
)
def test_time_to_live_lands_on_the_deadline_and_is_never_zero(
    deadline: float, now: float, ttl: int
) -> None:
    assert time_to_live(deadline, now) == ttl


def test_expiration_equals_int_deadline() -> None:
    deadline = NOW + 42.7
    assert int(NOW) + time_to_live(deadline, NOW) == int(deadline)


# -- ProviderToken --


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def decode(header: str, key: ec.EllipticCurvePrivateKey) -> dict[str, object]:
    scheme, _, token = header.partition(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token)["kid"] == "KEYID12345"
    claims: dict[str, object] = jwt.decode(token, key.public_key(), algorithms=["ES256"])
    return claims


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_jwt_is_reused_for_40_minutes_then_reminted(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    token = ProviderToken(key, "KEYID12345", "TEAMID1234", clock=clock)

    first = token.get_header()
    clock.now += 39 * 60
    assert token.get_header() == first
    clock.now += 60
    second = token.get_header()

    assert second != first
    assert decode(first, key) == {"iss": "TEAMID1234", "iat": int(NOW)}
    assert decode(second, key)["iat"] == int(NOW) + 40 * 60
    assert token.generation == 2


def test_expired_remints_once_per_generation(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    token = ProviderToken(key, "KEYID12345", "TEAMID1234", clock=clock)
    generation = token.current_generation()
    before = token.get_header()

    assert token.expired(generation)
    # A second answer for a request that carried the same old token: already handled.
    assert not token.expired(generation)
    assert token.get_header() != before
    assert token.generation == generation + 1


def test_expired_remints_at_most_once_a_minute(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    token = ProviderToken(key, "KEYID12345", "TEAMID1234", clock=clock)
    assert token.expired(token.current_generation())
    clock.now += 30
    assert not token.expired(token.current_generation())
    clock.now += 31
    assert token.expired(token.current_generation())


# -- keys, certificates, settings --


def test_load_apns_key_accepts_the_p8(pki: TestPki) -> None:
    assert isinstance(load_apns_key(pki.apns_key).curve, ec.SECP256R1)


def test_load_apns_key_rejects_other_keys(tmp_path: Path) -> None:
    other = tmp_path / "p384.p8"
    other.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    junk = tmp_path / "junk.p8"
    junk.write_text("nope")

    with pytest.raises(ValueError, match="P-256"):
        load_apns_key(other)
    with pytest.raises(ValueError, match=r"junk\.p8"):
        load_apns_key(junk)


def test_certificate_topic_reads_the_uid(pki: TestPki) -> None:
    assert certificate_topic(pki.client_cert) == "com.example.app"
    assert certificate_topic(pki.server_cert) is None


def _settings(**kw: object) -> ApnsSettings:
    base = ApnsSettings(
        auth="token",
        key_file=Path("k.p8"),
        key_id="KEYID12345",
        team_id="TEAMID1234",
        cert_file=None,
        default_environment=Environment.PRODUCTION,
        host=None,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"auth": "password"}, "auth must be"),
        ({"key_id": None}, "key_id"),
        ({"key_file": None, "team_id": ""}, "key_file, team_id"),
        ({"auth": "certificate"}, "cert_file"),
        ({"port": 0}, "port"),
        ({"max_connections": 0}, "max_connections"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_settings_are_checked(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _settings(**change)


def test_settings_defaults() -> None:
    s = _settings()
    assert (s.port, s.ca_file, s.max_connections, s.timeout) == (443, None, 10, 10.0)
