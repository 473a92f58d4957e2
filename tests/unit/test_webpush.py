"""pn-provider=webpush (RFC 8599 §12), +sip.vapid (§8.3), and pushd's pure webpush parts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pushd import config, webpush_keys
from pushd.dispatch import BadPush, RequestDefaults, build_request
from pushd.model import ProviderName, PushKind, Verdict
from pushd.webpush import audience, for_log, ttl_seconds, urgency
from pushd.webpush_errors import classify_webpush
from pushgate import pn_params, registration

ENDPOINT = "https://fcm.googleapis.com/fcm/send/dXk3b2ZmZTpBUEE5MWJHX3Rva2Vu"
CONTACT = (
    "<sip:a1b2@df7jal23ls0d.invalid;transport=ws;pn-provider=webpush;"
    f'pn-prid={ENDPOINT}>;+sip.instance="<urn:uuid:00000000-0000-4000-8000-000000000001>"'
    ";reg-id=1;expires=600"
)
KEY = "B" + "A" * 86


def test_webpush_binding_is_provider_and_subscription_uri() -> None:
    push = pn_params.parse_uri(CONTACT.strip("<").split(">")[0])
    assert push is not None
    assert (push.provider, push.prid, push.param) == ("webpush", ENDPOINT, "")
    escaped = pn_params.parse_uri("sip:a@b;pn-provider=webpush;pn-prid=https%3A%2F%2Fp.example%2Fs")
    assert escaped is not None and escaped.prid == "https://p.example/s"


@pytest.mark.parametrize(
    ("prid", "param", "culprit"),
    [
        (ENDPOINT, "myproject", "pn-param"),  # "MUST NOT be used"
        ("http://push.example/sub", "", "pn-prid"),
        ("push.example/sub", "", "pn-prid"),
        ("https://push.example", "", "pn-prid"),
        ("https://push.example/", "", "pn-prid"),
        ("https://u:p@push.example/sub", "", "pn-prid"),
        ("https://push.example/sub#frag", "", "pn-prid"),
        ('https://push.example/s"ub', "", "pn-prid"),
        ("https://push.example:99999/sub", "", "pn-prid"),
        ("https://push.example/" + "x" * 1100, "", "pn-prid"),
    ],
)
def test_webpush_params_rejected(prid: str, param: str, culprit: str) -> None:
    params = {"pn-provider": "webpush", "pn-prid": prid}
    if param:
        params["pn-param"] = param
    with pytest.raises(pn_params.PnError) as err:
        pn_params.parse(params)
    assert err.value.param == culprit


def check(contact: str, served: frozenset[str], key: str = KEY) -> registration.RegisterCheck:
    return registration.check_register(
        [contact],
        expires_header=None,
        already_has_pns=False,
        served=served,
        min_expires=150,
        vapid_public_key=key,
    )


def test_feature_caps_carry_our_vapid_key_for_webpush_only() -> None:
    result = check(CONTACT, frozenset({"apns", "fcm", "webpush"}))
    assert result.status == 200
    assert result.extra_headers == (f'Feature-Caps: *;+sip.pns="webpush";+sip.vapid="{KEY}"',)
    fcm = CONTACT.replace("pn-provider=webpush", "pn-provider=fcm").replace(
        f"pn-prid={ENDPOINT}", "pn-prid=fcm-token-123456:APA91b;pn-param=my-project"
    )
    assert check(fcm, frozenset({"fcm", "webpush"})).extra_headers == (
        'Feature-Caps: *;+sip.pns="fcm"',
    )
    # No key configured: sip.pns alone (a UA then cannot restrict its subscription).
    assert check(CONTACT, frozenset({"webpush"}), key="").extra_headers == (
        'Feature-Caps: *;+sip.pns="webpush"',
    )


def test_webpush_not_served_is_555() -> None:
    result = check(CONTACT, frozenset({"apns", "fcm"}))
    assert (result.status, result.reason) == (555, "Push Notification Service Not Supported")


def test_push_message_becomes_a_webpush_request() -> None:
    msg = {"kind": "call", "provider": "webpush", "prid": ENDPOINT, "deadline": 1e9}
    request = build_request(msg, RequestDefaults())
    assert (request.provider, request.token, request.topic) == (
        ProviderName.WEBPUSH,
        ENDPOINT,
        "",
    )
    with pytest.raises(BadPush) as err:
        build_request({**msg, "param": "x"}, RequestDefaults())
    assert err.value.field == "param"


def test_ttl_urgency_audience() -> None:
    now = time.time()
    assert ttl_seconds(now + 29.9, now) == 29
    assert ttl_seconds(now - 5, now) == 0
    assert ttl_seconds(now + 1e9, now) == 2_419_200
    assert urgency(PushKind.CALL) == "high"
    assert urgency(PushKind.CANCEL) == "high"
    assert urgency(PushKind.REFRESH) == "normal"
    assert audience(ENDPOINT) == "https://fcm.googleapis.com"
    assert audience("https://127.0.0.1:8443/push/x") == "https://127.0.0.1:8443"
    # The path is the capability to push: logs keep the origin and a stub.
    assert "dXk3b2ZmZTpBUEE5MWJHX3Rva2Vu" not in for_log(ENDPOINT)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (201, Verdict.DELIVERED),
        (404, Verdict.DELETE_TOKEN),
        (410, Verdict.DELETE_TOKEN),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (None, Verdict.RETRY),
        (400, Verdict.CONFIG_ERROR),
        (401, Verdict.CONFIG_ERROR),
        (403, Verdict.CONFIG_ERROR),
        (413, Verdict.CONFIG_ERROR),
        (405, Verdict.GIVE_UP),
    ],
)
def test_classify(status: int | None, verdict: Verdict) -> None:
    outcome = classify_webpush(status, 7.0)
    assert outcome.verdict == verdict
    if verdict == Verdict.RETRY:
        assert outcome.retry_after == 7.0
    assert (outcome.hint is not None) == (verdict == Verdict.CONFIG_ERROR)


def write(tmp_path: Path, webpush: str) -> Path:
    path = tmp_path / "pushd.yaml"
    path.write_text(
        f"kamailio: {{evapi: '127.0.0.1:8448', secret: 's3cret'}}\nwebpush: {webpush}\n"
    )
    return path


def test_config_webpush_section(tmp_path: Path) -> None:
    key_file = tmp_path / "vapid.pem"
    public = webpush_keys.public_key_b64(webpush_keys.generate(key_file))
    cfg = config.load(
        write(tmp_path, "{vapid_private_key_file: vapid.pem, subject: 'mailto:a@b.example'}")
    )
    assert cfg.webpush is not None and cfg.webpush.public_key == public
    assert cfg.providers == (ProviderName.WEBPUSH,)
    assert len(public) == 87


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ("{subject: 'mailto:a@b.example'}", "webpush.vapid_private_key_file", "required"),
        ("{vapid_private_key_file: k.pem}", "webpush.subject", "required"),
        (
            "{vapid_private_key_file: k.pem, subject: 'ops@example.com'}",
            "webpush.subject",
            "mailto: or https:",
        ),
        (
            "{vapid_private_key_file: missing.pem, subject: 'mailto:a@b.example'}",
            "webpush.vapid_private_key_file",
            "file not found",
        ),
        (
            "{vapid_private_key_file: k.pem, subject: 'mailto:a@b.example', colour: red}",
            "webpush.colour",
            "unknown key",
        ),
    ],
)
def test_config_errors_name_file_and_key(
    tmp_path: Path, section: str, key: str, message: str
) -> None:
    webpush_keys.generate(tmp_path / "k.pem")
    path = write(tmp_path, section)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert message in str(err.value)


def test_rsa_key_is_not_a_vapid_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path = write(tmp_path, "{vapid_private_key_file: k.pem, subject: 'mailto:a@b.example'}")
    with pytest.raises(config.ConfigError, match="is not a P-256"):
        config.load(path)
