"""Room in Kamailio's shared memory for the calls it already holds.

A held INVITE keeps ~17 KB of shared memory (its transaction and Pushgate's htable
entries), and the phone pushed for it needs more when it wakes: its new TCP connection
(the connection and ``tcp_rd_buf_size``, 16 KB in kamailio.cfg), the INVITE relayed to
it, the ACK and BYE transactions. When held calls use up the shared memory, none of
those phones can connect any more and every held call is lost (480 at the hold
timeout). So Pushgate holds a new call only while the free shared memory covers
``PUSHGATE_SHM_RESERVE`` MB plus ``PUSHGATE_WAKE_SHM`` KB for every call held (this
one included; pushgate/shm_budget.py); otherwise the caller gets 503 with Retry-After
at once. The count of held calls is one htable item (kemi/held_calls.py), not a scan.
"""

from __future__ import annotations

import KSR

from kemi import held_calls
from kemi.settings import log
from pushgate.shm_budget import room_to_hold

RETRY_AFTER = 30


def free_shm() -> int | None:
    """Free shared memory in bytes (kex's ``shmem:free_size``), None if unknown."""
    value = KSR.pv.get("$stat(free_size)")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def short_of_shm(reserve: int, per_wake: int = 0) -> bool:
    """True when the free shared memory does not cover ``reserve`` bytes plus ``per_wake``
    bytes for each call held and the new one (``reserve`` 0: never)."""
    if reserve <= 0:
        return False
    return not room_to_hold(free_shm(), held_calls.count(), reserve, per_wake)


def refuse(aor: str, why: str) -> None:
    """Statelessly answer 503 + Retry-After: not held, nothing pushed."""
    log("hold_refused", aor=aor, callid=KSR.pv.get("$ci"), why=why)
    KSR.hdr.append_to_reply(f"Retry-After: {RETRY_AFTER}\r\n")
    KSR.hdr.append_to_reply('Reason: SIP;cause=503;text="Server at capacity"\r\n')
    KSR.sl.sl_send_reply(503, "Service Unavailable")
