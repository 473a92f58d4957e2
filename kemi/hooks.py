"""Pushgate's hook points: the one implementation behind every way in.

A native kamailio.cfg calls them through pushgate.cfg's ``route(PUSHGATE_*)`` blocks
(``kemi/native.py``), a KEMI script through ``kemi.api.pushgate``, and our all-in-one
script is one such KEMI script. Each hook belongs to one step of the host's routing
(docs/integrate.md has the table); the host keeps its own authentication, ``lookup``,
relay, NAT handling and accounting.

Return values: ``True`` from ``cancel``, ``location`` and ``trusted`` means "Pushgate
took care of it"; ``False`` from ``register`` means "rejected, reply sent"; ``False``
from ``branch`` means "drop this branch". In every such case the host stops.
"""

from __future__ import annotations

import dataclasses
import json
import re
import traceback
from dataclasses import dataclass

import KSR

from kemi import (
    callkit,
    capacity,
    cluster,
    compat,
    edge,
    held_calls,
    ksr_bindings,
    messages,
    metrics,
    pushd_channel,
    pushing,
)
from kemi.host import Host, Route
from kemi.settings import Settings, define, log, reply_reason
from pushgate import edge as edge_plan
from pushgate import flood, flow_token, registration, setup_check, sipmsg, wake_token, wire
from pushgate.decision import Action, Binding, decide, woke_on

# Modules Pushgate calls (all in Debian's kamailio, -extra- and -python3-modules).
REQUIRED_MODULES = (
    "tm",
    "tmx",
    "sl",
    "pv",
    "hdr",
    "siputils",
    "registrar",
    "htable",
    "tcpops",
    "tsilo",
    "msilo",
    "uac",
    "evapi",
    "corex",
    "jsonrpcs",
)


LOOSE_ROUTE_PRELOADED = -3


class PushgateSetupError(RuntimeError):
    """Kamailio's configuration lacks something Pushgate needs; says what to change."""


def check_setup() -> None:
    """Fail Kamailio's start-up, naming the fix, rather than the first call."""
    kamailio = compat.detect()
    if not kamailio.tested:
        KSR.warn(f"pushgate: untested Kamailio {kamailio.release} (tested: 5.6, 6.0)\n")
    missing = tuple(m for m in REQUIRED_MODULES if not hasattr(KSR, m))
    facts = setup_check.KamailioFacts(missing_modules=missing)
    # jsonrpcs loaded by pushgate.cfg after a KEMI script's app_python3 is not initialised
    # yet when the script's mod_init runs (RPC from it would crash Kamailio).
    late_rpc = KSR.pv.get("$def(PUSHGATE_LOADS_JSONRPCS)") is not None and (
        KSR.pv.get("$def(PUSHGATE_KEMI)") is not None
    )
    if late_rpc:
        KSR.warn("pushgate: load jsonrpcs before app_python3 to get the start-up checks\n")
    if not missing and not late_rpc:
        sockets = rpc("core.sockets_list")
        facts = setup_check.KamailioFacts(
            tcp_error=rpc_error(rpc("core.tcp_info")),
            protos=frozenset(re.findall(r'"proto":\s*"(\w+)"', sockets)),
            usrloc_db_error=rpc_error(rpc("ul.db_users", "location")),
            memory_only_ok=KSR.pv.get("$def(PUSHGATE_USRLOC_MEMORY)") is not None,
        )
    if KSR.pv.get("$def(PUSHGATE_EDGE)") is not None:
        secret = define("PUSHGATE_EDGE_FLOW_SECRET", "")
        facts = dataclasses.replace(
            facts,
            edge_secret_missing=secret in ("", "change-me"),
            edge_missing_modules=tuple(m for m in ("rr", "path") if not hasattr(KSR, m)),
            edge_outbound_loaded=KSR.pv.get("$def(MOD_outbound)") is not None,
        )
    found = setup_check.problems(facts)
    for problem in found:
        KSR.err(f"pushgate: cannot start: {problem}\n")
    if found:
        raise PushgateSetupError("pushgate: " + "; ".join(found))


def rpc(method: str, *params: str) -> str:
    """Run a Kamailio RPC command in this process (jsonrpcs); its JSON answer."""
    request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
    KSR.jsonrpcs.exec(json.dumps(request))
    return str(KSR.pv.get("$jsonrpl(body)") or "")


def rpc_error(answer: str) -> str:
    try:
        error = json.loads(answer).get("error") or {}
    except (ValueError, AttributeError):
        return ""
    return str(error.get("message", "")) if isinstance(error, dict) else ""


@dataclass(frozen=True)
class _Relaying:
    """Dead flows of the request being relayed now (the branch route runs right after)."""

    request: tuple[str, str]
    dead: frozenset[str]


