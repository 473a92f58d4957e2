"""Asking pushd for pushes over evapi: call pushes (with a wake token) and notices."""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator

import KSR

from kemi import held_calls, ksr_bindings
from kemi.settings import Settings, log
from pushgate import flood, wake_token, wire
from pushgate.decision import Binding

# htables (pushgate.cfg): one-time wake tokens -> "<aor>|<instance>"; AoRs with a
# relayed call that woken devices may still join (tsilo); authenticated pushd connections.
WAKE_TOKENS = "pushgate_waketok"
RINGING = "pushgate_ringing"
PUSHD = "pushgate_pushd"
# Push requests of calls without a verdict yet ("<index>:<label>:<n>" -> message, until
# the push's deadline): call pushes (the hold) and cancel / missed-call notices
# (PUSHGATE_NOTICE_TTL). A pushd that dies or hangs with them unsent must not take them
# along: they go to another pushd.
OUTBOX = "pushgate_outbox"
# Which pushd holds each push it has not answered yet: push id -> its evapi connection
# index (until the deadline, plus a grace for its last word); the first verdict wins.
OWNER = "pushgate_owner"
# Pushes sent to a pushd that acks (protocol 3) and not acked yet: push id -> when sent
# (epoch s). The ack timer scans this small table, never the held calls.
UNACKED = "pushgate_unacked"
ACK_WAIT = 0.5
"""Seconds a pushd gets to ack a push before it counts as hung and another takes it."""
OWNER_GRACE = 10
# Keys of PUSHD: "c<conidx>" an authenticated pushd, "a<conidx>" it acks, "s<conidx>" it
# missed an ack (hung); "live" / "all": comma lists of the connections that are not hung /
# all authenticated ones, kept by the evapi and timer processes under the "lk" lock.
LIVE = "live"
ALL = "all"
# Push flood limits (pushgate/flood.py): "d:<hash of the push token>" / "c:<caller>|<aor>"
# -> call pushes in the window; devices with a call push in flight: ruid -> 1 until woken
# or the deadline.
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
    if push_id.tx is not None:
        KSR.htable.sht_setxs(OUTBOX, str(push_id), message, max(1, int(deadline - time.time())))
    conidx = choose(str(push_id))
    rc = deliver(str(push_id), message, conidx, deadline) if conidx is not None else -1
    log("push_request", kind=kind, aor=aor, callid=data["call_id"], id=push_id, rc=rc, to=conidx)


# -- which pushd: one per push ------------------------------------------------------------


def wake_token_holder(token: str) -> str | None:
    """The ``<aor>|<instance>`` a wake token was issued to; None: unknown, expired or used."""
    if KSR.htable.sht_get(WAKE_TOKENS, wake_token.SPENT + token) is not None:
        return None
    bound = KSR.htable.sht_get(WAKE_TOKENS, token)
    return None if bound is None else str(bound)


def spend_wake_token(token: str, ttl: int) -> None:
    """A token was presented: never again, on any node (its marker outlives the token)."""
    KSR.htable.sht_setxs(WAKE_TOKENS, wake_token.SPENT + token, "1", max(1, ttl))
    KSR.htable.sht_rm(WAKE_TOKENS, token)


def tag(conidx: str) -> str:
    """The evapi tag of one pushd connection: pushes are unicast to it."""
    return f"pushd{conidx}"


def _listed(key: str) -> list[str]:
    value = KSR.htable.sht_get(PUSHD, key)
    return [c for c in str(value).split(",") if c] if value else []


def choose(push_id: str, avoid: str = "") -> str | None:
    """The pushd connection for one push: spread by the push id's hash over the pushd that
    are not hung (if all are, over all of them: one may come back); None: no pushd."""
    for key in (LIVE, ALL):
        pool = [c for c in _listed(key) if c != avoid]
        if pool:
            return pool[zlib.crc32(push_id.encode()) % len(pool)]
    return None


def deliver(push_id: str, message: str, conidx: str, deadline: float) -> int:
    """Hand one push to one pushd, remembering who holds it (and, if it acks, since when)."""
    ttl = max(1, int(deadline - time.time()))
    if push_id:
        KSR.htable.sht_setxs(OWNER, push_id, conidx, ttl + OWNER_GRACE)
        if KSR.htable.sht_get(PUSHD, "a" + conidx) is not None:
            KSR.htable.sht_setxs(UNACKED, push_id, f"{time.time():.3f}", ttl)
    return int(KSR.evapi.relay_unicast(message, tag(conidx)))


def set_state(conidx: str, *, live: bool | None = None, connected: bool | None = None) -> None:
    """Add a connection to / drop it from the live and the all lists."""
    KSR.htable.sht_lock(PUSHD, "lk")
    try:
        for key, want in ((LIVE, live), (ALL, connected)):
            if want is None:
                continue
            members = [c for c in _listed(key) if c != conidx] + ([conidx] if want else [])
            KSR.htable.sht_sets(PUSHD, key, ",".join(members))
    finally:
        KSR.htable.sht_unlock(PUSHD, "lk")


def _outbox() -> list[tuple[str, str]]:
    """Call pushes and notices without a verdict: (id, message); read first, acted on after."""
    found: list[tuple[str, str]] = []
    if KSR.htable.sht_iterator_start("pgout", OUTBOX) < 0:
        return found
    try:
        while KSR.htable.sht_iterator_next("pgout") > 0:
            message = KSR.pv.get("$shtitval(pgout)")
            if message:
                found.append((str(KSR.pv.get("$shtitkey(pgout)")), str(message)))
    finally:
        KSR.htable.sht_iterator_end("pgout")
    return found


