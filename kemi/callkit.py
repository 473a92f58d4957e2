"""iOS CallKit: every VoIP push must be reported as a call, even a cancelled one.

A device pushed for a call that the caller cancelled before it woke is remembered for
CANCEL_GRACE seconds. When it re-registers in that window it gets an INVITE with the
call's Call-ID over its new flow, cancelled as soon as it rings, so the app can show
and end the call cleanly.
"""

from __future__ import annotations

import json

import KSR

from kemi import held_calls
from kemi.settings import Settings, log
from pushgate import sipmsg, wake_token

# CSeq tm gives a request sent with uac_req_send outside any dialog.
UAC_CSEQ = 10
_REPLAY = "replay:"


def remember_cancelled(settings: Settings, held: held_calls.Held, callid: str) -> None:
    call = json.dumps({"callid": callid, "caller": str(KSR.pv.get("$fu"))})
    for dest in held_calls.targets(held):
        key = wake_token.binding_key(held.aor, dest["instance"])
        KSR.htable.sht_setxs("cancelled", key, call, settings.cancel_grace)


def replay_cancelled_call(aor: str, contacts: list[str]) -> None:
    """Called on a REGISTER from ``contacts``: INVITE the ones owed a cancelled call."""
    for contact in contacts:
        instance = wake_token.contact_instance(contact)
        key = wake_token.binding_key(aor, instance)
        raw = KSR.htable.sht_get("cancelled", key) if instance else None
        if raw is None:
            continue
        KSR.htable.sht_rm("cancelled", key)
        call = json.loads(str(raw))
        proto = str(KSR.pv.get("$pr"))
        KSR.pv.sets("$uac_req(method)", "INVITE")
        KSR.pv.sets("$uac_req(ruri)", sipmsg.contact_uri(contact))
        KSR.pv.sets("$uac_req(turi)", aor)
        KSR.pv.sets("$uac_req(furi)", call["caller"])
        KSR.pv.sets("$uac_req(callid)", call["callid"])
        # Over the flow this REGISTER came on.
        KSR.pv.sets(
            "$uac_req(ouri)", f"sip:{KSR.pv.get('$si')}:{KSR.pv.get('$sp')};transport={proto}"
        )
        KSR.pv.sets("$uac_req(sock)", f"{proto}:{KSR.pv.get('$Ri')}:{KSR.pv.get('$Rp')}")
        KSR.pv.sets("$uac_req(hdrs)", "Max-Forwards: 70\r\n")
        # tm sends a CANCEL only after a provisional reply: cancel when it rings.
        KSR.htable.sht_setxs("cancelled", _REPLAY + call["callid"], "1", 32)
        if KSR.uac.uac_req_send() > 0:
            log("cancelled_call_replayed", aor=aor, callid=call["callid"])


def cancel_if_replayed(callid: str) -> None:
    """On a provisional reply to one of our replayed INVITEs: CANCEL it now."""
    if KSR.htable.sht_get("cancelled", _REPLAY + callid) is not None:
        KSR.htable.sht_rm("cancelled", _REPLAY + callid)
        KSR.tmx.t_cancel_callid_reason(callid, str(UAC_CSEQ), 0, 487)