class Hooks:
    def __init__(self, settings: Settings, host: Host) -> None:
        self.settings = settings
        self.host = host
        # Per process: set by location(), read by branch() in the same process.
        self._relaying = _Relaying(("", ""), frozenset())
        # Per process: the Call-ID of the INVITE resume() is delivering right now.
        self._resuming = ""
        # Per process: register()'s Contacts and check, for registered() of the same REGISTER.
        self._register: tuple[tuple[str, str], registration.RegisterCheck, list[str]] | None = None
        # Edge mode: phones' flows are the edge's own, not usrloc's (kemi/edge.py).
        ksr_bindings.flow_override = edge.with_flow if settings.edge else None
        # Several nodes (WITH_CLUSTER, kemi/cluster.py); None: a single Kamailio.
        self.cluster = cluster.Cluster.from_cfg()
        ksr_bindings.cluster_node = self.cluster.node if self.cluster is not None else None
        self._flow_key = flow_token.key(settings.flow_secret) if settings.flow_secret else b""
        # Per process: the flow edge_route took from the current request's token.
        self._token_flow: tuple[tuple[str, str], flow_token.Flow | None] = (("", ""), None)

    # ----- request route: CANCEL -----
    def cancel(self) -> bool:
        """Before the host relays a CANCEL. True: it was for a held call and is answered."""
        callid = str(KSR.pv.get("$ci"))
        # One CANCEL of a call at a time: a retransmitted or duplicate one (a proxy may
        # send two) must find the call handled, not tell its devices twice.
        KSR.htable.sht_lock(held_calls.BY_CALLID, callid)
        try:
            return self._cancel(callid)
        finally:
            KSR.htable.sht_unlock(held_calls.BY_CALLID, callid)

    def _cancel(self, callid: str) -> bool:
        held = held_calls.for_callid(callid)
        if held is None:
            return False
        # Through an edge, the upstream cancels a branch that was answered elsewhere.
        elsewhere = sipmsg.answered_elsewhere(str(KSR.pv.get("$hdr(Reason)") or ""))
        reason = "answered_elsewhere" if elsewhere else ""
        if held_calls.claim(held.tx_key):
            KSR.sl.sl_send_reply(200, "OK")
            log("cancel_held", callid=callid, aor=held.aor)
            pushing.send_notices(self.settings, held, wire.PushKind.CANCEL, reason=reason)
            callkit.remember_cancelled(self.settings, held, callid)
            held_calls.forget(held, callid)
            self.host.continue_tx(held.index, held.label, Route.CANCELLED)
            return True
        # Ringing, with some pushed devices still asleep: tell them too; the host relays
        # the CANCEL to the ringing branches.
        pushing.send_notices(self.settings, held, wire.PushKind.CANCEL, reason=reason)
        held_calls.forget(held, callid)
        return False

    # ----- request route: authentication -----
    def trusted(self) -> bool:
        """True: Pushgate vouches for this request, skip digest authentication.

        A REGISTER with a valid one-time wake token from our call push, or a MESSAGE
        msilo sends back out of its store from this Kamailio.
        """
        if KSR.is_REGISTER():
            return wake_token_ok(register_contacts(), self.settings.hold_timeout)
        return bool(KSR.is_MESSAGE()) and messages.from_message_store()

    # ----- REGISTER -----
    def register(self) -> bool:
        """Before ``save()``: RFC 8599 checks. False: rejected with a reply (400/423/555)."""
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
            return False
        for header in check.extra_headers:
            KSR.hdr.append_to_reply(header + "\r\n")
        self._register = (current_request(), check, contacts)
        return True

    def check_register(self, contacts: list[str]) -> registration.RegisterCheck:
        expires = str(KSR.pv.get("$hdr(Expires)") or "").strip()
        return registration.check_register(
            contacts,
            expires_header=int(expires) if expires.isascii() and expires.isdigit() else None,
            already_has_pns="sip.pns" in str(KSR.pv.get("$hdr(Feature-Caps)") or ""),
            served=self.settings.providers,
            min_expires=self.settings.pn_min_expires,
            vapid_public_key=self.settings.vapid_public_key,
        )

    def registered(self) -> None:
        """After a successful ``save()``: give a device that woke what waited for it."""
        uri = to_aor()
        log(
            "register_in",
            aor=uri,
            src=f"{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}",
            proto=KSR.pv.get("$pr"),
        )
        if self._register is not None and self._register[0] == current_request():
            _, check, contacts = self._register
        else:
            contacts = register_contacts()
            check = self.check_register(contacts)
        self._register = None
        aor, bindings = ksr_bindings.fetch(uri, push=False)  # flows only
        conid = int(KSR.pv.get("$conid") or 0)
        if not aor or not woke_on(bindings, conid, check.adds_binding):
            return
        pushing.landed([b.ruid for b in bindings if b.alive])
        # Calls already ringing elsewhere get it as a new branch (tsilo) ...
        if KSR.htable.sht_get(pushing.RINGING, aor) is not None:
            rc = KSR.tsilo.ts_append_by_contact("location", uri)
            log("ringing_join", aor=aor, outcome=compat.detect().ts_append_outcome(rc).value)
        # ... calls held with no branch at all are resumed ...
        for tx_key in held_calls.held_for_aor(aor):
            if held_calls.claim(tx_key):
                index, label = (int(x) for x in tx_key.split(":"))
                log("resume", aor=aor, tx=tx_key)
                self.host.continue_tx(index, label, Route.RESUME)
        # ... a call cancelled while it slept is shown and ended (CallKit) ...
        callkit.replay_cancelled_call(aor, contacts, instances=check.instances)
        # ... and stored messages are delivered.
        messages.deliver_stored(uri)

    # ----- requests to local users -----
    def location(self) -> bool:
        """Before the host's ``lookup()``. True: held, stored or answered; the host stops.

        False: the host goes on with its own lookup and relay (live devices; users
        without push bindings, exactly as without Pushgate).
        """
        if KSR.is_MESSAGE() and messages.from_message_store():
            KSR.pv.sets("$ru", str(KSR.pv.get("$tu")))  # msilo addresses the old Contact
        uri = sipmsg.aor_of(str(KSR.pv.get("$rU")), str(KSR.pv.get("$rd")))
        aor, bindings = ksr_bindings.fetch(uri)
        resuming = self._resuming == str(KSR.pv.get("$ci"))
        self._resuming = ""
        decision = decide(bindings)
        self._relaying = _Relaying(current_request(), dead_push_targets(bindings))
        tx_made = False
        if decision.action is Action.RELAY and KSR.is_INVITE():
            through = self._through_peers(uri, decision.relay, resuming)
            if through is None:
                return True
            tx_made = through
        if resuming:
            # The woken device's INVITE on its way out (logged as invite_relayed).
            if decision.action is not Action.RELAY:
                reply_reason(480, "Temporarily Unavailable", "Device not registered")
                return True
            return False
        if not bindings:
            return False
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
            return messages.route(
                self.settings,
                aor,
                uri,
                live=decision.action is Action.RELAY,
                asleep=decision.push,
                failure_route=self.host.route_name(Route.MESSAGE_FAILED),
            )
        if not KSR.is_INVITE() or not decision.push:
            return False
        if decision.action is not Action.RELAY and capacity.short_of_shm(
            self.settings.shm_reserve, self.settings.wake_shm
        ):
            capacity.refuse(aor, "shm")
            return True
        # From here on the INVITE is stateful: pushes are bound to its transaction. A
        # retransmission of an INVITE already held is absorbed by tm: push nothing twice.
        created = 1 if tx_made else KSR.tm.t_newtran()
        if created == 0:
            return True
        if created < 0:  # no transaction: tm is out of shared memory
            capacity.refuse(aor, "no_transaction")
            return True
        held = current_held(aor, uri)
        plan = self.flood_plan(held, decision.push)
        if decision.action is Action.RELAY:
            self.push_while_ringing(held, tuple(b for b in decision.push if b.ruid in plan.push))
            return False
        self.hold_with_plan(held, decision.push, plan)
        return True

    def _through_peers(self, uri: str, relay: tuple[Binding, ...], resuming: bool) -> bool | None:
        """An INVITE relayed to flows other nodes own: if the owner says the flow is gone
        (430) or is itself down, the failure route holds it here and pushes.

        Whether it created the transaction; None: answered or absorbed here (a
        retransmission), the host stops."""
        if self.cluster is None or not any(b.remote for b in relay):
            return False
        created = False
        if not resuming:
            # The transaction before lookup(): its failure route (and a later resume)
            # must see the request as it came, addressed to the AoR.
            rc = KSR.tm.t_newtran()
            if rc == 0:
                return None
            if rc < 0:
                capacity.refuse(uri, "no_transaction")
                return None
            created = True
        KSR.pv.sets(cluster.HELD_AOR_AVP, uri)
        # A node that refuses the connection fails the relay at once: relay_failed()
        # holds the call then, instead of tm's 500.
        KSR.tm.t_set_disable_internal_reply(1)
        self.cluster.through_peers()
        KSR.tm.t_on_failure(self.host.route_name(Route.PEER_FAILED))
        return created

    def hold_with_plan(
        self, held: held_calls.Held, asleep: tuple[Binding, ...], plan: flood.Plan
    ) -> bool:
        """Hold the INVITE as ``plan`` says; False: answered at once (a flood limit)."""
        if plan.reject is not None:
            code, phrase, why = plan.reject
            log("push_limited", aor=held.aor, callid=KSR.pv.get("$ci"), status=code)
            reply_reason(code, phrase, why)
            return False
        if plan.coalesced:
            log(
                "push_coalesced",
                aor=held.aor,
                callid=KSR.pv.get("$ci"),
                devices=len(plan.coalesced),
            )
        pushed = tuple(b for b in asleep if b.ruid in plan.push)
        waiting = tuple(b for b in asleep if b.ruid in plan.coalesced)
        self.push_and_hold(held, pushed, waiting)
        return True

    def flood_plan(self, held: held_calls.Held, asleep: tuple[Binding, ...]) -> flood.Plan:
        ruids = [b.ruid for b in asleep]
        return flood.plan(
            ruids,
            held_for_aor=len(held_calls.held_for_aor(held.aor)),
            caller_recent=pushing.recent(f"c:{pushing.caller_key(held)}"),
            device_recent={b.ruid: pushing.recent(pushing.device_key(b)) for b in asleep},
            in_flight=pushing.in_flight(ruids),
            limits=self.settings.limits,
        )

    def push_while_ringing(self, held: held_calls.Held, asleep: tuple[Binding, ...]) -> None:
        """Live devices ring now; sleeping ones get a push and join as branches if they wake."""
        dests = [pushing.target(b) for b in asleep]
        held_calls.remember(held, str(KSR.pv.get("$ci")), dests)
        pushing.store_ringing(held.aor)
        pushing.send_calls(self.settings, held, dests)

    def push_and_hold(
        self,
        held: held_calls.Held,
        asleep: tuple[Binding, ...],
        waiting: tuple[Binding, ...] = (),
    ) -> None:
        """Hold the INVITE; push ``asleep``; also wait for ``waiting`` (their pushes for an
        earlier call are still in flight: the same wake-up releases this call too)."""
        if asleep and not pushing.pushd_connected():
            log("push_unavailable", aor=held.aor, callid=KSR.pv.get("$ci"))
            reply_reason(480, "Temporarily Unavailable", "Push service unavailable")
            return
        callid = str(KSR.pv.get("$ci"))
        hold_ms = self.settings.hold_timeout * 1000
        # tm's own timer ends the hold: 408 into the held-timeout route, which answers 480.
        KSR.tm.t_set_fr(hold_ms, hold_ms)
        KSR.tm.t_on_failure(self.host.route_name(Route.HELD_TIMEOUT))
        dests = [pushing.target(b) for b in asleep]
        # Pushed devices first: a push's number n is its place in this list.
        targets = dests + [pushing.target(b, pushed=False) for b in waiting]
        held_calls.hold(held, callid, self.settings.hold_timeout, targets)
        if KSR.tmx.t_suspend() < 0:
            held_calls.forget(held, callid)
            KSR.tm.t_reply(500, "Server Error")
            return
        pushing.send_calls(self.settings, held, dests)

    # ----- branch and reply routes -----
    def branch(self) -> bool:
        """In the host's branch route. False: this branch goes to a dead flow, drop it."""
        if self.cluster is not None and self.cluster.to_node():
            # Through the node that owns the phone's flow: the binding's flags (the host's
            # NAT flag) are that node's business. Kept, a host's NAT handling here would
            # alias the phone's Contact to that node and in-dialog requests would loop.
            KSR.pv.seti("$bf", 0)
        if self._relaying.request != current_request():
            return True
        return str(KSR.pv.get("$du") or KSR.pv.get("$ru") or "") not in self._relaying.dead

    def reply(self) -> None:
        """In the host's reply route (every reply): notices and the CallKit replay."""
        status = int(KSR.pv.get("$rs") or 0)
        if not KSR.is_method_in("I"):
            return
        callid = str(KSR.pv.get("$ci"))
        if status < 200:
            callkit.cancel_if_replayed(callid)
        held = held_calls.for_callid(callid)
        if held is None:
            return  # not a call Pushgate pushed for
        log("reply", status=status, method="INVITE", callid=callid)
        if 200 <= status < 300:
            # Answered: pushed devices still asleep get "answered elsewhere".
            pushing.send_notices(
                self.settings, held, wire.PushKind.CANCEL, reason="answered_elsewhere"
            )
            held_calls.forget(held, callid)

    # ----- routes tm runs for Pushgate -----
    def held_timeout(self) -> None:
        """tm's timer fired on a held INVITE: nobody woke in time."""
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is None or not held_calls.claim(held.tx_key):
            return  # already resumed, cancelled or failed
        log("hold_timeout", callid=callid)
        pushing.send_notices(self.settings, held, wire.PushKind.MISSED)
        held_calls.forget(held, callid)
        reply_reason(480, "Temporarily Unavailable", "Device did not wake up")

    def resume(self) -> None:
        """t_continue after the wake-up REGISTER (failure-route context): the host delivers
        the INVITE next, through its own location step (which calls ``location``)."""
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is not None:
            # No longer held, but its other pushed devices may still wake and join
            # (tsilo), and must hear when the call ends: keep them, drop the hold.
            dests = held_calls.targets(held)
            held_calls.forget(held, callid)
            held_calls.remember(held, callid, dests)
            pushing.store_ringing(held.aor)
        # The hold's timer and failure route must not outlive it: the host's relay
        # sets its own (tm keeps both across t_continue).
        KSR.tm.t_reset_fr()
        KSR.tm.t_on_failure("")
        self._resuming = callid
        log("invite_relayed", callid=callid)

    def cancelled(self) -> None:
        KSR.tm.t_reply(487, "Request Terminated")

    def push_failed(self) -> None:
        callid = str(KSR.pv.get("$ci"))
        held = held_calls.for_callid(callid)
        if held is not None:
            held_calls.forget(held, callid)
        log("push_failed_reply", callid=callid)
        reply_reason(480, "Temporarily Unavailable", "Push notification failed")

    def peer_failed(self) -> None:
        """Failure route of an INVITE relayed through the nodes owning its devices' flows:
        the flows are gone (430) or their node is down. This node holds the call and
        pushes (the other nodes never push for it); tm's reply goes out otherwise."""
        if cluster.Cluster.flow_failed():
            self._hold_after_peers(str(KSR.pv.get("$T_reply_code")))

    def relay_failed(self) -> bool:
        """After the host's ``t_relay`` failed at once. True: Pushgate took the call (a
        relay through a node that refused the connection, i.e. is down: held and pushed
        here); False: the host answers the error as usual."""
        if self.cluster is None or KSR.pv.get(cluster.HELD_AOR_AVP) is None:
            return False
        return self._hold_after_peers("send_failed")

    def _hold_after_peers(self, status: str) -> bool:
        uri = str(KSR.pv.get(cluster.HELD_AOR_AVP) or "")
        aor, bindings = ksr_bindings.fetch(uri)
        asleep = tuple(
            dataclasses.replace(b, alive=False)
            for b in bindings
            if b.push is not None and (b.remote or not b.alive)
        )
        log("peer_flow_failed", aor=aor, callid=KSR.pv.get("$ci"), status=status, push=len(asleep))
        if not asleep:
            return False
        held = current_held(aor, uri)
        # Held again after a resume that did not find the device (a dmq_usrloc update that
        # was not its wake-up): it was pushed already; wait for that push, and let a later
        # REGISTER resume the call rather than join it as a tsilo branch.
        KSR.htable.sht_rm(pushing.RINGING, aor)
        if KSR.pv.get(cluster.PUSHED_AVP) is not None:
            log("rehold", aor=aor, callid=KSR.pv.get("$ci"))
            self.push_and_hold(held, (), asleep)
            return True
        plan = self.flood_plan(held, asleep)
        if plan.push and plan.reject is None:
            KSR.pv.seti(cluster.PUSHED_AVP, 1)
        self.hold_with_plan(held, asleep, plan)
        return True

    # ----- several nodes (kemi/cluster.py) -----
    def cluster_message(self) -> None:
        """A KDMQ request (the all-in-one routing calls it first, for every KDMQ)."""
        if self.cluster is None or not self.cluster.from_node():
            KSR.sl.sl_send_reply(403, "Not a cluster node")
            return
        if self.settings.edge and KSR.pv.get("$rU") == edge_plan.HANDOFF_PEER:
            self.edge_handoff()
            return
        if KSR.pv.get("$rU") != "usrloc":
            KSR.dmq.handle_message()
            return
        for update in self.cluster.usrloc_update(lambda aor: bool(held_calls.held_for_aor(aor))):
            aor = update.aor
            # Registered on another node: a push this node sent for it has landed.
            if update.ruid:
                pushing.landed([update.ruid])
            for tx_key in held_calls.held_for_aor(aor):
                if held_calls.claim(tx_key):
                    index, label = (int(x) for x in tx_key.split(":"))
                    log("resume", aor=aor, tx=tx_key, via="dmq")
                    self.host.continue_tx(index, label, Route.RESUME)

    def from_node(self) -> bool:
        """A host's one hook for requests from other nodes, first thing after its
        transaction check: a KDMQ request, or a call relayed to a phone's flow here (its
        replies through Pushgate's own reply route). True: handled, stop. Nothing on a
        single Kamailio."""
        if self.cluster is None:
            return False
        if KSR.is_KDMQ():
            self.cluster_message()
            return True
        if KSR.siputils.has_totag() > 0:
            return False  # in-dialog: the host's own loose routing
        return self.cluster_relay(self.host.route_name(Route.PEER_REPLY))

    def cluster_register(self) -> None:
        """REGISTER, before ``save()``: this node's Path (no-op on a single node)."""
        if self.cluster is not None:
            self.cluster.add_path()

    def cluster_relay(self, on_reply: str) -> bool:
        """An initial request another node relays to a phone's flow here, first thing
        after the transaction check. True: handled (relayed, or 430)."""
        if self.cluster is None or not self.cluster.from_node():
            return False
        # Our Path is its only Route: loose_route takes it off and path's callback sets
        # $du to the flow (-3: "next hop from a preloaded route set").
        if KSR.rr.loose_route() not in (1, LOOSE_ROUTE_PRELOADED) or not KSR.pv.get("$du"):
            return False
        self.cluster.relay_to_flow(on_reply)
        return True

    def message_failed(self) -> None:
        """The live device did not take the MESSAGE: store it instead (one from msilo's
        store stays there, for the next REGISTER)."""
        uri = sipmsg.aor_of(str(KSR.pv.get("$rU")), str(KSR.pv.get("$rd")))
        if messages.from_message_store():
            messages.still_stored(self.settings, uri)
            return
        aor, bindings = ksr_bindings.fetch(uri)
        asleep = tuple(b for b in bindings if not b.alive and b.push)
        messages.store(self.settings, aor, uri, asleep)

    # ----- edge mode (edge.cfg, docs/edge.md): the upstream is the registrar -----
    def edge_register(self) -> bool:
        """A phone's REGISTER, before the edge relays it to the upstream registrar.

        False: refused here with a reply (400/423/555, as ``register``). Otherwise it
        gets a Path with its flow's token and goes on to the upstream, which
        authenticates it; its flow and Contacts travel with the transaction to the reply
        (``edge_registered``).
        """
        if not self.register():
            return False
        feature_caps = str(KSR.pv.get("$hdr(Feature-Caps)") or "")
        edge.stash_register(register_contacts(), edge.expires_header(), "sip.pns" in feature_caps)
        edge.add_path(edge.request_flow(), self._flow_key)
        log("edge_register_in", aor=to_aor(), callid=KSR.pv.get("$ci"), cseq=KSR.pv.get("$cs"))
        return True

    def edge_registered(self) -> None:
        """The upstream's 2xx to a REGISTER (onreply route): keep the bindings it granted in
        the edge's usrloc (``save()``), then give the device that woke what waited for it."""
        stash = edge.stashed()
        if stash is None:
            KSR.err("pushgate: edge_registered: no edge_register before the relay\n")
            return
        aor_uri = to_aor()
        reply_contacts = register_contacts()
        log(
            "register_in",
            aor=aor_uri,
            src=stash.flow.uri,
            proto=stash.flow.proto,
            callid=KSR.pv.get("$ci"),
            cseq=KSR.pv.get("$cs"),
        )
        saved = edge.save_granted(aor_uri, stash, reply_contacts, ksr_bindings.fetch)
        if saved is None:
            log("edge_save_failed", aor=aor_uri)
            return
        aor, kept = saved.aor, saved.kept
        check = registration.check_register(
            stash.contacts,
            expires_header=stash.expires,
            already_has_pns=stash.has_pns,
            served=self.settings.providers,
            min_expires=self.settings.pn_min_expires,
            vapid_public_key=self.settings.vapid_public_key,
        )
        if "sip.pns" not in str(KSR.pv.get("$hdr(Feature-Caps)") or ""):
            for header in check.extra_headers:
                KSR.hdr.append(header + "\r\n")
        registered = {edge_plan.contact_key(sipmsg.contact_uri(c)) for c in stash.contacts}
        woken = [b for b in kept if edge_plan.contact_key(b.uri) in registered]
        for b in woken:
            if b.push is not None:
                granted = edge_plan.granted_expires(reply_contacts, b.uri, edge.expires_header())
                g = edge_plan.grant(edge.asked_expires(stash, b.uri), granted or 0, b.push)
                log(
                    "edge_binding",
                    aor=aor,
                    asked=g.asked,
                    granted=g.granted,
                    capped=g.capped,
                    refreshable=g.refreshable,
                )
        pushing.landed([b.ruid for b in woken])
        if not check.adds_binding or not woken:
            return
        if self.cluster is not None:
            # Several edges: a call may be held on the edge the device slept behind, and
            # the upstream may still send calls there (the old Path): tell them all.
            for b in saved.new_flow:
                if b.push is not None:
                    self._announce(aor, b, stash.flow)
        # Calls held for this device (the upstream sent one branch per device) resume
        # over its new flow: edge_location delivers them.
        for tx_key in held_calls.held_for_aor(aor):
            index, label = (int(x) for x in tx_key.split(":"))
            targets = held_calls.targets(held_calls.Held(aor, aor_uri, index, label))
            if any(edge_plan.woken_by(targets, b) for b in woken) and held_calls.claim(tx_key):
                log("resume", aor=aor, tx=tx_key)
                self.host.continue_tx(index, label, Route.RESUME)
        callkit.replay_cancelled_call(aor, stash.contacts, (stash.flow.uri, stash.flow.socket))

    def edge_route(self) -> bool:
        """A request from the upstream (to a phone): its top Route must be this edge's,
        with a flow token that verifies. False: it is not (absent, forged, tampered):
        403, nothing goes to any phone. True: our Route is consumed (``loose_route``) and
        ``$du``/``$fs`` are the token's flow."""
        flow = edge.route_token_flow(self._flow_key)
        if flow is None or flow == edge.request_flow():
            # (A phone cannot pass its own token off as the upstream's request.)
            log("flow_token_refused", method=KSR.pv.get("$rm"), callid=KSR.pv.get("$ci"))
            if not KSR.is_ACK():
                KSR.sl.sl_send_reply(403, "Forbidden")
            return False
        KSR.rr.loose_route()
        if KSR.siputils.has_totag() > 0:
            edge.send_over(flow)
        else:
            # edge_location decides: the phone's flow (no new connection), or another edge.
            edge.aim_at(flow)
        self._token_flow = (current_request(), flow)
        return True

    def edge_location(self) -> bool:
        """An initial request from the upstream to a phone, after ``edge_route``; also the
        delivery of a woken INVITE.

        True: held or answered, the host stops. False: the host relays it; ``$du`` and
        ``$fs`` are the device's current flow, and an INVITE is record-routed with that
        flow's token (the host must not ``record_route()`` it again).
        """
        callid = str(KSR.pv.get("$ci"))
        resuming = self._resuming == callid
        self._resuming = ""
        if resuming:
            return self._edge_deliver_woken(callid)
        request, flow = self._token_flow
        if request != current_request() or flow is None:
            KSR.err("pushgate: edge_location without edge_route before it\n")
            KSR.sl.sl_send_reply(403, "Forbidden")
            return True
        found = edge.device_of_flow(flow) or self._edge_device_by_contact()
        bindings: list[Binding] = []
        aor = ""
        if found is not None:
            aor, device = found
            _, all_bindings = ksr_bindings.fetch(sip_uri(aor))
            bindings = [b for b in all_bindings if edge_plan.device_of(b) == device]
        decision = decide(bindings)
        handoff = None
        if self.cluster is not None and bindings and decision.action is Action.PUSH:
            # Asleep here, but registered on another edge since: its flow is there.
            handoff = edge.moved(aor, edge_plan.device_of(bindings[0]))
        log(
            "request_in",
            method=KSR.pv.get("$rm"),
            aor=aor or "-",
            callid=callid,
            action=("other_edge" if handoff else decision.action.value if bindings else "unknown"),
            live=len(decision.relay),
            push=len(decision.push),
        )
        if handoff is not None:
            edge.send_through(handoff)
            return False
        if decision.action is Action.RELAY:
            record = edge.current(aor, edge_plan.device_of(decision.relay[0]))
            if record is not None:
                edge.send_over(record.flow, ruri=decision.relay[0].uri)
                edge.record_route(record.flow, self._flow_key)
                return False
        if decision.action is Action.PUSH and KSR.is_OPTIONS():
            # A registrar's keep-alive (Asterisk's qualify) to a phone asleep with push:
            # reachable, by push. Relayed, it would fail and the binding be marked down.
            KSR.sl.sl_send_reply(200, "OK")
            return True
        if decision.action is not Action.PUSH or not KSR.is_INVITE():
            # Not a push binding of ours: over the token's flow, as any edge proxy would.
            edge.send_over(flow)
            edge.record_route(flow, self._flow_key)
            return False
        if KSR.tm.t_newtran() == 0:
            return True  # a retransmission, absorbed by tm: push nothing twice
        held = current_held(aor, sip_uri(aor))
        plan = self.flood_plan(held, decision.push)
        if not self.hold_with_plan(held, decision.push, plan):
            return True
        if held_calls.for_callid(callid) is not None:
            # The upstream may CANCEL this branch (answered elsewhere) only after a 1xx;
            # sent once the push is on its way, so a CANCEL comes after it.
            KSR.tm.t_reply(100, "Trying")
        return True

    def _edge_device_by_contact(self) -> tuple[str, str] | None:
        """No flow record (the edge restarted): the binding whose Contact is the R-URI."""
        key, bindings = ksr_bindings.fetch(to_aor())
        ruri = str(KSR.pv.get("$ru"))
        for b in bindings:
            if b.uri == ruri:
                return key, edge_plan.device_of(b)
        return None

    def _edge_deliver_woken(self, callid: str) -> bool:
        held = held_calls.for_callid(callid)
        if held is not None:
            targets = held_calls.targets(held)
            key, bindings = ksr_bindings.fetch(held.uri)
            for b in bindings:
                record = edge.current(key, edge_plan.device_of(b))
                if b.alive and record is not None and edge_plan.woken_by(targets, b):
                    edge.send_over(record.flow, ruri=b.uri)
                    edge.record_route(record.flow, self._flow_key)
                    return False
            handoff = edge.handed_over(held.tx_key)
            if handoff is not None:
                log("edge_handoff_deliver", callid=callid, route=handoff.next_hop)
                edge.send_through(handoff)
                return False
        reply_reason(480, "Temporarily Unavailable", "Device not registered")
        return True

    # ----- several edges (WITH_CLUSTER in edge.cfg) -----
    def _announce(self, aor: str, binding: Binding, flow: flow_token.Flow) -> None:
        assert self.cluster is not None and binding.push is not None
        token = flow_token.encode(flow, self._flow_key)
        handoff = edge_plan.Handoff(
            aor=aor,
            device=edge_plan.device_of(binding),
            instance=binding.instance,
            prid=binding.push.prid,
            contact=binding.uri,
            route=edge_plan.handoff_route(token, self.cluster.node.hostport),
        )
        edge.announce(handoff)
        log("edge_handoff_sent", aor=aor)

    def edge_handoff(self) -> None:
        """Another edge's KDMQ: a device registered there over a new flow. Calls held here
        for it go there; later calls through its old Path here follow it."""
        try:
            handoff = edge_plan.Handoff.from_json(str(KSR.pv.get("$rb") or ""))
        except edge_plan.HandoffError as exc:
            KSR.sl.sl_send_reply(400, f"Bad handoff: {exc}")
            return
        KSR.sl.sl_send_reply(200, "OK")
        edge.remember_moved(handoff)
        _, bindings = ksr_bindings.fetch(sip_uri(handoff.aor))
        # Its push from here has landed, on another edge.
        pushing.landed([b.ruid for b in bindings if edge_plan.device_of(b) == handoff.device])
        for tx_key in held_calls.held_for_aor(handoff.aor):
            index, label = (int(x) for x in tx_key.split(":"))
            targets = held_calls.targets(
                held_calls.Held(handoff.aor, sip_uri(handoff.aor), index, label)
            )
            if edge_plan.waits_for(targets, handoff.instance, handoff.prid) and (
                held_calls.claim(tx_key)
            ):
                edge.hand_over(tx_key, handoff)
                log("resume", aor=handoff.aor, tx=tx_key, via="edge")
                self.host.continue_tx(index, label, Route.RESUME)

    def edge_outgoing(self) -> None:
        """A phone's own initial request, relayed to the upstream: record-routed with the
        token of the flow it came over, so the dialog's requests come back over it."""
        edge.record_route(edge.request_flow(), self._flow_key)

    # ----- HTTP on the SIP port (xhttp) -----
    def http(self) -> None:
        """An HTTP request (KEMI xhttp callback): WebSocket handshake, else metrics."""
        upgrade = str(KSR.pv.get("$hdr(Upgrade)") or "").lower()
        # SIP over WebSocket (RFC 7118) from here on: a browser softphone's flow.
        if (
            hasattr(KSR, "websocket")
            and KSR.pv.get("$rm") == "GET"
            and "websocket" in upgrade
            and "upgrade" in str(KSR.pv.get("$hdr(Connection)") or "").lower()
            and KSR.websocket.handle_handshake() > 0
        ):
            return
        if metrics.ENABLED:
            self.metrics()
        else:
            KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "")

    def metrics(self) -> None:
        """GET /metrics: Prometheus metrics (xhttp_prom) for PUSHGATE_METRICS_ALLOW sources."""
        if str(KSR.pv.get("$si")) not in self.settings.metrics_allow:
            KSR.xhttp.xhttp_reply(403, "Forbidden", "text/plain", "")
        elif str(KSR.pv.get("$hu") or "").startswith("/metrics"):
            KSR.xhttp_prom.dispatch()
        else:
            KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "")

    # ----- the pushd channel (evapi events) -----
    def evapi(self, evname: str) -> None:
        pushd_channel.on_event(self.settings, self.host, evname)

    def ack_timer(self) -> None:
        """rtimer, every 0.1 s: pushes a hung pushd did not ack go to another."""
        pushing.ack_timer()


