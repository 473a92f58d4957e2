"""Pushgate routing for Kamailio (app_python3 KEMI): the table of contents.

Request route, in order: reqinit -> CANCEL -> within dialog -> REGISTER -> requests to
local users (relay / push and hold / 480; MESSAGE: deliver or store). Held INVITEs are
resumed by the wake-up REGISTER, failed by pushd's verdict, or answered 480 at the
hold deadline by tm's timer. Methods named ``ksr_*`` are called by Kamailio by name
(routes given to t_on_failure, t_continue, event callbacks). See docs/architecture.md.
"""

from __future__ import annotations

import os
import sys
import traceback

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import KSR  # noqa: E402

from kemi import (  # noqa: E402
    callkit,
    held_calls,
    ksr_bindings,
    messages,
    pushd_channel,
    pushing,
)
from kemi.settings import Settings, log, reply_reason  # noqa: E402
from pushgate import registration, sipmsg, wake_token  # noqa: E402
from pushgate.decision import Action, Binding, dead_targets, decide  # noqa: E402

# KEMI return code: continue / done.
OK = 1
# Default tm timers, restored on a resumed INVITE (the hold set its own).
FR_INV_TIMER_MS = 120000
FR_TIMER_MS = 30000


def mod_init() -> Pushgate:
    return Pushgate()


