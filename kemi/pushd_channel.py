"""pushd's side of evapi: authenticate connections, act on push verdicts."""

from __future__ import annotations

import hmac

import KSR

from kemi import held_calls, metrics, pushing
from kemi.host import Host, Route
from kemi.settings import Settings, log
from pushgate import wire

# The placeholder secret in kamailio.cfg: never accepted.
DEFAULT_SECRET = "change-me"


def on_event(settings: Settings, host: Host, evname: str) -> None:
    conidx = str(KSR.pv.get("$evapi(conidx)"))
    if evname == "evapi:connection-closed":
        if KSR.htable.sht_get(pushing.PUSHD, "c" + conidx) is not None:
            for key in ("c", "a", "s"):
                KSR.htable.sht_rm(pushing.PUSHD, key + conidx)
            pushing.set_state(conidx, live=False, connected=False)
            metrics.pushd_connected(pushing.pushd_connected())
            log("pushd_disconnected", conidx=conidx)
            # Its unanswered pushes go to another pushd now (or to the next to connect).
            moved = pushing.take_over_from(conidx)
            if moved:
                log("push_resent", count=moved)
        return
    if evname != "evapi:message-received":
        return
    try:
        message = wire.decode(str(KSR.pv.get("$evapi(msg)") or ""))
        if message["type"] == wire.MessageType.HELLO:
            on_hello(settings, conidx, wire.parse_hello(message))
        elif KSR.htable.sht_get(pushing.PUSHD, "c" + conidx) is None:
            KSR.err("pushgate: message from unauthenticated evapi client, closing\n")
            KSR.evapi.close()
        elif message["type"] == wire.MessageType.ACK:
            on_ack(conidx, wire.parse_ack(message))
        elif message["type"] == wire.MessageType.RESULT:
            alive(conidx)
            on_result(host, conidx, wire.parse_result(message))
    except wire.WireError as exc:
        KSR.err(f"pushgate: bad message on the pushd channel: {exc}\n")
        if KSR.htable.sht_get(pushing.PUSHD, "c" + conidx) is None:
            KSR.evapi.close()  # not an authenticated pushd: no second chance


def on_hello(settings: Settings, conidx: str, hello: wire.Hello) -> None:
    if settings.secret in ("", DEFAULT_SECRET):
        KSR.err(
            "pushgate: PUSHGATE_SECRET is not set (still the default): refusing pushd; "
            "define PUSHGATE_SECRET in kamailio-local.cfg and in pushd's kamailio.secret\n"
        )
        KSR.evapi.close()
        return
    if not hmac.compare_digest(hello.secret.encode(), settings.secret.encode()):
        KSR.err("pushgate: pushd hello with a wrong secret, closing\n")
        KSR.evapi.close()
        return
    alone = not pushing.pushd_connected()
    # A tag of its own: each push is unicast to one pushd (pushing.choose).
    KSR.evapi.set_tag(pushing.tag(conidx))
    KSR.htable.sht_seti(pushing.PUSHD, "c" + conidx, 1)
    if hello.version >= wire.ACKS_SINCE:
        KSR.htable.sht_seti(pushing.PUSHD, "a" + conidx, 1)
    pushing.set_state(conidx, live=True, connected=True)
    metrics.pushd_connected(True)
    KSR.evapi.relay_unicast(wire.encode(wire.Welcome().message()), pushing.tag(conidx))
    log("pushd_connected", conidx=conidx, agent=hello.agent, version=hello.version)
    if alone:
        # Pushes the previous pushd took along unanswered (killed, hung and closed).
        resent = pushing.resend_outbox()
        if resent:
            log("push_resent", count=resent)


def alive(conidx: str) -> None:
    """A pushd that missed an ack speaks again: it gets pushes again."""
    if KSR.htable.sht_get(pushing.PUSHD, "s" + conidx) is not None:
        KSR.htable.sht_rm(pushing.PUSHD, "s" + conidx)
        pushing.set_state(conidx, live=True)
        log("pushd_resumed", conidx=conidx)


def on_ack(conidx: str, ack: wire.Ack) -> None:
    alive(conidx)
    with pushing.owner_locked(ack.id):
        if str(KSR.htable.sht_get(pushing.OWNER, ack.id)) == conidx:
            KSR.htable.sht_rm(pushing.UNACKED, ack.id)


def on_result(host: Host, conidx: str, result: wire.Result) -> None:
    push_id = wire.PushId.parse(result.id)
    if push_id.tx is not None:
        with pushing.owner_locked(result.id):
            first = KSR.htable.sht_get(pushing.OWNER, result.id) is not None
            KSR.htable.sht_rm(pushing.OWNER, result.id)
            KSR.htable.sht_rm(pushing.UNACKED, result.id)
        if not first:
            # Answered already (the push was taken over and the other pushd spoke
            # first), or past its deadline: the first verdict stands.
            log("push_result_late", id=result.id, verdict=result.verdict, conidx=conidx)
            return
    KSR.htable.sht_rm(pushing.OUTBOX, result.id)
    log(
        "push_result",
        id=result.id,
        verdict=result.verdict,
        status=result.status,
        reason=result.reason,
        ms=result.ms,
    )
    if result.verdict == wire.Verdict.DELETE_TOKEN and result.aor and result.ruid:
        KSR.registrar.unregister_ruid("location", result.aor, result.ruid)
        log("binding_removed", aor=result.aor, ruid=result.ruid)
    if result.verdict != wire.Verdict.DELIVERED and result.ruid:
        pushing.landed([result.ruid])  # not woken by this push: the next call may push
    tx = push_id.tx
    if tx is None or result.verdict == wire.Verdict.DELIVERED:
        return  # no held call waits for this push, or it went out
    if not held_calls.push_failed(tx.key):
        return
    # Every push for this call failed for good: end it now rather than at the deadline.
    if held_calls.claim(tx.key):
        host.continue_tx(tx.index, tx.label, Route.PUSH_FAILED)
