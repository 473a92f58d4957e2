"""RFC 8599 pn-* parsing, validation and APNs topic derivation."""

from __future__ import annotations

import pytest

from pushgate import pn_params
from pushgate.pn_params import PnError

TOKEN = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0"


def uri(**params: str) -> str:
    tail = "".join(f";{k.replace('_', '-')}={v}" for k, v in params.items())
    return f"sip:alice@192.0.2.10:5060;transport=tcp;ob{tail}"


def test_apns_binding_topic_is_everything_after_the_first_dot() -> None:
    p = pn_params.parse_uri(
        uri(pn_provider="apns", pn_prid=TOKEN, pn_param="ABCDE12345.com.example.app.voip")
    )
    assert p is not None
    assert (p.provider, p.sandbox, p.apns_team()) == ("apns", False, "ABCDE12345")
    assert p.apns_topic("voip") == "com.example.app.voip"
    assert p.apns_topic("remote") == "com.example.app"
    assert p.token_for("voip") == TOKEN


def test_no_push_params_means_none() -> None:
    assert pn_params.parse_uri("sip:alice@192.0.2.10;transport=tcp;ob") is None


def test_fcm_binding() -> None:
    p = pn_params.parse_uri(
        uri(pn_provider="fcm", pn_prid="dGVzdA:APA91b-x_y", pn_param="my-proj-1")
    )
    assert p is not None and p.provider == "fcm" and p.param == "my-proj-1"


def test_linphone_variants_sandbox_and_multi_token() -> None:
    voip, remote = "b" * 64, "a" * 64
    p = pn_params.parse_uri(
        uri(
            pn_provider="apns.dev",
            pn_prid=f"{remote}:remote&{voip}:voip",
            pn_param="ABCDE12345.org.linphone.phone.remote%26voip",
            pn_silent="1",
            pn_timeout="0",
        )
    )
    assert p is not None
    assert p.sandbox is True
    assert p.token_for("voip") == voip
    assert p.token_for("remote") == remote
    assert p.apns_topic("voip") == "org.linphone.phone.voip"
    assert p.apns_topic("remote") == "org.linphone.phone"
    assert p.extra == {"pn-silent": "1", "pn-timeout": "0"}


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"pn_provider": "apns", "pn_param": "ABCDE12345.com.x.voip"}, "pn-prid"),
        ({"pn_provider": "apns", "pn_prid": "not-hex!", "pn_param": "ABCDE12345.a.b"}, "pn-prid"),
        ({"pn_provider": "apns", "pn_prid": TOKEN}, "pn-param"),
        ({"pn_provider": "apns", "pn_prid": TOKEN, "pn_param": "com.example.app.voip"}, "pn-param"),
        ({"pn_provider": "carrier-pigeon", "pn_prid": TOKEN, "pn_param": "x"}, "pn-provider"),
        ({"pn_provider": "fcm", "pn_prid": "tok:en:ok12345"}, "pn-param"),
        (
            {"pn_provider": "fcm", "pn_prid": "bad token with spaces", "pn_param": "proj-1"},
            "pn-prid",
        ),
        ({"pn_prid": TOKEN, "pn_param": "ABCDE12345.a.b"}, "pn-provider"),
        # %0A decodes to a newline, which regex ``$`` lets through at the very end: it
        # would ride into the APNs :path / apns-topic headers and the FCM token.
        (
            {"pn_provider": "apns", "pn_prid": TOKEN + "%0A", "pn_param": "ABCDE12345.a.b"},
            "pn-prid",
        ),
        ({"pn_provider": "apns", "pn_prid": TOKEN, "pn_param": "ABCDE12345.a.b%0A"}, "pn-param"),
        (
            {"pn_provider": "apns", "pn_prid": TOKEN + ":voip%0A", "pn_param": "ABCDE12345.a.b"},
            "pn-prid",
        ),
        ({"pn_provider": "fcm", "pn_prid": "tok:en:ok12345%0A", "pn_param": "proj-1"}, "pn-prid"),
        ({"pn_provider": "fcm", "pn_prid": "tok:en:ok12345", "pn_param": "proj-1%0A"}, "pn-param"),
        # Found by tests/unit/test_hostile_sip.py: white space around the provider was
        # stripped for the check but the value as sent went on (into Feature-Caps).
        (
            {"pn_provider": "apns%0D%0A", "pn_prid": TOKEN, "pn_param": "ABCDE12345.a.b"},
            "pn-provider",
        ),
        (
            {"pn_provider": "%20fcm", "pn_prid": "tok:en:ok12345", "pn_param": "proj-1"},
            "pn-provider",
        ),
    ],
)
def test_malformed_params_name_the_param(params: dict[str, str], bad: str) -> None:
    with pytest.raises(PnError) as err:
        pn_params.parse_uri(uri(**params))
    assert err.value.param == bad


def test_uri_params_decode_and_stop_at_headers() -> None:
    got = pn_params.uri_params("<sip:a@h;Pn-Param=x%26y;lr?Subject=z>")
    assert got == {"pn-param": "x&y", "lr": ""}


def test_explicit_environment_is_pinned_plain_apns_is_not() -> None:
    def parsed(provider: str) -> pn_params.PushParams:
        p = pn_params.parse_uri(
            uri(pn_provider=provider, pn_prid=TOKEN, pn_param="ABCDE12345.com.example.app.voip")
        )
        assert p is not None
        return p

    assert not parsed("apns").environment_pinned
    assert parsed("apns.dev").environment_pinned and parsed("apns.dev").sandbox
    assert parsed("apns.prod").environment_pinned and not parsed("apns.prod").sandbox


@pytest.mark.parametrize(
    "tail",
    [
        f";pn-provider=fcm;pn-prid={TOKEN};pn-provider=apns;pn-param=ABCDE12345.a.b",
        f";pn-provider=apns;pn-prid={TOKEN};PN-PRID={TOKEN[::-1]};pn-param=ABCDE12345.a.b",
        f";pn-provider=apns;pn-prid={TOKEN};pn-param=ABCDE12345.a.b;pn-silent=1;pn-silent=0",
    ],
)
def test_a_pn_param_given_twice_is_refused(tail: str) -> None:
    # Found by tests/unit/test_hostile_sip.py: the last value silently won; another
    # reader of the stored Contact (a proxy, the phone's own view) may take the first.
    with pytest.raises(PnError) as err:
        pn_params.parse_uri("sip:alice@192.0.2.10;transport=tcp" + tail)
    assert err.value.reason == "given twice" and err.value.param.startswith("pn-")
