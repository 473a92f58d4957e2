"""RFC 8599 registrar-side rules for a REGISTER carrying push params (pure)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pushgate import pn_params, sipmsg, wake_token

# RFC 8599 §5.6.1.1: a proxy SHOULD give a +sip.pnsreg value bigger than 120.
PNSREG_SECONDS = 121
MAX_CONTACT_URI = 512
"""Bytes of a Contact URI Kamailio's registrar stores (its contact_max_size default): a
longer push binding would fail in save() with a bare 400; refused naming the pn param."""


@dataclass(frozen=True, kw_only=True)
class RegisterCheck:
    """Outcome of checking a REGISTER's Contacts: an error reply, or what to add to the 2xx."""

    status: int = 200
    reason: str = ""
    warning: str = ""
    extra_headers: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    adds_binding: bool = False
    """At least one Contact is added or refreshed (not ``*``, not expires=0)."""
    instances: tuple[tuple[str, str], ...] = ()
    """(Contact, its ``+sip.instance`` in usrloc form) of each Contact that has one, as
    parsed here: what runs after ``save()`` need not parse the Contacts again."""


def contact_expires(contact: str, expires_header: int | None) -> int | None:
    """Requested expiry of one Contact value: its ``expires`` param, else the Expires header."""
    return _expires(sipmsg.contact_params(contact), expires_header)


def _expires(params: dict[str, str], expires_header: int | None) -> int | None:
    value = params.get("expires", "")
    # isascii too: "²" is a digit to isdigit() but not to int().
    if value.isascii() and value.isdigit():
        return int(value)
    return expires_header


def has_contact_param(contact: str, name: str) -> bool:
    return name.lower() in sipmsg.contact_params(contact)


def check_register(
    contacts: list[str],
    *,
    expires_header: int | None,
    already_has_pns: bool,
    served: frozenset[str],
    min_expires: int,
    vapid_public_key: str = "",
) -> RegisterCheck:
    """Validate push params, expiry and provider of every Contact of a REGISTER.

    ``served``: normalised providers we push for (``apns``, ``fcm``).
    ``already_has_pns``: a proxy before us added ``Feature-Caps: *;+sip.pns``: it handles
    pushes, we add nothing (RFC 8599 §5.6.1.1).
    ``vapid_public_key``: our VAPID key (RFC 8292, base64url), advertised to webpush
    bindings as ``+sip.vapid`` in the same Feature-Caps as ``+sip.pns`` (RFC 8599 §8.3).
    """
    providers: list[str] = []
    pnsreg = False
    adds = False
    devices: dict[str, pn_params.PushParams] = {}
    instances: list[tuple[str, str]] = []
    for contact in contacts:
        if contact.strip() == "*":
            continue
        # Each Contact's header parameters parsed once (a REGISTER's hottest Python).
        uri, header_params = sipmsg.contact_parts(contact)
        instance = wake_token.normalise_instance(header_params.get("+sip.instance", ""))
        if instance:
            instances.append((contact, instance))
        expires = _expires(header_params, expires_header)
        adds = adds or expires != 0
        try:
            params = pn_params.uri_params(uri)
        except pn_params.PnError as exc:
            return _bad(str(exc))
        raw = params.get("pn-provider")
        if raw is not None and raw.strip().lower() not in _accepted_providers(served):
            return RegisterCheck(
                status=555,
                reason="Push Notification Service Not Supported",
                warning=f"pn-provider: {raw!r} is not served here",
            )
        if raw is not None and "pn-prid" not in params:
            # Capability query (RFC 8599 §4.1.5): answer which push services we serve.
            if not raw.strip():
                providers.extend(sorted(served))
                continue
            try:
                providers.append(pn_params.normalise_provider(raw)[0])
            except pn_params.PnError as exc:
                return _bad(str(exc))
            continue
        try:
            push = pn_params.parse(params)
        except pn_params.PnError as exc:
            return _bad(str(exc))
        if push is None:
            continue
        if len(uri.encode("utf-8", "surrogatepass")) > MAX_CONTACT_URI:
            longest = max(("pn-prid", "pn-param"), key=lambda n: len(params.get(n, "")))
            return _bad(
                f"{longest}: too long, the Contact URI must stay under {MAX_CONTACT_URI} bytes"
            )
        if expires is not None and 0 < expires < min_expires:
            return RegisterCheck(
                status=423,
                reason="Interval Too Brief",
                extra_headers=(f"Min-Expires: {min_expires}",),
                warning=f"expires {expires}s is too short to push before expiry",
            )
        if expires != 0:
            if instance:
                # One device, one app, one set of push params: which of two would we push?
                clash = _difference(devices.setdefault(instance, push), push)
                if clash:
                    return _bad(f"{clash}: differs between two Contacts of one +sip.instance")
            providers.append(push.provider)
            pnsreg = pnsreg or "+sip.pnsreg" in header_params
    if already_has_pns or not providers:
        return RegisterCheck(
            providers=tuple(providers), adds_binding=adds, instances=tuple(instances)
        )
    headers = []
    # Normalised names only (apns, fcm): never a value as the phone sent it.
    for provider in dict.fromkeys(providers):
        caps = f'Feature-Caps: *;+sip.pns="{provider}"'
        if provider == "webpush" and vapid_public_key:
            caps += f';+sip.vapid="{vapid_public_key}"'
        if pnsreg:
            caps += f';+sip.pnsreg="{PNSREG_SECONDS}"'
        headers.append(caps)
    return RegisterCheck(
        extra_headers=tuple(headers),
        providers=tuple(providers),
        adds_binding=adds,
        instances=tuple(instances),
    )


def _bad(warning: str) -> RegisterCheck:
    return RegisterCheck(status=400, reason="Bad Push Parameters", warning=warning)


def _difference(first: pn_params.PushParams, other: pn_params.PushParams) -> str:
    """The pn param that differs between two bindings of one device, or ""."""
    if (first.provider, first.sandbox) != (other.provider, other.sandbox):
        return "pn-provider"
    if first.prid != other.prid:
        return "pn-prid"
    if first.param != other.param:
        return "pn-param"
    return ""


@functools.lru_cache(maxsize=8)
def _accepted_providers(served: frozenset[str]) -> frozenset[str]:
    """pn-provider values (lower-cased) a Contact may carry: served ones, their aliases, ""."""
    out = {"", *served}
    if "apns" in served:
        out |= {"apns.dev", "apns.prod", "apns.sandbox"}
    return frozenset(out)
