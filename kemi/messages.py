"""MESSAGE (RFC 3428): deliver to a live flow, else store with msilo and notify by push."""

from __future__ import annotations

import time

import KSR

from kemi import pushing
from kemi.settings import Settings, log
from pushgate import wire
from pushgate.decision import Binding

# msilo adds this header to the messages it sends back out (pushgate.cfg extra_hdrs).
STORED_MARKER = "X-Pushgate-Stored"
PREVIEW_CHARS = 80
# htables: AoRs with messages in msilo's store; AoRs whose store was looked at since
# Kamailio started. A REGISTER queries the database only for the first or for those.
STORED = "pushgate_stored"
CHECKED = "pushgate_msgchecked"


def from_message_store() -> bool:
    """Sent by msilo through our own socket (the marker header alone proves nothing)."""
    if KSR.hdr.is_present(STORED_MARKER) < 0:
        return False
    return bool(KSR.is_myself(f"sip:{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}"))


def route(
    settings: Settings,
    aor: str,
    uri: str,
    *,
    live: bool,
    asleep: tuple[Binding, ...],
    failure_route: str,
) -> bool:
    """A MESSAGE to a registered AoR. False: the host relays it to the live device(s)."""
    if from_message_store():
        # A stored message on its way out after a REGISTER: only a live flow will do;
        # otherwise msilo keeps it for the next REGISTER.
        if live:
            KSR.tm.t_on_failure(failure_route)
            return False
        still_stored(settings, uri)
        KSR.sl.sl_send_reply(480, "Temporarily Unavailable")
        return True
    # Stateful from here: retransmissions must not store the message twice.
    KSR.tm.t_newtran()
    if live:
        KSR.tm.t_on_failure(failure_route)
        return False
    store(settings, aor, uri, asleep)
    return True


def store(settings: Settings, aor: str, uri: str, asleep: tuple[Binding, ...]) -> None:
    """Into msilo's store, and a push to each sleeping device (no call is held for it)."""
    if KSR.msilo.mstore_uri(uri) < 0:
        KSR.tm.t_reply(500, "Could Not Store Message")
        return
    still_stored(settings, uri)
    KSR.tm.t_reply(202, "Accepted")
    callid = str(KSR.pv.get("$ci"))
    log("message_stored", aor=aor, callid=callid, pushed=len(asleep))
    data = {"call_id": callid, "sender": str(KSR.pv.get("$fu")), "aor": uri}
    if settings.msg_preview:
        data["preview"] = str(KSR.pv.get("$rb") or "")[:PREVIEW_CHARS]
    deadline = time.time() + settings.notice_ttl
    for n, b in enumerate(asleep):
        push_id = wire.PushId(tx=None, n=n)
        pushing.send(aor, uri, push_id, pushing.target(b), wire.PushKind.MESSAGE, deadline, data)


def still_stored(settings: Settings, uri: str) -> None:
    """msilo holds messages for ``uri`` (stored now, or not taken on the way out)."""
    KSR.htable.sht_setxi(STORED, uri, 1, settings.msg_store_ttl)


def deliver_stored(uri: str) -> None:
    """On a REGISTER: msilo sends what it stored for the AoR (it deletes what is taken).

    Its database is queried only when something was stored for the AoR, or for the
    AoR's first REGISTER since Kamailio started: a REGISTER costs no query otherwise.
    """
    if KSR.htable.sht_get(STORED, uri) is None and KSR.htable.sht_get(CHECKED, uri) is not None:
        return
    KSR.htable.sht_rm(STORED, uri)
    KSR.htable.sht_seti(CHECKED, uri, 1)
    KSR.msilo.mdump_uri(uri)
