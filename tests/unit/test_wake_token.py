"""Fast wake-up token helpers."""

from __future__ import annotations

from pushgate import wake_token


def test_tokens_are_random_and_well_formed() -> None:
    a, b = wake_token.new_token(), wake_token.new_token()
    assert a != b and wake_token.looks_like_token(a)
    assert not wake_token.looks_like_token("short")
    assert not wake_token.looks_like_token("x" * 20 + "; drop")


def test_binding_key_normalises_the_instance() -> None:
    k1 = wake_token.binding_key("sip:a@d", '"<urn:uuid:1>"')
    k2 = wake_token.binding_key("sip:a@d", "urn:uuid:1")
    assert k1 == k2 == "sip:a@d|<urn:uuid:1>"


def test_contact_instance() -> None:
    c = '<sip:a@h;ob>;expires=60;+sip.instance="<urn:uuid:abc>";reg-id=1'
    assert wake_token.contact_instance(c) == "<urn:uuid:abc>"
    assert wake_token.contact_instance("<sip:a@h>") == ""
