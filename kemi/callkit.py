"""iOS CallKit: every VoIP push must be reported as a call, even a cancelled one.

A device pushed for a call that the caller cancelled before it woke is remembered for
PUSHGATE_CANCEL_GRACE seconds. When it re-registers in that window it gets an INVITE with the
call's Call-ID over its new flow, cancelled as soon as it rings, so the app can show
and end the call cleanly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import KSR

from kemi import held_calls
from kemi.settings import Settings, log
from pushgate import sipmsg, wake_token

# CSeq tm gives a request sent with uac_req_send outside any dialog.
UAC_CSEQ = 10
_REPLAY = "replay:"
# htable: "<aor>|<instance>" -> the call it was pushed for; "replay:<call-id>" -> R-URI.
CANCELLED = "pushgate_cancelled"
CANCEL_REASON = 'Reason: SIP;cause=487;text="Call cancelled"'


def remember_cancelled(settings: Settings, held: held_calls.Held, callid: str) -> None:
    call = json.dumps({"callid": callid, "caller": str(KSR.pv.get("$fu"))})
    for dest in held_calls.targets(held):
        if not dest.get("pushed"):
            continue  # never pushed for this call: nothing for CallKit to show
        key = wake_token.binding_key(held.aor, dest["instance"])
        KSR.htable.sht_setxs(CANCELLED, key, call, settings.cancel_grace)


def replay_cancelled_call(
    aor: str,
    contacts: list[str],
    flow: tuple[str, str] | None = None,
    instances: Sequence[tuple[str, str]] | None = None,
) -> None:
    """Called on a REGISTER from ``contacts``: INVITE the ones owed a cancelled call.

    ``flow``: (destination URI, local socket) of the device's flow, when the current
    message is not the REGISTER itself (edge mode: the upstream's 2xx to it).
    ``instances``: (Contact, +sip.instance) of those that have one, when already parsed
    (``RegisterCheck.instances``); otherwise ``contacts`` are parsed here.
    """
    if instances is None:
        parsed = ((c, wake_token.contact_instance(c)) for c in contacts)
        instances = [(c, i) for c, i in parsed if i]
    for contact, instance in instances:
        key = wake_token.binding_key(aor, instance)
        raw = KSR.htable.sht_get(CANCELLED, key)
        if raw is None:
            continue
        KSR.htable.sht_rm(CANCELLED, key)
        call = json.loads(str(raw))
        proto = str(KSR.pv.get("$pr"))
        ouri = f"sip:{KSR.pv.get('$si')}:{KSR.pv.get('$sp')};transport={proto}"
        sock = f"{proto}:{KSR.pv.get('$Ri')}:{KSR.pv.get('$Rp')}"
        if flow is not None:
            ouri, sock = flow
        KSR.pv.sets("$uac_req(method)", "INVITE")
        KSR.pv.sets("$uac_req(ruri)", sipmsg.contact_uri(contact))
        KSR.pv.sets("$uac_req(turi)", str(KSR.pv.get("$tu")))
        KSR.pv.sets("$uac_req(furi)", call["caller"])
        KSR.pv.sets("$uac_req(callid)", call["callid"])
        # Over the flow this REGISTER came on.
        KSR.pv.sets("$uac_req(ouri)", ouri)
        KSR.pv.sets("$uac_req(sock)", sock)
        KSR.pv.sets("$uac_req(hdrs)", "Max-Forwards: 70\r\n")
        # A CANCEL may only follow a provisional reply: cancel when it rings.
        ruri = sipmsg.contact_uri(contact)
        KSR.htable.sht_setxs(CANCELLED, _REPLAY + call["callid"], ruri, 32)
        if KSR.uac.uac_req_send() > 0:
            log("cancelled_call_replayed", aor=aor, callid=call["callid"])


def cancel_if_replayed(callid: str) -> None:
    """On a provisional reply to one of our replayed INVITEs: CANCEL it now.

    Built here rather than by tm: tm 5.6 leaves the Reason header out of CANCELs of
    locally generated INVITEs, and CallKit apps read it. The CANCEL copies the INVITE's
    Via (top Via of this reply), From, To, Call-ID and CSeq number, as RFC 3261 §9.1
    asks; tm's INVITE transaction then takes the 487 and ACKs it.
    """
    ruri = KSR.htable.sht_get(CANCELLED, _REPLAY + callid)
    if ruri is None:
        return
    KSR.htable.sht_rm(CANCELLED, _REPLAY + callid)
    to_uri = str(KSR.pv.get("$tu"))
    cancel = (
        f"CANCEL {ruri} SIP/2.0\r\n"
        f"Via: {KSR.pv.get('$hdr(Via)')}\r\n"
        f"From: {KSR.pv.get('$hdr(From)')}\r\n"
        f"To: <{to_uri}>\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {UAC_CSEQ} CANCEL\r\n"
        "Max-Forwards: 70\r\n"
        f"{CANCEL_REASON}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    proto = str(KSR.pv.get("$pr"))
    dest = f"sip:{KSR.pv.get('$si')}:{KSR.pv.get('$sp')};transport={proto}"
    if KSR.corex.send_data(dest, cancel) > 0:
        log("cancelled_call_cancel", callid=callid)