def take_over(push_id: str, message: str, avoid: str) -> bool:
    """Give a push another pushd than ``avoid`` (gone or hung); False: there is none."""
    conidx = choose(push_id, avoid)
    if conidx is None:
        return False
    try:
        deadline = float(wire.decode(message)["deadline"])
    except (wire.WireError, KeyError, TypeError, ValueError):
        return False
    if deadline <= time.time():
        return False
    deliver(push_id, message, conidx, deadline)
    return True


def take_over_from(conidx: str) -> int:
    """A pushd closed its connection: its unanswered call pushes and notices go to
    another, now."""
    moved = 0
    for push_id, message in _outbox():
        with owner_locked(push_id):
            if str(KSR.htable.sht_get(OWNER, push_id)) == conidx and take_over(
                push_id, message, conidx
            ):
                moved += 1
    return moved


@contextlib.contextmanager
def owner_locked(push_id: str) -> Iterator[None]:
    """One push's holder, read and changed by one process at a time: the evapi process
    (verdicts, closed connections) and the ack timer's never both act on one push."""
    KSR.htable.sht_lock(OWNER, push_id)
    try:
        yield
    finally:
        KSR.htable.sht_unlock(OWNER, push_id)


def ack_timer() -> None:
    """Every 0.1 s (rtimer): a push not acked within ACK_WAIT marks its pushd hung; it
    goes to another pushd. The scan covers UNACKED only: pushes of the last ACK_WAIT."""
    now = time.time()
    late: list[str] = []
    if KSR.htable.sht_iterator_start("pgack", UNACKED) < 0:
        return
    try:
        while KSR.htable.sht_iterator_next("pgack") > 0:
            try:
                sent = float(str(KSR.pv.get("$shtitval(pgack)")))
            except ValueError:
                sent = 0.0
            if now - sent > ACK_WAIT:
                late.append(str(KSR.pv.get("$shtitkey(pgack)")))
    finally:
        KSR.htable.sht_iterator_end("pgack")
    for push_id in late:
        with owner_locked(push_id):
            _passed_over(push_id)


def _passed_over(push_id: str) -> None:
    """A push its pushd did not ack in time (under the push's owner lock)."""
    if KSR.htable.sht_get(UNACKED, push_id) is None:
        return  # acked or answered meanwhile
    KSR.htable.sht_rm(UNACKED, push_id)
    owner = KSR.htable.sht_get(OWNER, push_id)
    if owner is None:
        return
    owner = str(owner)
    if KSR.htable.sht_get(PUSHD, "s" + owner) is None:
        KSR.htable.sht_seti(PUSHD, "s" + owner, 1)
        set_state(owner, live=False)
        log("pushd_hung", conidx=owner, id=push_id)
    message = KSR.htable.sht_get(OUTBOX, push_id)
    if message and take_over(push_id, str(message), owner):
        # The hung pushd may still send it when it wakes: at most twice, counted.
        log("push_taken_over", id=push_id, **{"from": owner})


def call_push_id(held: held_calls.Held, n: int) -> wire.PushId:
    """The n-th push for a held (or ringing) call."""
    return wire.PushId(tx=wire.Tx(held.index, held.label), n=n)


def notice_push_id(held: held_calls.Held, n: int, targets: int) -> wire.PushId:
    """The notice to the call's n-th target: numbered after the call's ``targets`` pushes,
    so a call push still without a verdict and its device's notice each keep their own
    holder, outbox entry and verdict."""
    return call_push_id(held, targets + n)


def send_calls(settings: Settings, held: held_calls.Held, dests: list[dict[str, str]]) -> None:
    deadline = time.time() + settings.hold_timeout
    window = settings.limits.window
    for n, dest in enumerate(dests):
        push_id = call_push_id(held, n)
        send(held.aor, held.uri, push_id, dest, wire.PushKind.CALL, deadline, call_data(held))
        KSR.htable.sht_setxi(IN_FLIGHT, dest["ruid"], 1, settings.hold_timeout)
        count(flood.device_count_key(dest["provider"], dest["prid"]), window)
    if dests:
        count(f"c:{caller_key(held)}", window)


def device_key(b: Binding) -> str:
    """The push count key of a binding's device (pushgate/flood.py)."""
    assert b.push is not None
    return flood.device_count_key(b.push.raw_provider, b.push.prid)


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
    targets = held_calls.targets(held)
    for n, dest in enumerate(targets):
        # The call is over: a call push a dead pushd took along is not sent again.
        KSR.htable.sht_rm(OUTBOX, str(call_push_id(held, n)))
        if dest.get("pushed") and dest["instance"] not in awake and dest["ruid"] in current:
            push_id = notice_push_id(held, n, len(targets))
            send(held.aor, held.uri, push_id, dest, kind, deadline, data)


def store_ringing(aor: str) -> None:
    """Let devices that wake later join this call as branches (tsilo)."""
    KSR.tsilo.ts_store()
    KSR.htable.sht_seti(RINGING, aor, 1)


def pushd_connected() -> bool:
    return bool(KSR.htable.sht_match_name(PUSHD, "sw", "c") > 0)


def resend_outbox() -> int:
    """Send every call push and notice still without a verdict again (to a pushd that just
    connected while no other was); how many. A pushd that died after sending a push and before
    answering makes that push go out twice: the price of losing none."""
    sent = 0
    for push_id, message in _outbox():
        if take_over(push_id, message, ""):
            sent += 1
    return sent