def log_error(where: str) -> None:
    KSR.err(f"pushgate: {where}: " + traceback.format_exc().replace("\n", " | ") + "\n")


# ----- small readers of the current message -----
def current_request() -> tuple[str, str]:
    return str(KSR.pv.get("$ci")), str(KSR.pv.get("$cs"))


def to_aor() -> str:
    return sipmsg.aor_of(str(KSR.pv.get("$tU")), str(KSR.pv.get("$td")))


def sip_uri(aor: str) -> str:
    """usrloc's key of an AoR (``alice@example.com``) as a SIP URI."""
    return aor if aor.startswith("sip") else "sip:" + aor


def register_contacts() -> list[str]:
    contacts: list[str] = []
    for i in range(int(KSR.pv.get("$hdrc(Contact)") or 0)):
        contacts += sipmsg.split_header_values(str(KSR.hdr.get_idx("Contact", i) or ""))
    return contacts


def dead_push_targets(bindings: list[Binding]) -> frozenset[str]:
    """Destinations of push bindings whose flow is dead: Pushgate pushes them instead."""
    return frozenset(b.target or b.uri for b in bindings if not b.alive and b.push is not None)


def wake_token_ok(contacts: list[str], lifetime: int) -> bool:
    """A valid one-time wake token (from our call push, living at most ``lifetime`` s)
    stands in for digest auth."""
    token = str(KSR.pv.get(f"$hdr({wake_token.HEADER})") or "").strip()
    if not token:
        return False
    aor, _ = ksr_bindings.fetch(to_aor())
    bound = pushing.wake_token_holder(token) if wake_token.looks_like_token(token) else None
    # Every Contact saved on the token's say must be the device it was issued to.
    keys = {wake_token.binding_key(aor, wake_token.contact_instance(c)) for c in contacts}
    ok = bound is not None and bool(aor) and keys == {bound}
    if bound is not None:
        pushing.spend_wake_token(token, lifetime)  # single use, even when misused
    log("wake_token", aor=aor, accepted=ok)
    return ok


def current_held(aor: str, uri: str) -> held_calls.Held:
    return held_calls.Held(
        aor=aor,
        uri=uri,
        index=int(KSR.pv.get("$T(id_index)")),
        label=int(KSR.pv.get("$T(id_label)")),
    )
