"""RFC 8599 registrar-side rules for a REGISTER carrying push params (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from pushgate import pn_params, sipmsg

# RFC 8599 §5.6.1.1: a proxy SHOULD give a +sip.pnsreg value bigger than 120.
PNSREG_SECONDS = 121


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
) -> RegisterCheck:
    """Validate push params, expiry and provider of every Contact of a REGISTER.

    ``served``: normalised providers we push for (``apns``, ``fcm``).
    ``already_has_pns``: a proxy before us added ``Feature-Caps: *;+sip.pns``: it handles
    pushes, we add nothing (RFC 8599 §5.6.1.1).
    """
    providers: list[str] = []
    pnsreg = False
    adds = False
    for contact in contacts:
        if contact.strip() == "*":
            continue
        # Each Contact's header parameters parsed once (a REGISTER's hottest Python).
        header_params = sipmsg.contact_params(contact)
        expires = _expires(header_params, expires_header)
        adds = adds or expires != 0
        uri = sipmsg.contact_uri(contact)
        params = pn_params.uri_params(uri)
        raw = params.get("pn-provider")
        if raw is not None and raw.strip().lower() not in {"", *_aliases(served)}:
            return RegisterCheck(
                status=555,
                reason="Push Notification Service Not Supported",
                warning=f"pn-provider: {raw!r} is not served here",
            )
        if raw is not None and "pn-prid" not in params:
            # Capability query (RFC 8599 §4.1.5): answer which push services we serve.
            providers.extend(sorted(served) if not raw.strip() else [raw.strip().lower()])
            continue
        try:
            push = pn_params.parse(params)
        except pn_params.PnError as exc:
            return RegisterCheck(status=400, reason="Bad Push Parameters", warning=str(exc))
        if push is None:
            continue
        if expires is not None and 0 < expires < min_expires:
            return RegisterCheck(
                status=423,
                reason="Interval Too Brief",
                extra_headers=(f"Min-Expires: {min_expires}",),
                warning=f"expires {expires}s is too short to push before expiry",
            )
        if expires != 0:
            providers.append(push.raw_provider.lower())
            pnsreg = pnsreg or "+sip.pnsreg" in header_params
    if already_has_pns or not providers:
        return RegisterCheck(providers=tuple(providers), adds_binding=adds)
    headers = []
    for provider in dict.fromkeys(p.split(".", 1)[0] for p in providers):
        caps = f'Feature-Caps: *;+sip.pns="{provider}"'
        if pnsreg:
            caps += f';+sip.pnsreg="{PNSREG_SECONDS}"'
        headers.append(caps)
    return RegisterCheck(
        extra_headers=tuple(headers), providers=tuple(providers), adds_binding=adds
    )


def _aliases(served: frozenset[str]) -> set[str]:
    out = set(served)
    if "apns" in served:
        out |= {"apns.dev", "apns.prod", "apns.sandbox"}
    return out
