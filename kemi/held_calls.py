"""INVITE transactions Pushgate pushed for, kept in Kamailio htables so every process sees them.

A call is *held* while its transaction is suspended waiting for a device to wake, and
*remembered* while any of its pushed devices may still need a notice (cancelled, missed,
answered elsewhere). ``tx`` is the transaction's ``<index>:<label>``; ``aor`` is the AoR
as usrloc keys it (``alice`` or ``alice@example.com``, after usrloc's ``use_domain``).

htable ``pushgate_hold``     tx        -> aor                    held now (claimed once)
htable ``pushgate_aor``      aor       -> "tx,tx,..."            held calls of an AoR
htable ``pushgate_cid``      call-id   -> JSON Held              CANCEL / replies by Call-ID
htable ``pushgate_pending``  tx        -> pushes outstanding     fail the call early
htable ``pushgate_targets``  tx        -> JSON list of targets   notices to pushed devices
htable ``pushgate_held``     "n"       -> calls held now         shm admission (capacity.py)

Every lookup is by key: the cost of a REGISTER or a wake-up does not grow with the
number of calls held for other users.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import KSR

HOLD = "pushgate_hold"
BY_AOR = "pushgate_aor"
BY_CALLID = "pushgate_cid"
PENDING = "pushgate_pending"
TARGETS = "pushgate_targets"
COUNT = "pushgate_held"
COUNT_KEY = "n"


@dataclass(frozen=True)
class Held:
    aor: str
    """usrloc's key of the AoR."""
    uri: str
    """The AoR as a SIP URI (push payloads, unregister)."""
    index: int
    label: int

    @property
    def tx_key(self) -> str:
        return f"{self.index}:{self.label}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Held:
        return cls(**json.loads(raw))


def hold(held: Held, callid: str, timeout: int, targets: list[dict[str, str]]) -> None:
    """A suspended INVITE waiting up to ``timeout`` s for one of ``targets`` to wake up."""
    ttl = timeout + 30  # outlives tm's own timer: tm ends the call, the tables follow
    KSR.htable.sht_setxs(HOLD, held.tx_key, held.aor, ttl)
    _count_hold(ttl)
    pushed = sum(1 for t in targets if t.get("pushed"))
    KSR.htable.sht_setxi(PENDING, held.tx_key, pushed, ttl)
    KSR.htable.sht_lock(BY_AOR, held.aor)
    try:
        txs = _split(KSR.htable.sht_get(BY_AOR, held.aor))
        KSR.htable.sht_setxs(BY_AOR, held.aor, ",".join([*txs, held.tx_key]), ttl)
    finally:
        KSR.htable.sht_unlock(BY_AOR, held.aor)
    remember(held, callid, targets)


def remember(held: Held, callid: str, targets: list[dict[str, str]]) -> None:
    """Pushed devices of a call that is (or will be) ringing: for cancel / answered notices."""
    KSR.htable.sht_sets(BY_CALLID, callid, held.to_json())
    KSR.htable.sht_sets(TARGETS, held.tx_key, json.dumps(targets, separators=(",", ":")))


def held_for_aor(aor: str) -> list[str]:
    """Transactions (``index:label``) held for ``aor``."""
    return _split(KSR.htable.sht_get(BY_AOR, aor))


def for_callid(callid: str) -> Held | None:
    raw = KSR.htable.sht_get(BY_CALLID, callid)
    return Held.from_json(str(raw)) if raw else None


def targets(held: Held) -> list[dict[str, str]]:
    raw = KSR.htable.sht_get(TARGETS, held.tx_key)
    return list(json.loads(str(raw))) if raw else []


def claim(tx_key: str) -> bool:
    """Take the held transaction out of the tables; False if someone else already did."""
    aor = _unhold(tx_key)
    if aor is None:
        return False
    _drop_from_aor(aor, tx_key)
    return True


def count() -> int:
    """Calls held now (one htable read)."""
    return int(KSR.htable.sht_get(COUNT, COUNT_KEY) or 0)


def push_failed(tx_key: str) -> bool:
    """Count one definitive push failure; True when it was the last outstanding push."""
    if KSR.htable.sht_get(PENDING, tx_key) is None:
        return False
    return int(KSR.htable.sht_dec(PENDING, tx_key)) <= 0


def forget(held: Held, callid: str) -> None:
    if _unhold(held.tx_key) is not None:
        _drop_from_aor(held.aor, held.tx_key)
    KSR.htable.sht_rm(BY_CALLID, callid)
    KSR.htable.sht_rm(PENDING, held.tx_key)
    KSR.htable.sht_rm(TARGETS, held.tx_key)


def _unhold(tx_key: str) -> str | None:
    """Remove ``tx_key`` from the held calls; its AoR, or None if it was not held."""
    # The evapi worker (push verdict), SIP workers (wake-up REGISTER, CANCEL) and tm's
    # timer may race for the same call: check and remove under the slot's lock, so the
    # call leaves the count exactly once.
    KSR.htable.sht_lock(HOLD, tx_key)
    try:
        aor = KSR.htable.sht_get(HOLD, tx_key)
        if aor is None:
            return None
        KSR.htable.sht_rm(HOLD, tx_key)
    finally:
        KSR.htable.sht_unlock(HOLD, tx_key)
    _count_unhold()
    return str(aor)


def _count_hold(ttl: int) -> None:
    # Each hold sets the count's expiry to its own end (the table has updateexpire=0, so
    # a release keeps it): once no call has been held for a hold's whole life, the count
    # is gone, i.e. 0, even if a release was ever missed.
    KSR.htable.sht_lock(COUNT, COUNT_KEY)
    try:
        KSR.htable.sht_setxi(COUNT, COUNT_KEY, count() + 1, ttl)
    finally:
        KSR.htable.sht_unlock(COUNT, COUNT_KEY)


def _count_unhold() -> None:
    KSR.htable.sht_lock(COUNT, COUNT_KEY)
    try:
        if count() > 0:
            KSR.htable.sht_dec(COUNT, COUNT_KEY)
    finally:
        KSR.htable.sht_unlock(COUNT, COUNT_KEY)


def _drop_from_aor(aor: str, tx_key: str) -> None:
    KSR.htable.sht_lock(BY_AOR, aor)
    try:
        rest = [t for t in _split(KSR.htable.sht_get(BY_AOR, aor)) if t != tx_key]
        if rest:
            KSR.htable.sht_sets(BY_AOR, aor, ",".join(rest))
        else:
            KSR.htable.sht_rm(BY_AOR, aor)
    finally:
        KSR.htable.sht_unlock(BY_AOR, aor)


def _split(raw: object) -> list[str]:
    return [t for t in str(raw).split(",") if t] if raw else []
