"""Hostile Contacts and pn params (hypothesis): pushgate.pn_params, sipmsg, registration.

Properties, on realistic bindings mutated (see tests/unit/hostile.py):

- nothing raises but the documented :class:`~pushgate.pn_params.PnError`;
- what is accepted is clean: an APNs token is hex, a topic is a bundle ID, an FCM token
  and project match Google's alphabets, no pn-* parameter was given twice, and every
  header we would add to a reply is one line of the documented shape;
- every refusal names its culprit: the PnError's ``param``, the 400/555 Warning's first
  word, the 423's Min-Expires.
"""

from __future__ import annotations

import re
import time

from hypothesis import example, given
from hypothesis import strategies as st

from pushgate import pn_params, registration, sipmsg, wake_token
from pushgate.pn_params import PnError, PushParams
from tests.unit import hostile

SERVED = frozenset({"apns", "fcm"})
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HEX_TOKEN = re.compile(r"[0-9A-Fa-f]{16,200}")
TOPIC = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
FCM_TOKEN = re.compile(r"[A-Za-z0-9_:.-]{8,4096}")
FCM_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,61}[a-z0-9]")
FEATURE_CAPS = re.compile(r'Feature-Caps: \*;\+sip\.pns="(apns|fcm)"(;\+sip\.pnsreg="121")?')
PN_NAMES = ("pn-provider", "pn-prid", "pn-param")


def uri_of(pairs: list[tuple[str, str | None]]) -> str:
    return "sip:alice@192.0.2.10:5060;transport=tcp;ob" + hostile.pn_tail(pairs)


def pn_names(uri: str) -> list[str]:
    """Reference reading of the URI parameter names (RFC 3261: ';'-separated, before '?')."""
    uri = uri.strip()
    if uri.startswith("<"):
        uri = uri[1:].split(">", 1)[0]
    names = [p.partition("=")[0].strip().lower() for p in uri.split("?", 1)[0].split(";")[1:]]
    return [n for n in names if n.startswith("pn-")]


def assert_clean(push: PushParams) -> None:
    """What pushd will put into an APNs :path / apns-topic or an FCM request is well-formed."""
    if push.provider == "apns":
        assert push.raw_provider.lower() in hostile.APNS_PROVIDERS, push.raw_provider
        for service in ("voip", "remote"):
            assert HEX_TOKEN.fullmatch(push.token_for(service)), push.prid
            assert TOPIC.fullmatch(push.apns_topic(service)), push.param
        assert re.fullmatch(r"[A-Z0-9]{10}", push.apns_team())
    else:
        assert push.provider == "fcm" and push.raw_provider.lower() == "fcm"
        assert FCM_TOKEN.fullmatch(push.prid), push.prid
        assert FCM_PROJECT.fullmatch(push.param), push.param
        assert not push.sandbox


def assert_names_a_pn_param(exc: PnError) -> None:
    assert exc.param.startswith("pn-") and exc.reason, exc
    assert str(exc).startswith(f"{exc.param}: ")


# ----- pn_params ----------------------------------------------------------------------------


@hostile.cases(300)
@given(hostile.valid_pn())
def test_real_bindings_are_accepted(pairs: list[tuple[str, str | None]]) -> None:
    push = pn_params.parse_uri(uri_of(pairs))
    assert push is not None
    assert_clean(push)


@hostile.cases(1_000)
@given(hostile.hostile_pn)
@example([("pn-provider", "apns%0D%0A"), ("pn-prid", "ab" * 32), ("pn-param", "ABCDE12345.a.b")])
@example([("pn-provider", "fcm"), ("pn-prid", "tok12345"), ("pn-provider", "apns")])
@example([("pn-provider", "apns"), ("pn-prid", "ab" * 32), ("PN-PRID", "cd" * 32)])
def test_hostile_pn_params_are_refused_by_name_or_accepted_clean(
    pairs: list[tuple[str, str | None]],
) -> None:
    uri = uri_of(pairs)
    try:
        push = pn_params.parse_uri(uri)
    except PnError as exc:
        assert_names_a_pn_param(exc)
        return
    names = pn_names(uri)
    assert len(names) == len(set(names)), f"a pn param given twice was accepted: {uri!r}"
    if push is not None:
        assert_clean(push)


@hostile.cases(500)
@given(st.text(max_size=300))
def test_any_text_as_a_uri(uri: str) -> None:
    try:
        push = pn_params.parse_uri(uri)
    except PnError as exc:
        assert_names_a_pn_param(exc)
        return
    if push is not None:
        assert_clean(push)


# ----- registration.check_register ----------------------------------------------------------


def check(contacts: list[str], expires: int | None = 600) -> registration.RegisterCheck:
    return registration.check_register(
        contacts, expires_header=expires, already_has_pns=False, served=SERVED, min_expires=150
    )


def register_of(b: hostile.Bits) -> tuple[list[str], int | None]:
    """A REGISTER's Contacts (hostile pn params) and its Expires header."""
    return hostile.hostile_contacts_of(b), (None, 0, 60, 600)[b.take(4)]


