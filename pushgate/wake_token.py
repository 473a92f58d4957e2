"""Fast wake-up: a one-time token in the call push lets the woken phone skip the digest
round trip on its wake-up REGISTER.

The token is random (144 bits), bound to the AoR and the device's +sip.instance, valid
until the hold deadline, and single use. The phone presents it in a
``Pushgate-Wake: <token>`` header of its REGISTER. Anything else (unknown, expired, used,
other AoR or instance) falls back to normal digest authentication.
"""

from __future__ import annotations

import secrets

from pushgate import sipmsg

HEADER = "Pushgate-Wake"
PAYLOAD_KEY = "wake_token"
SPENT = "spent:"
"""Key prefix of a used token's marker. Several nodes share the tokens (htable over
dmq): a copy of a token replayed late to a node (dmq retransmits to a node that
restarts) would bring a used token back; its marker, copied to every node and synced to
a starting one, keeps it used."""


def new_token() -> str:
    return secrets.token_urlsafe(18)


def binding_key(aor: str, instance: str) -> str:
    """What a token is bound to; instance in usrloc form (``<urn:uuid:...>``)."""
    return f"{aor}|{normalise_instance(instance)}"


def normalise_instance(instance: str) -> str:
    value = instance.strip().strip('"').strip()
    if value and not value.startswith("<"):
        value = f"<{value}>"
    return value


def contact_instance(contact: str) -> str:
    """The ``+sip.instance`` of one Contact header value, or ""."""
    return normalise_instance(sipmsg.contact_params(contact).get("+sip.instance", ""))


def looks_like_token(value: str) -> bool:
    return 16 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value)