class Pushgate:
    # Per process: destinations of dead flows for the request being relayed now
    # (branch routes run in the same process right after t_relay).
    dead: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.settings = Settings.from_cfg()

    def child_init(self, rank: int) -> int:
        return 0

    # ----- request route -----
    def ksr_request_route(self, msg: object) -> int:
        try:
            return self.route_request()
        except Exception:
            # A bug must cost one request a clear 500, not a silent drop (and a caller
            # retransmitting into it).
            KSR.err(
                "pushgate: routing error: " + traceback.format_exc().replace("\n", " | ") + "\n"
            )
            if not KSR.is_ACK():
                KSR.sl.send_reply(500, "Server Internal Error")
            return OK

    def route_request(self) -> int:
        if not self.route_reqinit():
            return OK
        if KSR.is_CANCEL():
            self.route_cancel()
            return OK
        if KSR.siputils.has_totag() > 0:
            self.route_within_dialog()
            return OK
        if KSR.tmx.t_precheck_trans() > 0:
            KSR.tm.t_check_trans()
            return OK
        KSR.tm.t_check_trans()
        if KSR.is_REGISTER():
            self.route_register()
            return OK
        if KSR.is_OPTIONS() and KSR.corex.has_ruri_user() < 0:
            KSR.sl.sl_send_reply(200, "OK")
            return OK
        if KSR.is_INVITE():
            KSR.rr.record_route()
        self.route_location()
        return OK

    def route_reqinit(self) -> bool:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return False
        if KSR.sanity.sanity_check_defaults() < 0:
            KSR.set_drop()
            return False
        return True

    def route_cancel(self) -> None:
        """A held INVITE has no branch for tm to cancel: end it ourselves (487)."""
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is not None and held_calls.claim(held):
            KSR.sl.sl_send_reply(200, "OK")
            log("cancel_held", callid=callid, aor=held.aor)
            pushing.send_notices(self.settings, held, "cancel")
            callkit.remember_cancelled(self.settings, held, callid)
            held_calls.forget(held, callid)
            KSR.tmx.t_continue(held.index, held.label, "ksr_route_cancelled")
            return
        if held is not None:
            # Ringing, with some pushed devices still asleep: tell them too.
            pushing.send_notices(self.settings, held, "cancel")
            held_calls.forget(held, callid)
        if KSR.tm.t_check_trans() > 0:
            KSR.tm.t_relay()

    def route_within_dialog(self) -> None:
        if not KSR.is_ACK():
            log("in_dialog", method=KSR.pv.get("$rm"), callid=KSR.pv.get("$ci"))
        if KSR.rr.loose_route() > 0:
            if KSR.siputils.is_gruu() > 0 and KSR.pv.get("$rd") == self.settings.domain:
                # Addressed to a GRUU (RFC 5627): the device's current flow, via usrloc.
                if KSR.registrar.lookup("location") < 0:
                    KSR.sl.sl_send_reply(480, "Temporarily Unavailable")
                    return
            else:
                KSR.nathelper.handle_ruri_alias()
            KSR.tm.t_relay()
            return
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return
        KSR.sl.sl_send_reply(404, "Not here")

    # ----- REGISTER -----
    def route_register(self) -> None:
        contacts = register_contacts()
        check = self.check_register(contacts)
        if check.status != 200:
            for header in check.extra_headers:
                KSR.hdr.append_to_reply(header + "\r\n")
            KSR.hdr.append_to_reply(sipmsg.warning(check.warning) + "\r\n")
            KSR.sl.sl_send_reply(check.status, check.reason)
            log(
                "register_rejected",
                aor=to_aor(),
                status=check.status,
                why=check.warning.replace(" ", "_"),
            )
            return
        if self.settings.reg_auth and not wake_token_ok(contacts):
            rc = KSR.auth_db.auth_check(self.settings.domain, "subscriber", 1)
            if rc < 0:
                KSR.auth.auth_challenge(self.settings.domain, 0)
                log("register_challenged", aor=to_aor(), rc=rc)
                return
            KSR.auth.consume_credentials()
        # Requests to this phone go back over the flow it registered from (NAT, TCP).
        KSR.nathelper.fix_nated_register()
        aor = to_aor()
        for header in check.extra_headers:
            KSR.hdr.append_to_reply(header + "\r\n")
        if KSR.registrar.save("location", 0) < 0:
            KSR.sl.sl_reply_error()
            return
        log(
            "register_in",
            aor=aor,
            src=f"{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}",
            proto=KSR.pv.get("$pr"),
        )
        if check.adds_binding:
            self.device_is_awake(aor, contacts)

    def check_register(self, contacts: list[str]) -> registration.RegisterCheck:
        expires = str(KSR.pv.get("$hdr(Expires)") or "").strip()
        return registration.check_register(
            contacts,
            expires_header=int(expires) if expires.isascii() and expires.isdigit() else None,
            already_has_pns="sip.pns" in str(KSR.pv.get("$hdr(Feature-Caps)") or ""),
            served=self.settings.providers,
            min_expires=self.settings.pn_min_expires,
        )

    def device_is_awake(self, aor: str, contacts: list[str]) -> None:
        """A device (re)registered with a live flow: give it what waited for it."""
        # Calls already ringing elsewhere get it as a new branch (tsilo) ...
        if KSR.htable.sht_get("ringing", aor) is not None:
            KSR.tsilo.ts_append_by_contact("location", aor)
        # ... calls held with no branch at all are resumed ...
        for held in held_calls.for_aor(aor):
            if held_calls.claim(held):
                log("resume", aor=aor, tx=held.tx_key)
                KSR.tmx.t_continue(held.index, held.label, "ksr_route_resume")
        # ... a call cancelled while it slept is shown and ended (CallKit) ...
        callkit.replay_cancelled_call(aor, contacts)
        # ... and stored messages are delivered.
        KSR.msilo.mdump_uri(aor)

    # ----- requests to local users -----
    def route_location(self) -> None:
        if KSR.is_MESSAGE() and messages.from_message_store():
            KSR.pv.sets("$ru", str(KSR.pv.get("$tu")))  # msilo addresses the old Contact
        if KSR.pv.get("$rd") != self.settings.domain and not KSR.is_myself_ruri():
            KSR.sl.sl_send_reply(403, "Relaying Forbidden")
            return
        aor = sipmsg.aor_of(str(KSR.pv.get("$rU")), self.settings.domain)
        KSR.pv.sets("$rd", self.settings.domain)
        if KSR.auth_db.is_subscriber(aor, "subscriber", 3) < 0:
            KSR.sl.sl_send_reply(404, "Not Found")
            return
        bindings = ksr_bindings.fetch(aor)
        decision = decide(bindings)
        log(
            "request_in",
            method=KSR.pv.get("$rm"),
            aor=aor,
            callid=KSR.pv.get("$ci"),
            action=decision.action.value,
            live=len(decision.relay),
            push=len(decision.push),
        )
        if KSR.is_MESSAGE():
            messages.route(
                self.settings,
                aor,
                decision.action is Action.RELAY,
                decision.push,
                lambda: self.relay_to_bindings(bindings),
            )
            return
        if decision.action is Action.UNAVAILABLE:
            KSR.tm.t_newtran()
            reply_reason(480, "Temporarily Unavailable", decision.reason)
            return
        if decision.action is Action.RELAY or not KSR.is_INVITE():
            if not self.relay_to_bindings(bindings):
                KSR.sl.sl_reply_error()
            elif decision.push and KSR.is_INVITE():
                self.push_while_ringing(aor, decision.push)
            return
        self.push_and_hold(aor, decision.push)

    def relay_to_bindings(self, bindings: list[Binding]) -> bool:
        """lookup + t_relay, skipping branches whose flow is dead (they would only get 477)."""
        if KSR.registrar.lookup("location") < 0:
            return False
        self.dead = dead_targets(bindings)
        KSR.tm.t_on_branch("ksr_branch_filter")
        KSR.tm.t_on_failure("ksr_failure_call")
        KSR.tm.t_on_reply("ksr_reply_call")
        return bool(KSR.tm.t_relay() > 0)

    def push_while_ringing(self, aor: str, asleep: tuple[Binding, ...]) -> None:
        """Live devices ring now; sleeping ones get a push and join as branches if they wake."""
        held = current_held(aor)
        dests = [pushing.target(b) for b in asleep]
        held_calls.remember(held, str(KSR.pv.get("$ci")), dests)
        store_ringing(aor)
        pushing.send_calls(self.settings, held, dests)

    def push_and_hold(self, aor: str, asleep: tuple[Binding, ...]) -> None:
        KSR.tm.t_newtran()
        if not pushing.pushd_connected():
            log("push_unavailable", aor=aor, callid=KSR.pv.get("$ci"))
            reply_reason(480, "Temporarily Unavailable", "Push service unavailable")
            return
        held = current_held(aor)
        callid = str(KSR.pv.get("$ci"))
        hold_ms = self.settings.hold_timeout * 1000
        # tm's own timer ends the hold: 408 into ksr_failure_held, which answers 480.
        KSR.tm.t_set_fr(hold_ms, hold_ms)
        KSR.tm.t_on_failure("ksr_failure_held")
        dests = [pushing.target(b) for b in asleep]
        held_calls.hold(held, callid, self.settings.hold_timeout, dests)
        if KSR.tmx.t_suspend() < 0:
            held_calls.forget(held, callid)
            KSR.sl.sl_send_reply(500, "Server Error")
            return
        pushing.send_calls(self.settings, held, dests)

    # ----- routes Kamailio calls by name -----
    def ksr_branch_filter(self, msg: object) -> int:
        if str(KSR.pv.get("$du") or KSR.pv.get("$ru") or "") in self.dead:
            KSR.set_drop()
        return OK

    def ksr_route_resume(self, msg: object) -> int:
        """t_continue after the wake-up REGISTER (failure-route context)."""
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is not None:
            # No longer held, but its other pushed devices may still wake and join
            # (tsilo), and must hear when the call ends: keep them, drop the hold.
            dests = held_calls.targets(held)
            held_calls.forget(held, callid)
            held_calls.remember(held, callid, dests)
        KSR.tm.t_set_fr(FR_INV_TIMER_MS, FR_TIMER_MS)
        log("invite_relayed", callid=callid)
        aor = sipmsg.aor_of(str(KSR.pv.get("$rU")), self.settings.domain)
        if not self.relay_to_bindings(ksr_bindings.fetch(aor)):
            reply_reason(480, "Temporarily Unavailable", "Device not registered")
            return OK
        store_ringing(aor)
        return OK

    def ksr_route_push_failed(self, msg: object) -> int:
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is not None:
            held_calls.forget(held, callid)
        log("push_failed_reply", callid=callid)
        reply_reason(480, "Temporarily Unavailable", "Push notification failed")
        return OK

    def ksr_route_cancelled(self, msg: object) -> int:
        KSR.tm.t_reply(487, "Request Terminated")
        return OK

    def ksr_failure_held(self, msg: object) -> int:
        """tm's timer fired on a held INVITE: nobody woke in time."""
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is None or not held_calls.claim(held):
            return OK  # already resumed, cancelled or failed
        log("hold_timeout", callid=callid)
        pushing.send_notices(self.settings, held, "missed")
        held_calls.forget(held, callid)
        reply_reason(480, "Temporarily Unavailable", "Device did not wake up")
        return OK

    def ksr_failure_call(self, msg: object) -> int:
        return OK

    def ksr_failure_message(self, msg: object) -> int:
        """The live device did not take the MESSAGE: store it instead."""
        aor = sipmsg.aor_of(str(KSR.pv.get("$rU")), self.settings.domain)
        asleep = tuple(b for b in ksr_bindings.fetch(aor) if not b.alive and b.push)
        messages.store(self.settings, aor, asleep)
        return OK

    def ksr_reply_route(self, msg: object) -> int:
        if int(KSR.pv.get("$rs") or 0) < 200 and KSR.is_method_in("I"):
            callkit.cancel_if_replayed(str(KSR.pv.get("$ci")))
        return OK

    def ksr_reply_call(self, msg: object) -> int:
        status = int(KSR.pv.get("$rs") or 0)
        callid = str(KSR.pv.get("$ci"))
        log("reply", status=status, method=KSR.pv.get("$rm"), callid=callid)
        if 200 <= status < 300 and KSR.is_method_in("I"):
            held = held_calls.for_callid(callid)
            if held is not None:
                # Answered: pushed devices that are still asleep get "answered elsewhere".
                pushing.send_notices(self.settings, held, "cancel", reason="answered_elsewhere")
                held_calls.forget(held, callid)
        # In-dialog requests to the phone must follow its flow, not its Contact address.
        # A GRUU needs no alias: it is routed through usrloc to the current flow.
        contact = str(KSR.pv.get("$ct") or "")
        if KSR.pv.get("$pr") in ("tcp", "tls", "ws", "wss") and contact and ";gr" not in contact:
            KSR.nathelper.add_contact_alias()
        return OK

    def ksr_onsend_route(self, msg: object) -> int:
        return OK

    def ksr_xhttp_event(self, msg: object, evname: str = "") -> int:
        """HTTP on the SIP TCP port: Prometheus metrics only, for METRICS_ALLOW sources."""
        allowed = str(KSR.pv.get("$si")) in self.settings.metrics_allow
        if allowed and str(KSR.pv.get("$hu") or "").startswith("/metrics"):
            KSR.xhttp_prom.dispatch()
        elif allowed:
            KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "")
        else:
            KSR.xhttp.xhttp_reply(403, "Forbidden", "text/plain", "")
        return OK

    def ksr_evapi_event(self, msg: object, evname: str) -> int:
        try:
            pushd_channel.on_event(self.settings, evname)
        except Exception:
            KSR.err(
                "pushgate: pushd channel error: "
                + traceback.format_exc().replace("\n", " | ")
                + "\n"
            )
        return OK


