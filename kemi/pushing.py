"""Asking pushd for pushes over evapi: call pushes (with a wake token) and notices."""

from __future__ import annotations

import time

import KSR

from kemi import held_calls, ksr_bindings
from kemi.settings import Settings, log
from pushgate import wake_token, wire
from pushgate.decision import Binding

# htables (pushgate.cfg): one-time wake tokens -> "<aor>|<instance>"; AoRs with a
# relayed call that woken devices may still join (tsilo); authenticated pushd connections.
WAKE_TOKENS = "pushgate_waketok"
RINGING = "pushgate_ringing"
PUSHD = "pushgate_pushd"
# Call push requests without a verdict yet ("<index>:<label>:<n>" -> message, until the
# hold deadline): a pushd that dies with them unread must not take them along.
OUTBOX = "pushgate_outbox"
# Push flood limits (pushgate/flood.py): "d:<ruid>" / "c:<caller>|<aor>" -> call pushes in
# the window; devices with a call push in flight: ruid -> 1 until woken or the deadline.
RATE = "pushgate_rate"
IN_FLIGHT = "pushgate_inflight"


def target(b: Binding, pushed: bool = True) -> dict[str, str]:
    """What pushd needs to reach one binding (kept in htables while the call lasts).

    ``pushed`` False: a device this call waits for without pushing it (its push for an
    earlier call is in flight): its wake-up resumes the call, but it gets no notices.
    """
    assert b.push is not None
    return {
        "pushed": "1" if pushed else "",
        "provider": b.push.raw_provider,
        "prid": b.push.prid,
        "param": b.push.param,
        "ruid": b.ruid,
        "instance": b.instance,
    }


def call_data(held: held_calls.Held) -> dict[str, str]:
    """Push payload of a call (our app contract; RFC 8599 leaves it open)."""
    return {
        "call_id": str(KSR.pv.get("$ci")),
        "caller": str(KSR.pv.get("$fu")),
        "caller_name": str(KSR.pv.get("$fn") or ""),
        "aor": held.uri,
    }


def send(
    aor: str,
    uri: str,
    push_id: wire.PushId,
    dest: dict[str, str],
    kind: wire.PushKind,
    deadline: float,
    data: dict[str, str],
) -> None:
    """One push request for the AoR (usrloc's key ``aor``, SIP URI ``uri``); call pushes
    carry a one-time wake token for that device."""
    if kind == wire.PushKind.CALL:
        token = wake_token.new_token()
        ttl = max(1, int(deadline - time.time()))
        key = wake_token.binding_key(aor, dest["instance"])
        KSR.htable.sht_setxs(WAKE_TOKENS, token, key, ttl)
        data = {**data, wake_token.PAYLOAD_KEY: token}
    message = wire.push_message(
        push_id=push_id,
        kind=kind,
        provider=dest["provider"],
        prid=dest["prid"],
        param=dest["param"],
        aor=uri,
        ruid=dest["ruid"],
        instance=dest["instance"],
        deadline=deadline,
        data=data,
    )
    if kind == wire.PushKind.CALL:
        KSR.htable.sht_setxs(OUTBOX, str(push_id), message, max(1, int(deadline - time.time())))
    rc = KSR.evapi.relay_multicast(message, "pushd")
    log("push_request", kind=kind, aor=aor, callid=data["call_id"], id=push_id, rc=rc)


def call_push_id(held: held_calls.Held, n: int) -> wire.PushId:
    """The n-th push for a held (or ringing) call."""
    return wire.PushId(tx=wire.Tx(held.index, held.label), n=n)


def send_calls(settings: Settings, held: held_calls.Held, dests: list[dict[str, str]]) -> None:
    deadline = time.time() + settings.hold_timeout
    window = settings.limits.window
    for n, dest in enumerate(dests):
        push_id = call_push_id(held, n)
        send(held.aor, held.uri, push_id, dest, wire.PushKind.CALL, deadline, call_data(held))
        KSR.htable.sht_setxi(IN_FLIGHT, dest["ruid"], 1, settings.hold_timeout)
        count(f"d:{dest['ruid']}", window)
    if dests:
        count(f"c:{caller_key(held)}", window)


def caller_key(held: held_calls.Held) -> str:
    return f"{KSR.pv.get('$fu')}|{held.aor}"


def recent(key: str) -> int:
    """Call pushes counted under ``key`` in the current window."""
    return int(KSR.htable.sht_get(RATE, key) or 0)


def count(key: str, window: int) -> None:
    # The first push of a window sets its expiry; later ones only add to it.
    KSR.htable.sht_lock(RATE, key)
    try:
        if KSR.htable.sht_get(RATE, key) is None:
            KSR.htable.sht_setxi(RATE, key, 1, window)
        else:
            KSR.htable.sht_inc(RATE, key)
    finally:
        KSR.htable.sht_unlock(RATE, key)


def in_flight(ruids: list[str]) -> set[str]:
    return {r for r in ruids if KSR.htable.sht_get(IN_FLIGHT, r) is not None}


def landed(ruids: list[str]) -> None:
    """These devices woke (or their push ended): the next call may push them again."""
    for ruid in ruids:
        KSR.htable.sht_rm(IN_FLIGHT, ruid)


def send_notices(
    settings: Settings, held: held_calls.Held, kind: wire.PushKind, reason: str = ""
) -> None:
    """Tell pushed devices the call is over (cancelled / missed): alert pushes, not VoIP.

    Devices that woke hear about it over SIP (CANCEL with Reason); only the ones still
    asleep need a push.
    """
    data = {
        "call_id": str(KSR.pv.get("$ci")),
        "caller": str(KSR.pv.get("$fu")),
        "aor": held.uri,
        "reason": reason or kind,
    }
    deadline = time.time() + settings.notice_ttl
    _, bindings = ksr_bindings.fetch(held.uri)
    awake = {b.instance for b in bindings if b.alive}
    # A binding removed meanwhile (un-REGISTER, token the provider called dead) gets
    # nothing more.
    current = {b.ruid for b in bindings}
    for n, dest in enumerate(held_calls.targets(held)):
        if dest.get("pushed") and dest["instance"] not in awake and dest["ruid"] in current:
            send(held.aor, held.uri, call_push_id(held, n), dest, kind, deadline, data)


def store_ringing(aor: str) -> None:
    """Let devices that wake later join this call as branches (tsilo)."""
    KSR.tsilo.ts_store()
    KSR.htable.sht_seti(RINGING, aor, 1)


def pushd_connected() -> bool:
    return bool(KSR.htable.sht_match_name(PUSHD, "sw", "c") > 0)


def resend_outbox() -> int:
    """Send every call push still without a verdict again (to a pushd that just connected
    while no other was); how many. A pushd that died after sending a push and before
    answering makes that push go out twice: the price of losing none."""
    sent = 0
    if KSR.htable.sht_iterator_start("pgout", OUTBOX) < 0:
        return 0
    try:
        while KSR.htable.sht_iterator_next("pgout") > 0:
            message = KSR.pv.get("$shtitval(pgout)")
            if message:
                KSR.evapi.relay_multicast(str(message), "pushd")
                sent += 1
    finally:
        KSR.htable.sht_iterator_end("pgout")
    return sent
