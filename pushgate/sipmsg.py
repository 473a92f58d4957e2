"""Small SIP text helpers the KEMI script needs (pure, standard library only)."""

from __future__ import annotations

import re

_PARAM_SPLIT = re.compile(r";(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)")


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas in quotes and ``<...>``."""
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and ch == ",":
            out.append(value[start:i].strip())
            start = i + 1
    tail = value[start:].strip()
    if tail:
        out.append(tail)
    return out


def contact_uri(contact: str) -> str:
    """The URI of one Contact value (``"Bob" <sip:b@h;x>;expires=5`` -> ``sip:b@h;x``)."""
    contact = contact.strip()
    if "<" in contact:
        return contact.split("<", 1)[1].split(">", 1)[0].strip()
    return _PARAM_SPLIT.split(contact, 1)[0].strip() if contact.startswith("sip") else contact


def aor_of(user: str, domain: str) -> str:
    return f"sip:{user}@{domain}"


def warning(text: str) -> str:
    """A Warning header (RFC 3261 §20.43) with code 399 (miscellaneous)."""
    clean = text.replace("\\", "").replace('"', "'")
    return f'Warning: 399 pushgate "{clean}"'


_ANSWERED = re.compile(r"\bSIP\s*;(?:[^,]*;)?\s*cause\s*=\s*200\b", re.IGNORECASE)


def answered_elsewhere(reason: str) -> bool:
    """A CANCEL's Reason header (RFC 3326) says the call was answered on another branch
    (``SIP;cause=200``, as Kamailio's tm and most proxies send it)."""
    return bool(_ANSWERED.search(reason))
