"""RFC 8599 push parameters: parse and validate ``pn-*`` Contact URI params.

Also understands the Linphone/Flexisip variants seen in the field:
``pn-provider=apns.dev`` (sandbox), ``pn-param=<Team>.<bundle>.remote&voip`` and
``pn-prid=<tok>:remote&<tok>:voip``.

``pn-provider=webpush`` (RFC 8599 §12): pn-prid is the push subscription URI (RFC 8030),
pn-param "MUST NOT be used", and no message-encryption keys are defined, so a webpush
binding carries exactly a provider and a subscription URI.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

PROVIDERS = ("apns", "fcm", "webpush")
# Used with fullmatch: ``match`` with ``$`` would also accept one trailing newline.
_APNS_TOKEN = re.compile(r"^[0-9A-Fa-f]{16,200}$")
_FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-\.]{8,4096}$")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_FCM_ALPHABET = re.compile(r"[A-Za-z0-9_:\-\.]*")
_BUNDLE = re.compile(r"^[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+$")
_TEAM = re.compile(r"^[A-Z0-9]{10}$")
_FCM_PROJECT = re.compile(r"^[a-z][a-z0-9\-]{4,61}[a-z0-9]$")
MAX_WEBPUSH_URI = 1024
"""Longest subscription URI accepted (vendors' are ~150-500 characters)."""
# RFC 3986 characters, no white space, quotes or angle brackets: the URI goes into
# HTTP request lines and our logs as is.
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_SERVICE_SUFFIX = re.compile(r":(remote|voip)\Z")
"""A Linphone-style ``<token>:voip`` / ``<token>:remote`` item of pn-prid."""


class PnError(ValueError):
    """A pn-* parameter is malformed. ``param`` names it, for a SIP Warning."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class PushParams:
    """Validated push parameters of one binding."""

    provider: str
    """Normalised provider: ``apns`` or ``fcm``."""
    sandbox: bool
    """APNs sandbox requested by the UA (``apns.dev``); None-equivalent False for FCM."""
    prid: str
    """The raw pn-prid as registered."""
    param: str
    """The raw pn-param as registered."""
    raw_provider: str
    """pn-provider exactly as sent (``apns``, ``apns.dev``, ``fcm``)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Other pn-* params (pn-silent, pn-timeout, ...): kept, not interpreted."""

    @property
    def environment_pinned(self) -> bool:
        """The UA named the APNs environment (``apns.dev`` / ``apns.prod``), not just ``apns``."""
        return self.raw_provider.strip().lower() in ("apns.dev", "apns.sandbox", "apns.prod")

    def token_for(self, service: str) -> str:
        """Device token for ``voip`` (calls) or ``remote`` (alerts) out of a multi-token prid."""
        return select_token(self.prid, service)

    def apns_team(self) -> str:
        return self.param.split(".", 1)[0]

    def apns_bundle(self) -> str:
        """Bundle ID: pn-param after the Team ID, without the service suffix."""
        rest = self.param.split(".", 1)[1]
        for suffix in (".voip", ".remote&voip", ".voip&remote", ".remote"):
            if rest.endswith(suffix):
                return rest[: -len(suffix)]
        return rest

    def apns_topic(self, service: str) -> str:
        """``apns-topic`` for a VoIP push (``<bundle>.voip``) or an alert (``<bundle>``)."""
        bundle = self.apns_bundle()
        return f"{bundle}.voip" if service == "voip" else bundle


def uri_params(uri: str) -> dict[str, str]:
    """URI parameters of a SIP URI (``sip:u@h;a=b;c``), values percent-decoded, names lowercased.

    Stops at ``?`` (headers) and ignores anything after a ``>``. A ``pn-*`` parameter
    given twice (in any case) is a :class:`PnError`: which one counts would be up to
    each reader (we took the last, others the first), so neither is stored.
    """
    uri = uri.strip()
    if uri.startswith("<"):
        uri = uri[1:].split(">", 1)[0]
    uri = uri.split("?", 1)[0]
    out: dict[str, str] = {}
    for part in uri.split(";")[1:]:
        if not part:
            continue
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name in out and name.startswith("pn-"):
            raise PnError(name, "given twice")
        value = value.strip()
        out[name] = urllib.parse.unquote(value) if "%" in value else value
    return out


def select_token(prid: str, service: str) -> str:
    """The token for ``service`` out of ``<tok>:remote&<tok>:voip``; plain prids pass as is."""
    if "&" not in prid and not _SERVICE_SUFFIX.search(prid):
        return prid
    tokens: dict[str, str] = {}
    for item in prid.split("&"):
        tok, _, svc = item.rpartition(":")
        if not tok:
            tok, svc = svc, ""
        tokens[svc] = tok
    if service in tokens:
        return tokens[service]
    if "" in tokens:
        return tokens[""]
    # Ask for voip but only remote given (or the reverse): the only token is the best guess.
    return next(iter(tokens.values()))


def parse(params: dict[str, str]) -> PushParams | None:
    """Validate the pn-* params of a Contact. None when the binding carries no push params.

    Raises :class:`PnError` naming the offending parameter.
    """
    pn = {k: v for k, v in params.items() if k.startswith("pn-")}
    if not pn or ("pn-provider" not in pn and "pn-prid" not in pn):
        return None
    raw_provider = pn.get("pn-provider", "")
    provider, sandbox = normalise_provider(raw_provider)
    prid = pn.get("pn-prid", "")
    if not prid:
        raise PnError("pn-prid", "missing")
    param = pn.get("pn-param", "")
    if provider == "apns":
        _check_apns(prid, param)
    elif provider == "webpush":
        _check_webpush(prid, param)
    else:
        _check_fcm(prid, param)
    extra = {k: v for k, v in pn.items() if k not in ("pn-provider", "pn-prid", "pn-param")}
    return PushParams(
        provider=provider,
        sandbox=sandbox,
        prid=prid,
        param=param,
        raw_provider=raw_provider,
        extra=extra,
    )


def parse_uri(uri: str) -> PushParams | None:
    """:func:`parse` applied to a Contact URI string."""
    return parse(uri_params(uri))


def apns_has_regular_token(push: PushParams) -> bool:
    """Can this APNs binding take a background push (does it carry a non-PushKit token)?

    ``<tok>:remote&<tok>:voip`` prids name their tokens; an untagged token in a list counts
    as regular. A single plain token is what pn-param says: ``<Team>.<bundle>.voip`` (the
    RFC 8599 example) is a PushKit token, anything else a regular one.
    """
    tagged = re.compile(r":(remote|voip)$")
    items = push.prid.split("&")
    if len(items) > 1 or tagged.search(push.prid):
        return any(item.endswith(":remote") or not tagged.search(item) for item in items)
    return not push.param.endswith(".voip")


def refreshable_by_push(push: PushParams) -> bool:
    """Whether a binding refresh push (RFC 8599 §5.5) can reach the device: FCM always,
    APNs only with a regular token (a VoIP push must report a call; docs/refresh.md)."""
    return push.provider != "apns" or apns_has_regular_token(push)


def normalise_provider(raw: str) -> tuple[str, bool]:
    """``apns`` / ``apns.dev`` / ``fcm`` / ``webpush`` -> (provider, sandbox), else PnError.

    Exactly these names, in any case: ``apns%0D%0A`` (white space around it) is not
    ``apns``, since the value as sent goes on into pushd and our replies.
    """
    value = raw.lower()
    if value in ("apns", "apns.prod"):
        return "apns", False
    if value in ("apns.dev", "apns.sandbox"):
        return "apns", True
    if value in ("fcm", "webpush"):
        return value, False
    if not value.strip():
        raise PnError("pn-provider", "missing")
    raise PnError("pn-provider", f"unsupported provider {raw!r}")


def _check_apns(prid: str, param: str) -> None:
    for item in prid.split("&"):
        tok = item.rsplit(":", 1)[0] if _SERVICE_SUFFIX.search(item) else item
        if not _APNS_TOKEN.fullmatch(tok):
            if _HEX.fullmatch(tok):
                raise PnError(
                    "pn-prid", f"APNs device token must be 16-200 hex digits, not {len(tok)}"
                )
            raise PnError("pn-prid", "APNs device token must be hexadecimal")
    if not param:
        raise PnError("pn-param", "missing (APNs needs <TeamID>.<bundle>.voip)")
    team, dot, rest = param.partition(".")
    if not dot or not _TEAM.fullmatch(team):
        raise PnError("pn-param", "must start with a 10-character Team ID and a dot")
    bundle = rest
    for suffix in (".remote&voip", ".voip&remote", ".voip", ".remote"):
        if bundle.endswith(suffix):
            bundle = bundle[: -len(suffix)]
            break
    if not _BUNDLE.fullmatch(bundle):
        raise PnError("pn-param", f"invalid bundle ID {bundle!r}")


def _check_fcm(prid: str, param: str) -> None:
    if not _FCM_TOKEN.fullmatch(prid):
        if _FCM_ALPHABET.fullmatch(prid):
            raise PnError(
                "pn-prid", f"FCM registration token must be 8-4096 characters, not {len(prid)}"
            )
        raise PnError("pn-prid", "FCM registration token has invalid characters")
    if not param:
        raise PnError("pn-param", "missing (FCM needs the Firebase project ID)")
    if not _FCM_PROJECT.fullmatch(param):
        raise PnError("pn-param", f"invalid Firebase project ID {param!r}")


def _check_webpush(prid: str, param: str) -> None:
    """RFC 8599 §12: pn-prid is the push subscription URI; pn-param is not used."""
    if param:
        raise PnError("pn-param", "must not be used with pn-provider=webpush (RFC 8599 §12)")
    if len(prid) > MAX_WEBPUSH_URI:
        raise PnError("pn-prid", f"push subscription URI longer than {MAX_WEBPUSH_URI}")
    if not _URI_CHARS.fullmatch(prid):
        raise PnError("pn-prid", "push subscription URI has characters a URI cannot have")
    parts = urllib.parse.urlsplit(prid)
    if parts.scheme != "https" or not parts.hostname:
        raise PnError("pn-prid", "must be the https:// push subscription URI (RFC 8030)")
    if parts.username is not None or parts.password is not None:
        raise PnError("pn-prid", "push subscription URI must not carry user:password@")
    try:
        parts.port  # noqa: B018 -- raises on a port out of range
    except ValueError:
        raise PnError("pn-prid", "push subscription URI has a bad port") from None
    if parts.fragment or not parts.path.startswith("/") or parts.path == "/":
        raise PnError("pn-prid", "push subscription URI must have a path and no #fragment")
