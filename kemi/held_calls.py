"""Held INVITE transactions, kept in Kamailio htables so every process sees them.

htable ``hold``      "<aor>|<index>:<label>"  -> hold deadline (epoch s)   resume by AoR
htable ``holdcid``   "<call-id>"              -> "<aor>|<index>:<label>"   CANCEL by Call-ID
htable ``pushreq``   "<index>:<label>"        -> pushes still outstanding  fail early
htable ``holdpush``  "<index>:<label>:<n>"    -> JSON of push target n      cancel/missed notices
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import KSR

SEP = "|"


@dataclass(frozen=True)
class Held:
    aor: str
    index: int
    label: int

    @property
    def tx_key(self) -> str:
        return f"{self.index}:{self.label}"

    @property
    def key(self) -> str:
        return f"{self.aor}{SEP}{self.tx_key}"

    @classmethod
    def parse(cls, key: str) -> Held:
        aor, _, tx = key.rpartition(SEP)
        index, label = (int(x) for x in tx.split(":"))
        return cls(aor=aor, index=index, label=label)


def hold(held: Held, callid: str, timeout: int, targets: list[dict[str, str]]) -> None:
    """A suspended INVITE waiting up to ``timeout`` s for one of ``targets`` to wake up."""
    KSR.htable.sht_seti("hold", held.key, int(time.time()) + timeout)
    KSR.htable.sht_seti("pushreq", held.tx_key, len(targets))
    remember(held, callid, targets)


def remember(held: Held, callid: str, targets: list[dict[str, str]]) -> None:
    """Pushed devices of a call that is (or will be) ringing: for cancel / answered notices."""
    KSR.htable.sht_sets("holdcid", callid, held.key)
    for n, target in enumerate(targets):
        KSR.htable.sht_sets("holdpush", f"{held.tx_key}:{n}", json.dumps(target))


def for_aor(aor: str) -> list[Held]:
    prefix = aor + SEP
    found: list[Held] = []
    if KSR.htable.sht_iterator_start("hi", "hold") < 0:
        return found
    try:
        while KSR.htable.sht_iterator_next("hi") > 0:
            key = str(KSR.pv.get("$shtitkey(hi)") or "")
            if key.startswith(prefix):
                found.append(Held.parse(key))
    finally:
        KSR.htable.sht_iterator_end("hi")
    return found


def for_callid(callid: str) -> Held | None:
    key = KSR.htable.sht_get("holdcid", callid)
    return Held.parse(str(key)) if key else None


def targets(held: Held) -> list[dict[str, str]]:
    out = []
    for n in range(64):
        raw = KSR.htable.sht_get("holdpush", f"{held.tx_key}:{n}")
        if raw is None:
            break
        out.append(json.loads(str(raw)))
    return out


def claim(held: Held) -> bool:
    """Take the held transaction out of the tables; False if someone else already did."""
    # The evapi worker (push verdict), SIP workers (wake-up REGISTER, CANCEL) and tm's
    # timer may race for the same call: check and remove under the slot's lock.
    KSR.htable.sht_lock("hold", held.key)
    try:
        if KSR.htable.sht_get("hold", held.key) is None:
            return False
        KSR.htable.sht_rm("hold", held.key)
        return True
    finally:
        KSR.htable.sht_unlock("hold", held.key)


def push_failed(tx_key: str) -> bool:
    """Count one definitive push failure; True when it was the last outstanding push."""
    if KSR.htable.sht_get("pushreq", tx_key) is None:
        return False
    return int(KSR.htable.sht_dec("pushreq", tx_key)) <= 0


def forget(held: Held, callid: str) -> None:
    KSR.htable.sht_rm("hold", held.key)
    KSR.htable.sht_rm("holdcid", callid)
    KSR.htable.sht_rm("pushreq", held.tx_key)
    KSR.htable.sht_rm_name_re("holdpush", f"^{held.tx_key}:")
