"""Room in Kamailio's shared memory for the calls it already holds.

A held INVITE keeps ~17 KB of shared memory (its transaction and Pushgate's htable
entries), and the phone pushed for it needs about as much again when it wakes: its new
TCP connection (the connection and ``tcp_rd_buf_size``, 16 KB in kamailio.cfg), the
REGISTER, the INVITE relayed to it. When held calls use up the shared memory, none of
those phones can connect any more and every held call is lost (480 at the hold
timeout). So Pushgate holds a new call only while more than ``PUSHGATE_SHM_RESERVE`` MB
of shared memory are free; otherwise the caller gets 503 with Retry-After at once.
"""

from __future__ import annotations

import KSR

from kemi.settings import log

RETRY_AFTER = 30


def free_shm() -> int | None:
    """Free shared memory in bytes (kex's ``shmem:free_size``), None if unknown."""
    value = KSR.pv.get("$stat(free_size)")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def short_of_shm(reserve: int) -> bool:
    """True when less than ``reserve`` bytes of shared memory are free (0: never)."""
    if reserve <= 0:
        return False
    free = free_shm()
    return free is not None and free < reserve


def refuse(aor: str, why: str) -> None:
    """Statelessly answer 503 + Retry-After: not held, nothing pushed."""
    log("hold_refused", aor=aor, callid=KSR.pv.get("$ci"), why=why)
    KSR.hdr.append_to_reply(f"Retry-After: {RETRY_AFTER}\r\n")
    KSR.hdr.append_to_reply('Reason: SIP;cause=503;text="Server at capacity"\r\n')
    KSR.sl.sl_send_reply(503, "Service Unavailable")
