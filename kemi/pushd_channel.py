"""pushd's side of evapi: authenticate connections, act on push verdicts."""

from __future__ import annotations

import hmac
from typing import Any

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
            KSR.htable.sht_rm(pushing.PUSHD, "c" + conidx)
            metrics.pushd_connected(pushing.pushd_connected())
            log("pushd_disconnected", conidx=conidx)
        return
    if evname != "evapi:message-received":
        return
    try:
        message = wire.parse_message(str(KSR.pv.get("$evapi(msg)") or ""))
        if message["type"] == "hello":
            on_hello(settings, conidx, message)
        elif KSR.htable.sht_get(pushing.PUSHD, "c" + conidx) is None:
            KSR.err("pushgate: message from unauthenticated evapi client, closing\n")
            KSR.evapi.close()
        elif message["type"] == "result":
            on_result(host, wire.parse_result(message))
    except wire.WireError as exc:
        KSR.err(f"pushgate: bad message on the pushd channel: {exc}\n")
        if KSR.htable.sht_get(pushing.PUSHD, "c" + conidx) is None:
            KSR.evapi.close()  # not an authenticated pushd: no second chance


def on_hello(settings: Settings, conidx: str, message: dict[str, Any]) -> None:
    given = str(message.get("secret", ""))
    if settings.secret in ("", DEFAULT_SECRET):
        KSR.err(
            "pushgate: PUSHGATE_SECRET is not set (still the default): refusing pushd; "
            "define PUSHGATE_SECRET in kamailio-local.cfg and in pushd's kamailio.secret\n"
        )
        KSR.evapi.close()
        return
    if not hmac.compare_digest(given.encode(), settings.secret.encode()):
        KSR.err("pushgate: pushd hello with a wrong secret, closing\n")
        KSR.evapi.close()
        return
    alone = not pushing.pushd_connected()
    KSR.evapi.set_tag("pushd")
    KSR.htable.sht_seti(pushing.PUSHD, "c" + conidx, 1)
    metrics.pushd_connected(True)
    KSR.evapi.relay_unicast(wire.control_message("welcome", version=wire.VERSION), "pushd")
    log("pushd_connected", conidx=conidx, agent=message.get("agent", "?"))
    if alone:
        # Pushes the previous pushd took along unanswered (killed, hung and closed).
        resent = pushing.resend_outbox()
        if resent:
            log("push_resent", count=resent)


def on_result(host: Host, result: wire.Result) -> None:
    hid = result.hold_id
    KSR.htable.sht_rm(pushing.OUTBOX, str(hid))
    log(
        "push_result",
        id=hid,
        verdict=result.verdict,
        status=result.status,
        reason=result.reason,
        ms=result.ms,
    )
    if result.verdict == "delete_token" and result.aor and result.ruid:
        KSR.registrar.unregister_ruid("location", result.aor, result.ruid)
        log("binding_removed", aor=result.aor, ruid=result.ruid)
    if result.verdict != "delivered" and result.ruid:
        pushing.landed([result.ruid])  # not woken by this push: the next call may push
    if result.verdict == "delivered" or not held_calls.push_failed(hid.tx_key):
        return
    # Every push for this call failed for good: end it now rather than at the deadline.
    if held_calls.claim(hid.tx_key):
        host.continue_tx(hid.index, hid.label, Route.PUSH_FAILED)
