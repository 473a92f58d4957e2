"""RFC 8599 registrar rules: Feature-Caps, 555, 400, 423, capability query."""

from __future__ import annotations

from pushgate.registration import RegisterCheck, check_register

SERVED = frozenset({"apns", "fcm"})
TOKEN = "ab" * 32


def contact(params: str, tail: str = "") -> str:
    return f"<sip:alice@192.0.2.1:5060;transport=tcp;ob{params}>{tail}"


APNS = f";pn-provider=apns;pn-prid={TOKEN};pn-param=ABCDE12345.com.example.app.voip"


def check(*contacts: str, expires: int | None = 600, has_pns: bool = False) -> RegisterCheck:
    return check_register(
        list(contacts),
        expires_header=expires,
        already_has_pns=has_pns,
        served=SERVED,
        min_expires=150,
    )


def test_push_binding_gets_feature_caps() -> None:
    r = check(contact(APNS))
    assert r.status == 200
    assert r.extra_headers == ('Feature-Caps: *;+sip.pns="apns"',)


def test_pnsreg_offered_by_the_ua_is_answered_with_a_value_over_120() -> None:
    r = check(contact(APNS, ';+sip.instance="<urn:uuid:1>";+sip.pnsreg'))
    assert r.extra_headers == ('Feature-Caps: *;+sip.pns="apns";+sip.pnsreg="121"',)


def test_another_proxy_already_handles_push() -> None:
    assert check(contact(APNS), has_pns=True).extra_headers == ()


def test_unserved_provider_is_555() -> None:
    r = check(contact(f";pn-provider=webpush;pn-prid={TOKEN};pn-param=x"))
    assert r.status == 555 and "webpush" in r.warning


def test_malformed_params_are_400_naming_the_param() -> None:
    r = check(contact(";pn-provider=apns;pn-prid=zz;pn-param=ABCDE12345.a.b"))
    assert r.status == 400 and r.warning.startswith("pn-prid")


def test_too_short_expiry_is_423_with_min_expires() -> None:
    r = check(contact(APNS, ";expires=60"))
    assert r.status == 423
    assert "Min-Expires: 150" in r.extra_headers
    assert check(contact(APNS), expires=60).status == 423


def test_removal_is_never_refused_and_gets_no_feature_caps() -> None:
    r = check(contact(APNS, ";expires=0"))
    assert r.status == 200 and r.extra_headers == ()
    assert check("*", expires=0).status == 200


def test_capability_query_lists_what_we_serve() -> None:
    r = check(contact(";pn-provider="))
    assert set(r.extra_headers) == {
        'Feature-Caps: *;+sip.pns="apns"',
        'Feature-Caps: *;+sip.pns="fcm"',
    }


def test_unknown_extra_pn_params_are_kept_not_rejected() -> None:
    r = check(contact(APNS + ";pn-silent=1;pn-timeout=0;pn-msg-str=IM_MSG"))
    assert r.status == 200


def test_expires_param_with_non_ascii_digits_is_ignored_like_any_other_garbage() -> None:
    # "²" passes str.isdigit() but not int(): the REGISTER route (before digest auth)
    # raised ValueError and answered nothing.
    for garbage in ("abc", "\u00b2", "1\u00b2"):
        assert check(contact(APNS, f";expires={garbage}")).status == 200
    assert check(contact(APNS, ";expires=\u00b2"), expires=60).status == 423


def test_unregister_without_angle_brackets_adds_no_binding() -> None:
    bare = f"sip:alice@192.0.2.1:5060;transport=tcp;expires=0{APNS}"
    assert not check(bare, expires=None).adds_binding
    assert check(f"sip:alice@192.0.2.1:5060;expires=600{APNS}", expires=None).adds_binding


def test_provider_as_sent_never_reaches_a_reply_header() -> None:
    # Found by tests/unit/test_hostile_sip.py: "apns%0D%0A" passed the check (stripped) and
    # the raw value went into 'Feature-Caps: *;+sip.pns="apns\r\n"' of the 200.
    r = check(contact(APNS.replace("pn-provider=apns", "pn-provider=apns%0D%0A")))
    assert (r.status, r.warning.split(":")[0]) == (400, "pn-provider")
    r = check(contact(APNS.replace("pn-provider=apns", "pn-provider=APNS.dev")))
    assert r.extra_headers == ('Feature-Caps: *;+sip.pns="apns"',)


def test_duplicated_pn_param_is_400_naming_it() -> None:
    r = check(contact(APNS + ";pn-provider=fcm"))
    assert (r.status, r.warning) == (400, "pn-provider: given twice")


def test_one_device_with_two_sets_of_push_params_is_400() -> None:
    instance = ';+sip.instance="<urn:uuid:1>"'
    other = APNS.replace(TOKEN, "cd" * 32)
    r = check(contact(APNS, instance + ";reg-id=1"), contact(other, instance + ";reg-id=2"))
    assert r.status == 400 and r.warning.startswith("pn-prid: differs between two Contacts")
    # Two flows of one device with the same params, or two devices: fine.
    assert check(contact(APNS, instance + ";reg-id=1"), contact(APNS, instance)).status == 200
    assert (
        check(contact(APNS, instance), contact(other, ';+sip.instance="<urn:uuid:2>"')).status
        == 200
    )
    # Replacing the token: the old binding removed in the same REGISTER.
    assert check(contact(APNS, instance + ";expires=0"), contact(other, instance)).status == 200


def test_a_push_binding_the_registrar_cannot_store_is_400_naming_the_param() -> None:
    # Found with tests/scenarios/register_pn_oversized: an FCM token of 450 characters
    # passed (FCM allows 4096) and save() failed on registrar's 512-byte Contact limit
    # with a bare "400 Bad Request", no Warning, and our Feature-Caps on it.
    fcm = ";pn-provider=fcm;pn-prid={};pn-param=pushgate-test"
    assert check(contact(fcm.format("A" * 300))).status == 200
    r = check(contact(fcm.format("A" * 450)))
    assert (r.status, r.warning.split(":")[0]) == (400, "pn-prid")
    assert "512 bytes" in r.warning