# ----- small readers of the current message -----
def to_aor() -> str:
    return sipmsg.aor_of(str(KSR.pv.get("$tU")), str(KSR.pv.get("$td")))


def register_contacts() -> list[str]:
    contacts: list[str] = []
    for i in range(int(KSR.pv.get("$hdrc(Contact)") or 0)):
        contacts += sipmsg.split_header_values(str(KSR.hdr.get_idx("Contact", i) or ""))
    return contacts


def wake_token_ok(contacts: list[str]) -> bool:
    """A valid one-time wake token (from our call push) stands in for digest auth."""
    token = str(KSR.pv.get(f"$hdr({wake_token.HEADER})") or "").strip()
    if not token:
        return False
    aor = to_aor()
    bound = KSR.htable.sht_get("waketok", token) if wake_token.looks_like_token(token) else None
    # Every Contact saved on the token's say must be the device it was issued to.
    keys = {wake_token.binding_key(aor, wake_token.contact_instance(c)) for c in contacts}
    ok = bound is not None and keys == {str(bound)}
    if bound is not None:
        KSR.htable.sht_rm("waketok", token)  # single use, even when misused
    log("wake_token", aor=aor, accepted=ok)
    return ok


def current_held(aor: str) -> held_calls.Held:
    return held_calls.Held(
        aor=aor, index=int(KSR.pv.get("$T(id_index)")), label=int(KSR.pv.get("$T(id_label)"))
    )


def store_ringing(aor: str) -> None:
    """Let devices that wake later join this call as branches (tsilo)."""
    KSR.tsilo.ts_store()
    KSR.htable.sht_seti("ringing", aor, 1)
