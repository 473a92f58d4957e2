"""Pushgate's all-in-one routing for Kamailio (app_python3 KEMI): the table of contents.

A complete, small SIP registrar and proxy for phones, written as any operator's KEMI
script would be: its own steps (reqinit, dialogs, digest auth, NAT, relay) plus
Pushgate's hooks from ``kemi.api`` at the points docs/integrate.md names. Request
route, in order: reqinit -> CANCEL -> within dialog -> REGISTER -> authentication of
requests from local users -> requests to local users. Methods named ``ksr_*`` are
called by Kamailio by name. What is authenticated and what is refused: docs/security.md.
"""

from __future__ import annotations

import traceback

import KSR

from kemi.api import PushgateRoutes, pushgate
from kemi.settings import define, log

# KEMI return code: continue / done.
OK = 1
# auth_check: "generic error" (among them: the subscriber table could not be read).
AUTH_ERROR = -1


def mod_init() -> Router:
    return Router()


class Router(PushgateRoutes):
    def __init__(self) -> None:
        self.domain = define("SIP_DOMAIN", "pushgate.test")
        self.reg_auth = define("REG_AUTH", "1") == "1"

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
        if KSR.is_KDMQ():
            pushgate.cluster_message()  # another node's (WITH_CLUSTER); else 403
            return OK
        if KSR.is_CANCEL():
            if not pushgate.cancel() and KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return OK
        if KSR.siputils.has_totag() > 0:
            self.route_within_dialog()
            return OK
        if KSR.tmx.t_precheck_trans() > 0:
            KSR.tm.t_check_trans()
            return OK
        if KSR.tm.t_check_trans() == 0:
            return OK  # a retransmission, absorbed by tm
        if pushgate.cluster_relay("ksr_onreply_route"):
            return OK  # another node's call to a phone whose flow is ours
        if KSR.is_REGISTER():
            self.route_register()
            return OK
        if KSR.is_OPTIONS() and KSR.corex.has_ruri_user() < 0:
            KSR.sl.sl_send_reply(200, "OK")
            return OK
        if self.reg_auth and not self.route_auth():
            return OK
        if KSR.is_INVITE():
            KSR.rr.record_route()
        self.ksr_route_location(None)
        return OK

    def route_reqinit(self) -> bool:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return False
        if KSR.sanity.sanity_check_defaults() < 0:
            KSR.set_drop()
            return False
        return True

    def route_within_dialog(self) -> None:
        if not KSR.is_ACK():
            log("in_dialog", method=KSR.pv.get("$rm"), callid=KSR.pv.get("$ci"))
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
        if self.reg_auth and not pushgate.trusted():
            rc = KSR.auth_db.auth_check(self.domain, "subscriber", 1)
            if rc == AUTH_ERROR and KSR.hdr.is_present("Authorization") > 0:
                # Credentials given but not checkable (database down): not "wrong password".
                KSR.hdr.append_to_reply("Retry-After: 10\r\n")
                KSR.sl.send_reply(503, "Service Unavailable")
                log("register_unverified", aor=f"sip:{KSR.pv.get('$tU')}@{self.domain}")
                return
            if rc < 0:
                KSR.auth.auth_challenge(self.domain, 0)
                log("register_challenged", aor=f"sip:{KSR.pv.get('$tU')}@{self.domain}", rc=rc)
                return
            KSR.auth.consume_credentials()
        if not pushgate.register():
            return
        # Requests to this phone go back over the flow it registered from (NAT, TCP).
        KSR.nathelper.fix_nated_register()
        pushgate.cluster_register()
        if KSR.registrar.save("location", 0) < 0:
            KSR.sl.sl_reply_error()
            return
        pushgate.registered()

    # ----- authentication of requests from local users -----
    def route_auth(self) -> bool:
        """A request whose From is one of our users must carry that user's credentials
        (proxy digest, 407), as route[AUTH] of Kamailio's default config does; anyone
        else may only reach local users (the location step answers 403 otherwise).
        False: answered (challenged, or 503 when the credentials cannot be checked)."""
        if pushgate.trusted():
            return True  # a stored MESSAGE msilo sends out of this Kamailio
        if str(KSR.pv.get("$fd") or "").lower() != self.domain.lower() and not (
            KSR.is_myself_furi()
        ):
            return True
        rc = KSR.auth_db.auth_check(self.domain, "subscriber", 1)
        method, caller = KSR.pv.get("$rm"), KSR.pv.get("$fu")
        if rc == AUTH_ERROR and KSR.hdr.is_present("Proxy-Authorization") > 0:
            KSR.hdr.append_to_reply("Retry-After: 10\r\n")
            KSR.sl.send_reply(503, "Service Unavailable")
            log("request_unverified", method=method, caller=caller)
            return False
        if rc < 0:
            # 407 + Proxy-Authenticate (auth_challenge: 401 only for REGISTER). With flag 1
            # the credentials' user must be the From user: bob cannot call as alice.
            KSR.auth.auth_challenge(self.domain, 0)
            log("request_challenged", method=method, caller=caller, rc=rc)
            return False
        KSR.auth.consume_credentials()
        return True

    # ----- requests to local users -----
    def ksr_route_location(self, msg: object) -> int:
        """Also the delivery of a woken INVITE (PushgateRoutes.pushgate_deliver)."""
        if KSR.pv.get("$rd") != self.domain and not KSR.is_myself_ruri():
            KSR.sl.send_reply(403, "Relaying Forbidden")
            return OK
        KSR.pv.sets("$rd", self.domain)
        # Bindings first (usrloc's memory): a registered device is reached even while the
        # database is down; only a user without any is looked up there.
        if pushgate.location():
            return OK
        if KSR.registrar.lookup("location") < 0:
            aor = f"sip:{KSR.pv.get('$rU')}@{self.domain}"
            KSR.tm.t_newtran()
            if KSR.auth_db.is_subscriber(aor, "subscriber", 3) < 0:
                KSR.sl.send_reply(404, "Not Found")
            else:
                KSR.sl.send_reply(480, "Temporarily Unavailable")
            return OK
        KSR.tm.t_on_branch("ksr_branch_route")
        KSR.tm.t_on_reply("ksr_onreply_route")
        if KSR.tm.t_relay() < 0 and not pushgate.relay_failed():
            KSR.sl.sl_reply_error()
        return OK

    # ----- routes Kamailio calls by name -----
    def ksr_branch_route(self, msg: object) -> int:
        if not pushgate.branch():
            KSR.set_drop()
        return OK

    def ksr_onreply_route(self, msg: object) -> int:
        # In-dialog requests to the phone must follow its flow, not its Contact address.
        # A GRUU needs no alias: it is routed through usrloc to the current flow.
        contact = str(KSR.pv.get("$ct") or "")
        if KSR.pv.get("$pr") in ("tcp", "tls", "ws", "wss") and contact and ";gr" not in contact:
            KSR.nathelper.add_contact_alias()
        return OK

    def ksr_reply_route(self, msg: object) -> int:
        pushgate.reply()
        return OK

    def ksr_onsend_route(self, msg: object) -> int:
        return OK
