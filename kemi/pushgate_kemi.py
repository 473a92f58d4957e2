"""Pushgate routing for Kamailio (app_python3 KEMI).

Request route, in order: reqinit -> cancel -> within-dialog -> REGISTER ->
local domain lookup (relay / push and hold / 480). Held INVITEs are resumed by
the wake-up REGISTER, failed by pushd's verdict, or answered 480 at the hold
deadline by tm's timer. See docs/architecture.md.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import KSR  # noqa: E402

from kemi import held_calls, ksr_bindings, metrics  # noqa: E402
from pushgate import registration, sipmsg, wake_token, wire  # noqa: E402
from pushgate.decision import Action, Binding, dead_targets, decide  # noqa: E402

# KEMI return codes.
OK = 1
# The placeholder secret in kamailio.cfg: never accepted.
DEFAULT_SECRET = "change-me"
# CSeq tm gives a request sent with uac_req_send outside any dialog.
UAC_CSEQ = 10


def _def(name: str, default: str) -> str:
    """A cfg #!define value (strings come back with their quotes)."""
    value = KSR.pv.get(f"$def({name})")
    return default if value is None else str(value).strip('"')


def _log(event: str, **fields: object) -> None:
    """One timeline line (grep 'pushgate:' in the log), counted in the metrics too."""
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    KSR.info(f"pushgate: t={time.time():.3f} event={event} {parts}\n")
    metrics.observe(event, fields)


def _reply_reason(code: int, reason: str, text: str) -> None:
    KSR.hdr.append_to_reply(f'Reason: SIP;cause={code};text="{text}"\r\n')
    KSR.tm.t_reply(code, reason)


def mod_init() -> Pushgate:
    return Pushgate()