@hostile.cases()
@given(hostile.case(1024).map(register_of))
@example(
    (
        [
            "<sip:a@h;transport=tcp;pn-provider=apns%0D%0A;pn-prid="
            + "ab" * 32
            + ";pn-param=ABCDE12345.a.b.voip>"
        ],
        600,
    )
)
@example(
    (
        [
            "<sip:a@h;pn-provider=apns;pn-prid=" + "ab" * 32 + ";pn-param=ABCDE12345.a.b>"
            ';+sip.instance="<urn:uuid:1>"',
            "<sip:a@h;pn-provider=apns;pn-prid=" + "cd" * 32 + ";pn-param=ABCDE12345.a.b>"
            ';+sip.instance="<urn:uuid:1>"',
        ],
        600,
    )
)
def test_hostile_registers_are_refused_by_name_or_accepted_clean(
    register: tuple[list[str], int | None],
) -> None:
    contacts, expires = register
    r = check(contacts, expires)
    assert r.status in (200, 400, 423, 555)
    for header in (*r.extra_headers, sipmsg.warning(r.warning)):
        assert not CONTROL.search(header), repr(header)
    if r.status == 400:
        assert r.reason == "Bad Push Parameters"
        assert r.warning.split(":", 1)[0].startswith("pn-"), r.warning
        return
    if r.status == 555:
        assert r.warning.startswith("pn-provider: "), r.warning
        return
    if r.status == 423:
        assert "Min-Expires: 150" in r.extra_headers and r.warning.startswith("expires ")
        return
    # Accepted: every header we add is one of the documented Feature-Caps lines ...
    for header in r.extra_headers:
        assert FEATURE_CAPS.fullmatch(header), header
    devices: dict[str, tuple[str, str, str]] = {}
    for contact in contacts:
        uri = sipmsg.contact_uri(contact)
        names = pn_names(uri)
        assert len(names) == len(set(names)), f"a pn param given twice was accepted: {uri!r}"
        try:
            push = pn_params.parse_uri(uri)
        except PnError:
            # Stored, but not as a push binding: a capability query (RFC 8599 §4.1.5).
            params = pn_params.uri_params(uri)
            assert "pn-provider" in params and "pn-prid" not in params, contacts
            continue
        if push is None:
            continue
        # ... every binding stored with push params is clean and fits the registrar ...
        assert_clean(push)
        assert len(uri.encode("utf-8", "surrogatepass")) <= registration.MAX_CONTACT_URI
        # ... and one device (one +sip.instance) has one set of push params.
        instance = wake_token.contact_instance(contact)
        if instance and registration.contact_expires(contact, expires) != 0:
            seen = devices.setdefault(instance, (push.provider, push.prid, push.param))
            assert seen == (push.provider, push.prid, push.param), contacts


@hostile.cases(200)
@given(hostile.valid_pn(), hostile.case(64))
def test_a_real_register_is_accepted_with_feature_caps(
    pairs: list[tuple[str, str | None]], b: hostile.Bits
) -> None:
    contacts = [hostile.contact(pairs, b, shapes=("angle", "named"))]
    r = check(contacts)
    expires = registration.contact_expires(contacts[0], 600)
    if expires is not None and 0 < expires < 150:
        assert r.status == 423
    else:
        assert r.status == 200, r
        assert bool(r.extra_headers) == (expires != 0)


# ----- sipmsg -------------------------------------------------------------------------------


@hostile.cases(500)
@given(hostile.case(512))
def test_contacts_split_back_into_what_was_joined(b: hostile.Bits) -> None:
    pool = hostile.REAL_PN
    contacts = [hostile.contact(pool[b.take(len(pool))], b) for _ in range(1 + b.take(4))]
    assert sipmsg.split_header_values(", ".join(contacts)) == contacts
    for contact in contacts:
        assert sipmsg.contact_uri(contact).startswith("sip:alice@")


@hostile.cases(500)
@given(st.text(max_size=200) | hostile.mutations(st.just('"A" <sip:a@h;x=1>;expires=5;q=0.5')))
def test_any_header_value_splits_without_crashing(value: str) -> None:
    for part in sipmsg.split_header_values(value):
        assert part == part.strip()
        sipmsg.contact_uri(part)
        for name in sipmsg.contact_params(part):
            assert name == name.strip().lower() and name


def test_contact_params_of_a_huge_contact_take_linear_time() -> None:
    # Reached before digest auth (a REGISTER's Pushgate-Wake check reads +sip.instance):
    # a quadratic split of 30,000 ';' held a SIP worker for seconds per REGISTER.
    for contact in ("<sip:a@h>" + ";a" * 30_000, "<sip:a@h>" + ';"' * 30_000, ";" * 60_000):
        started = time.monotonic()
        sipmsg.contact_params(contact)
        wake_token.contact_instance(contact)
        assert time.monotonic() - started < 0.5
