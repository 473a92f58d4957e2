"""Small SIP text helpers the KEMI script needs (pure, standard library only)."""

from __future__ import annotations

import re


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas in quotes and ``<...>``."""
    if "," not in value:  # one value (a phone's Contact): no need to scan it
        value = value.strip()
        return [value] if value else []
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
    """The URI of one Contact value (``"Bob" <sip:b@h;x>;expires=5`` -> ``sip:b@h;x``).

    Without angle brackets everything after the first ``;`` belongs to the header, not
    the URI (RFC 3261 §20.10): ``sip:b@h;expires=0`` is ``sip:b@h`` plus a header param.
    """
    return _split_contact(contact)[0]


def contact_params(contact: str) -> dict[str, str]:
    """The header parameters of one Contact value, names lower-cased, quotes kept.

    ``<sip:b@h;transport=tcp>;expires=0;+sip.instance="<urn:uuid:1>"`` and
    ``sip:b@h;expires=0`` both give ``expires`` -> ``0``; a URI parameter inside ``<...>``
    is never a header parameter. A parameter without a value maps to "".
    """
    return contact_parts(contact)[1]


def contact_parts(contact: str) -> tuple[str, dict[str, str]]:
    """``(contact_uri(contact), contact_params(contact))``, the Contact split once."""
    uri, tail = _split_contact(contact)
    params: dict[str, str] = {}
    for part in _split_params(tail):
        name, _, value = part.partition("=")
        if name.strip():
            params.setdefault(name.strip().lower(), value.strip())
    return uri, params


def _split_params(text: str) -> list[str]:
    """Split at every ``;`` outside a quoted string (``\\`` escapes inside quotes).

    This runs on every REGISTER (and before digest authentication: a wake token is checked
    against the Contacts' +sip.instance), on Contacts of up to a whole SIP message. A
    phone's Contact quotes its +sip.instance and escapes nothing: split at the quotes, then
    at the ``;`` between them, with str methods; only text with a backslash takes the
    loop per character.
    """
    if '"' not in text:
        return text.split(";")
    if "\\" in text:
        return _split_params_escaped(text)
    out: list[str] = []
    current = ""
    pieces = text.split('"')
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        if i % 2:  # inside quotes (unterminated when it is the last piece)
            current += '"' + piece + ('"' if i < last else "")
            continue
        parts = piece.split(";")
        current += parts[0]
        if len(parts) > 1:
            out.append(current)
            out.extend(parts[1:-1])
            current = parts[-1]
    out.append(current)
    return out


def _split_params_escaped(text: str) -> list[str]:
    out: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _split_contact(contact: str) -> tuple[str, str]:
    """(URI, header parameters after it without the leading ``;``)."""
    contact = contact.strip()
    rest = contact
    if rest.startswith('"'):  # a quoted display name may hold ';' and '<'
        end = re.search(r'(?<!\\)"', rest[1:])
        rest = rest[end.end() + 1 :] if end else ""
    lt, semi = rest.find("<"), rest.find(";")
    if lt != -1 and (semi == -1 or lt < semi):
        uri, _, tail = rest[lt + 1 :].partition(">")
        return uri.strip(), tail.strip().lstrip(";")
    if not contact.lower().startswith(("sip:", "sips:")):
        return contact, ""
    uri, _, tail = contact.partition(";")
    return uri.strip(), tail


def aor_of(user: str, domain: str) -> str:
    return f"sip:{user}@{domain}"


def warning(text: str) -> str:
    """A Warning header (RFC 3261 §20.43) with code 399 (miscellaneous).

    One line whatever ``text`` holds: control characters become ``?``, a backslash is
    escaped (a quoted-pair: ``'apns\\r\\n'`` reads as sent), ``"`` becomes ``'``.
    """
    clean = "".join("?" if c < " " or c == "\x7f" else c for c in text)
    clean = clean.replace("\\", "\\\\").replace('"', "'")
    return f'Warning: 399 pushgate "{clean}"'


_ANSWERED = re.compile(r"\bSIP\s*;(?:[^,]*;)?\s*cause\s*=\s*200\b", re.IGNORECASE)


def answered_elsewhere(reason: str) -> bool:
    """A CANCEL's Reason header (RFC 3326) says the call was answered on another branch
    (``SIP;cause=200``, as Kamailio's tm and most proxies send it)."""
    return bool(_ANSWERED.search(reason))