class Pushgate:
    def __init__(self) -> None:
        self.hold_timeout = int(_def("HOLD_TIMEOUT", "30"))
        self.domain = _def("SIP_DOMAIN", "pushgate.test")
        self.secret = _def("PUSHD_SECRET", "")
        self.reg_auth = _def("REG_AUTH", "1") == "1"
        self.providers = frozenset(_def("PN_PROVIDERS", "apns,fcm").split(","))
        self.pn_min_expires = int(_def("PN_MIN_EXPIRES", "150"))
        self.notice_ttl = int(_def("NOTICE_TTL", "60"))
        self.cancel_grace = int(_def("CANCEL_GRACE", "30"))
        self.metrics_allow = frozenset(
            ip.strip() for ip in _def("METRICS_ALLOW", "127.0.0.1").split(",") if ip.strip()
        )
        self.msg_preview = _def("MSG_PREVIEW", "0") == "1"

    def child_init(self, rank: int) -> int:
        return 0

    # Per-process: destinations of dead flows for the request being relayed now
    # (branch routes run in the same process right after t_relay).
    dead: frozenset[str] = frozenset()

    # ----- request route: a table of contents -----
    def ksr_request_route(self, msg: object) -> int:
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
        if KSR.sanity.sanity_check(17895, 7) < 0:
            KSR.set_drop()
            return False
        return True

    def route_cancel(self) -> None:
        """A held INVITE has no branch for tm to cancel: end it ourselves (487)."""
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is not None and held_calls.claim(held):
            KSR.sl.sl_send_reply(200, "OK")
            _log("cancel_held", callid=callid, aor=held.aor)
            self.send_notices(held, "cancel")
            self.remember_cancelled(held, callid)
            held_calls.forget(held, callid)
            KSR.tmx.t_continue(held.index, held.label, "ksr_route_cancelled")
            return
        if held is not None:
            # Ringing with some devices still asleep: tell them too.
            self.send_notices(held, "cancel")
            held_calls.forget(held, callid)
        if KSR.tm.t_check_trans() > 0:
            KSR.tm.t_relay()

    def route_within_dialog(self) -> None:
        if not KSR.is_ACK():
            _log("in_dialog", method=KSR.pv.get("$rm"), callid=KSR.pv.get("$ci"))
        if KSR.rr.loose_route() > 0:
            if KSR.siputils.is_gruu() > 0 and KSR.pv.get("$rd") == self.domain:
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
        check = self.check_register()
        if check.status != 200:
            for header in check.extra_headers:
                KSR.hdr.append_to_reply(header + "\r\n")
            KSR.hdr.append_to_reply(sipmsg.warning(check.warning) + "\r\n")
            KSR.sl.sl_send_reply(check.status, check.reason)
            _log(
                "register_rejected",
                aor=self.to_aor(),
                status=check.status,
                why=check.warning.replace(" ", "_"),
            )
            return
        if self.reg_auth and not self.wake_token_ok():
            rc = KSR.auth_db.auth_check(self.domain, "subscriber", 1)
            if rc < 0:
                KSR.auth.auth_challenge(self.domain, 0)
                _log("register_challenged", aor=self.to_aor(), rc=rc)
                return
            KSR.auth.consume_credentials()
        # Requests to this phone go back over the flow it registered from (NAT, TCP).
        KSR.nathelper.fix_nated_register()
        aor = self.to_aor()
        for header in check.extra_headers:
            KSR.hdr.append_to_reply(header + "\r\n")
        if KSR.registrar.save("location", 0) < 0:
            KSR.sl.sl_reply_error()
            return
        _log(
            "register_in",
            aor=aor,
            src=f"{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}",
            proto=KSR.pv.get("$pr"),
        )
        if check.adds_binding:
            # Calls already ringing elsewhere get this device as a new branch (tsilo);
            # calls held with no branch at all are resumed.
            if KSR.htable.sht_get("ringing", aor) is not None:
                KSR.tsilo.ts_append_by_contact("location", aor)
            self.resume_held(aor)
            self.replay_cancelled_call(aor)
            KSR.msilo.mdump_uri(aor)

    def wake_token_ok(self) -> bool:
        """A valid one-time wake token (from our call push) stands in for digest auth."""
        token = str(KSR.pv.get(f"$hdr({wake_token.HEADER})") or "").strip()
        if not token:
            return False
        aor = self.to_aor()
        bound = KSR.htable.sht_get("waketok", token) if wake_token.looks_like_token(token) else None
        instances = {
            wake_token.contact_instance(c)
            for i in range(int(KSR.pv.get("$hdrc(Contact)") or 0))
            for c in sipmsg.split_header_values(str(KSR.hdr.get_idx("Contact", i) or ""))
        }
        ok = bound is not None and any(
            str(bound) == wake_token.binding_key(aor, inst) for inst in instances if inst
        )
        if bound is not None:
            KSR.htable.sht_rm("waketok", token)  # single use, even when misused
        _log("wake_token", aor=aor, accepted=ok)
        return ok

    def check_register(self) -> registration.RegisterCheck:
        contacts: list[str] = []
        for i in range(int(KSR.pv.get("$hdrc(Contact)") or 0)):
            contacts += sipmsg.split_header_values(str(KSR.hdr.get_idx("Contact", i) or ""))
        expires = KSR.pv.get("$hdr(Expires)")
        caps = str(KSR.pv.get("$hdr(Feature-Caps)") or "")
        return registration.check_register(
            contacts,
            expires_header=int(expires) if str(expires or "").strip().isdigit() else None,
            already_has_pns="sip.pns" in caps,
            served=self.providers,
            min_expires=self.pn_min_expires,
        )

    def to_aor(self) -> str:
        return sipmsg.aor_of(str(KSR.pv.get("$tU")), str(KSR.pv.get("$td")))

    def resume_held(self, aor: str) -> None:
        """Continue every INVITE held for ``aor``: the device that woke has a live flow now."""
        for held in held_calls.for_aor(aor):
            if held_calls.claim(held):
                _log("resume", aor=aor, tx=held.tx_key)
                KSR.tmx.t_continue(held.index, held.label, "ksr_route_resume")

    # ----- calls and other requests to local users -----
    def route_location(self) -> None:
        if KSR.is_MESSAGE() and self.from_message_store():
            KSR.pv.sets("$ru", str(KSR.pv.get("$tu")))  # msilo addresses the old Contact
        if KSR.pv.get("$rd") != self.domain and not KSR.is_myself_ruri():
            KSR.sl.sl_send_reply(403, "Relaying Forbidden")
            return
        aor = sipmsg.aor_of(str(KSR.pv.get("$rU")), self.domain)
        KSR.pv.sets("$rd", self.domain)
        if KSR.auth_db.is_subscriber(aor, "subscriber", 3) < 0:
            KSR.sl.sl_send_reply(404, "Not Found")
            return
        bindings = ksr_bindings.fetch(aor)
        decision = decide(bindings)
        callid = KSR.pv.get("$ci")
        _log(
            "request_in",
            method=KSR.pv.get("$rm"),
            aor=aor,
            callid=callid,
            action=decision.action.value,
            live=len(decision.relay),
            push=len(decision.push),
        )
        if KSR.is_MESSAGE():
            self.route_message(aor, bindings, decision.action is Action.RELAY, decision.push)
            return
        if decision.action is Action.UNAVAILABLE:
            KSR.tm.t_newtran()
            _reply_reason(480, "Temporarily Unavailable", decision.reason)
            return
        if decision.action is Action.RELAY or not KSR.is_INVITE():
            if not self.relay_to_bindings(bindings):
                KSR.sl.sl_reply_error()
                return
            if decision.push and KSR.is_INVITE():
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

    def ksr_branch_filter(self, msg: object) -> int:
        target = str(KSR.pv.get("$du") or KSR.pv.get("$ru") or "")
        if target in self.dead:
            KSR.set_drop()
        return OK

    def push_while_ringing(self, aor: str, targets: tuple[Binding, ...]) -> None:
        """Live devices ring now; sleeping ones get a push and join as branches when they wake."""
        held = self.current_held(aor)
        callid = str(KSR.pv.get("$ci"))
        pushes = [self.push_target(b) for b in targets]
        held_calls.remember(held, callid, pushes)
        self.store_ringing(aor)
        deadline = time.time() + self.hold_timeout
        for n, target in enumerate(pushes):
            self.send_push(held, n, target, "call", deadline, self.call_data(aor))

    def push_and_hold(self, aor: str, targets: tuple) -> None:  # type: ignore[type-arg]
        KSR.tm.t_newtran()
        if KSR.htable.sht_match_name("pushd", "sw", "c") <= 0:
            _log("push_unavailable", aor=aor, callid=KSR.pv.get("$ci"))
            _reply_reason(480, "Temporarily Unavailable", "Push service unavailable")
            return
        held = self.current_held(aor)
        callid = str(KSR.pv.get("$ci"))
        deadline = time.time() + self.hold_timeout
        # tm's own timer ends the hold: 408 into ksr_failure_held, which answers 480.
        KSR.tm.t_set_fr(self.hold_timeout * 1000, self.hold_timeout * 1000)
        KSR.tm.t_on_failure("ksr_failure_held")
        pushes = [self.push_target(b) for b in targets]
        held_calls.hold(held, callid, deadline, pushes)
        if KSR.tmx.t_suspend() < 0:
            held_calls.forget(held, callid)
            KSR.sl.sl_send_reply(500, "Server Error")
            return
        for n, target in enumerate(pushes):
            self.send_push(held, n, target, "call", deadline, self.call_data(aor))

    def current_held(self, aor: str) -> held_calls.Held:
        return held_calls.Held(
            aor=aor, index=int(KSR.pv.get("$T(id_index)")), label=int(KSR.pv.get("$T(id_label)"))
        )

    @staticmethod
    def push_target(b: Binding) -> dict[str, str]:
        assert b.push is not None
        return {
            "provider": b.push.raw_provider,
            "prid": b.push.prid,
            "param": b.push.param,
            "ruid": b.ruid,
            "instance": b.instance,
        }

    @staticmethod
    def call_data(aor: str) -> dict[str, str]:
        """Push payload of a call (our app contract; RFC 8599 leaves it open)."""
        return {
            "call_id": str(KSR.pv.get("$ci")),
            "caller": str(KSR.pv.get("$fu")),
            "caller_name": str(KSR.pv.get("$fn") or ""),
            "aor": aor,
        }

    def send_push(
        self,
        held: held_calls.Held,
        n: int,
        target: dict[str, str],
        kind: str,
        deadline: float,
        data: dict[str, str],
    ) -> None:
        hold_id = wire.HoldId(index=held.index, label=held.label, n=n)
        if kind == "call":
            token = wake_token.new_token()
            ttl = max(1, int(deadline - time.time()))
            key = wake_token.binding_key(held.aor, target["instance"])
            KSR.htable.sht_setxs("waketok", token, key, ttl)
            data = {**data, wake_token.PAYLOAD_KEY: token}
        message = wire.push_message(
            hold_id=hold_id,
            kind=kind,
            provider=target["provider"],
            prid=target["prid"],
            param=target["param"],
            aor=held.aor,
            ruid=target["ruid"],
            instance=target["instance"],
            deadline=deadline,
            data=data,
        )
        rc = KSR.evapi.relay_multicast(message, "pushd")
        _log("push_request", kind=kind, aor=held.aor, callid=data["call_id"], id=hold_id, rc=rc)

    def send_notices(self, held: held_calls.Held, kind: str, reason: str = "") -> None:
        """Tell pushed devices the call is over (cancelled / missed): alert pushes, not VoIP."""
        data = {
            "call_id": str(KSR.pv.get("$ci")),
            "caller": str(KSR.pv.get("$fu")),
            "aor": held.aor,
            "reason": reason or kind,
        }
        deadline = time.time() + self.notice_ttl
        # Devices that woke hear about it over SIP (CANCEL with Reason); only the ones
        # still asleep need a push.
        awake = {b.instance for b in ksr_bindings.fetch(held.aor) if b.alive}
        for n, target in enumerate(held_calls.targets(held)):
            if target["instance"] not in awake:
                self.send_push(held, n, target, kind, deadline, data)

    # ----- resumed / failed held transactions (failure-route context) -----
    def ksr_route_resume(self, msg: object) -> int:
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is not None:
            # No longer held, but its other pushed devices may still wake and join
            # (tsilo), and must hear when the call ends: keep them, drop the hold.
            targets = held_calls.targets(held)
            held_calls.forget(held, callid)
            held_calls.remember(held, callid, targets)
        KSR.tm.t_set_fr(120000, 30000)
        _log("invite_relayed", callid=callid)
        aor = sipmsg.aor_of(str(KSR.pv.get("$rU")), self.domain)
        if not self.relay_to_bindings(ksr_bindings.fetch(aor)):
            _reply_reason(480, "Temporarily Unavailable", "Device not registered")
            return OK
        self.store_ringing(aor)
        return OK

    @staticmethod
    def store_ringing(aor: str) -> None:
        """Let devices that wake later join this call as branches (tsilo)."""
        KSR.tsilo.ts_store()
        KSR.htable.sht_seti("ringing", aor, 1)

    def ksr_route_push_failed(self, msg: object) -> int:
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is not None:
            held_calls.forget(held, callid)
        _log("push_failed_reply", callid=callid)
        _reply_reason(480, "Temporarily Unavailable", "Push notification failed")
        return OK

    def ksr_route_cancelled(self, msg: object) -> int:
        KSR.tm.t_reply(487, "Request Terminated")
        return OK

    def ksr_failure_held(self, msg: object) -> int:
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is None or not held_calls.claim(held):
            return OK  # already resumed, cancelled or failed
        _log("hold_timeout", callid=callid)
        self.send_notices(held, "missed")
        held_calls.forget(held, callid)
        _reply_reason(480, "Temporarily Unavailable", "Device did not wake up")
        return OK

    def ksr_failure_call(self, msg: object) -> int:
        return OK

    # ----- MESSAGE (RFC 3428): deliver now, or store (msilo) and notify by push -----
    def route_message(
        self, aor: str, bindings: list[Binding], live: bool, asleep: tuple[Binding, ...]
    ) -> None:
        if self.from_message_store():
            # A stored message on its way out after a REGISTER: only a live flow will do;
            # otherwise msilo keeps it for the next REGISTER.
            if not live or not self.relay_to_bindings(bindings):
                KSR.sl.sl_send_reply(480, "Temporarily Unavailable")
            return
        # Stateful from here: retransmissions must not store the message twice.
        KSR.tm.t_newtran()
        if live and self.relay_to_bindings(bindings):
            KSR.tm.t_on_failure("ksr_failure_message")
            return
        self.store_message(aor, asleep)

    def remember_cancelled(self, held: held_calls.Held, callid: str) -> None:
        """A pushed iPhone that wakes after the CANCEL must still see the call, then its end."""
        call = json.dumps({"callid": callid, "caller": str(KSR.pv.get("$fu"))})
        for target in held_calls.targets(held):
            key = wake_token.binding_key(held.aor, target["instance"])
            KSR.htable.sht_setxs("cancelled", key, call, self.cancel_grace)

    def replay_cancelled_call(self, aor: str) -> None:
        """INVITE the device that just woke for the call it was pushed for, then CANCEL it
        at once with ``Reason: SIP;cause=487``, over the flow of this REGISTER."""
        for contact in self.register_contacts():
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
            KSR.pv.sets(
                "$uac_req(ouri)", f"sip:{KSR.pv.get('$si')}:{KSR.pv.get('$sp')};transport={proto}"
            )
            KSR.pv.sets("$uac_req(sock)", f"{proto}:{KSR.pv.get('$Ri')}:{KSR.pv.get('$Rp')}")
            KSR.pv.sets("$uac_req(hdrs)", "Max-Forwards: 70\r\n")
            # Cancelled as soon as it rings (tm only sends a CANCEL after a provisional).
            KSR.htable.sht_setxs("cancelled", "replay:" + call["callid"], "1", 32)
            if KSR.uac.uac_req_send() > 0:
                _log("cancelled_call_replayed", aor=aor, callid=call["callid"])

    def register_contacts(self) -> list[str]:
        contacts: list[str] = []
        for i in range(int(KSR.pv.get("$hdrc(Contact)") or 0)):
            contacts += sipmsg.split_header_values(str(KSR.hdr.get_idx("Contact", i) or ""))
        return [c for c in contacts if c.strip() != "*"]

    def from_message_store(self) -> bool:
        """Sent by msilo through our own socket (the marker header alone proves nothing)."""
        if KSR.hdr.is_present("X-Pushgate-Stored") < 0:
            return False
        return bool(KSR.is_myself(f"sip:{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}"))

    def store_message(self, aor: str, asleep: tuple[Binding, ...]) -> None:
        if KSR.msilo.mstore_uri(aor) < 0:
            KSR.tm.t_reply(500, "Could Not Store Message")
            return
        KSR.tm.t_reply(202, "Accepted")
        _log("message_stored", aor=aor, callid=KSR.pv.get("$ci"), pushed=len(asleep))
        data = {"call_id": str(KSR.pv.get("$ci")), "sender": str(KSR.pv.get("$fu")), "aor": aor}
        if self.msg_preview:
            body = str(KSR.pv.get("$rb") or "")
            data["preview"] = body[:80]
        held = held_calls.Held(aor=aor, index=0, label=0)
        deadline = time.time() + self.notice_ttl
        for n, b in enumerate(asleep):
            self.send_push(held, n, self.push_target(b), "message", deadline, data)

    def ksr_failure_message(self, msg: object) -> int:
        aor = sipmsg.aor_of(str(KSR.pv.get("$rU")), self.domain)
        asleep = tuple(b for b in ksr_bindings.fetch(aor) if not b.alive and b.push)
        self.store_message(aor, asleep)
        return OK

    # ----- replies -----
    def ksr_reply_route(self, msg: object) -> int:
        status = int(KSR.pv.get("$rs") or 0)
        if status < 200 and KSR.is_method_in("I"):
            callid = str(KSR.pv.get("$ci"))
            if KSR.htable.sht_get("cancelled", "replay:" + callid) is not None:
                KSR.htable.sht_rm("cancelled", "replay:" + callid)
                KSR.tmx.t_cancel_callid_reason(callid, str(UAC_CSEQ), 0, 487)
        return OK

    def ksr_reply_call(self, msg: object) -> int:
        status = int(KSR.pv.get("$rs") or 0)
        callid = str(KSR.pv.get("$ci"))
        _log("reply", status=status, method=KSR.pv.get("$rm"), callid=callid)
        if 200 <= status < 300 and KSR.is_method_in("I"):
            held = held_calls.for_callid(callid)
            if held is not None:
                # Answered: pushed devices that are still asleep get "answered elsewhere".
                self.send_notices(held, "cancel", reason="answered_elsewhere")
                held_calls.forget(held, callid)
        # In-dialog requests to the phone must follow its flow, not its Contact address.
        # A GRUU needs no alias: it is routed through usrloc to the current flow.
        contact = str(KSR.pv.get("$ct") or "")
        if KSR.pv.get("$pr") in ("tcp", "tls", "ws", "wss") and contact and ";gr" not in contact:
            KSR.nathelper.add_contact_alias()
        return OK

    def ksr_onsend_route(self, msg: object) -> int:
        return OK

    # ----- HTTP on the SIP TCP port: Prometheus metrics only -----
    def ksr_xhttp_event(self, msg: object, evname: str = "") -> int:
        allowed = str(KSR.pv.get("$si")) in self.metrics_allow
        if allowed and str(KSR.pv.get("$hu") or "").startswith("/metrics"):
            KSR.xhttp_prom.dispatch()
        else:
            KSR.xhttp.xhttp_reply(
                403 if not allowed else 404,
                "Forbidden" if not allowed else "Not Found",
                "text/plain",
                "",
            )
        return OK

    # ----- pushd channel (evapi) -----
    def ksr_evapi_event(self, msg: object, evname: str) -> int:
        conidx = str(KSR.pv.get("$evapi(conidx)"))
        if evname == "evapi:connection-closed":
            if KSR.htable.sht_get("pushd", "c" + conidx) is not None:
                KSR.htable.sht_rm("pushd", "c" + conidx)
                metrics.pushd_connected(KSR.htable.sht_match_name("pushd", "sw", "c") > 0)
                _log("pushd_disconnected", conidx=conidx)
            return OK
        if evname != "evapi:message-received":
            return OK
        text = str(KSR.pv.get("$evapi(msg)") or "")
        try:
            message = wire.parse_message(text)
            if message["type"] == "hello":
                self.on_hello(conidx, message)
            elif KSR.htable.sht_get("pushd", "c" + conidx) is None:
                KSR.err("pushgate: message from unauthenticated evapi client, closing\n")
                KSR.evapi.close()
            elif message["type"] == "result":
                self.on_result(wire.parse_result(message))
        except wire.WireError as exc:
            KSR.err(f"pushgate: bad message from pushd: {exc}\n")
        return OK

    def on_hello(self, conidx: str, message: dict) -> None:  # type: ignore[type-arg]
        given = str(message.get("secret", ""))
        if self.secret in ("", DEFAULT_SECRET):
            KSR.err(
                "pushgate: PUSHD_SECRET is not set (still the default): refusing pushd; "
                "define it in kamailio-local.cfg and in pushd's kamailio.secret\n"
            )
            KSR.evapi.close()
            return
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            KSR.err("pushgate: pushd hello with a wrong secret, closing\n")
            KSR.evapi.close()
            return
        KSR.evapi.set_tag("pushd")
        KSR.htable.sht_seti("pushd", "c" + conidx, 1)
        metrics.pushd_connected(True)
        KSR.evapi.relay_unicast(wire.control_message("welcome", version=wire.VERSION), "pushd")
        _log("pushd_connected", conidx=conidx, agent=message.get("agent", "?"))

    def on_result(self, result: wire.Result) -> None:
        hid = result.hold_id
        _log(
            "push_result",
            id=hid,
            verdict=result.verdict,
            status=result.status,
            reason=result.reason,
            ms=result.ms,
        )
        if result.verdict == "delete_token" and result.aor and result.ruid:
            KSR.registrar.unregister_ruid("location", result.aor, result.ruid)
            _log("binding_removed", aor=result.aor, ruid=result.ruid)
        if result.verdict == "delivered" or not held_calls.push_failed(hid.tx_key):
            return
        # Every push for this call failed for good: end it now rather than at the deadline.
        held = held_calls.Held(aor=result.aor, index=hid.index, label=hid.label)
        if held_calls.claim(held):
            KSR.tmx.t_continue(hid.index, hid.label, "ksr_route_push_failed")
