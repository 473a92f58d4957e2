"""Whether Kamailio's shared memory has room to hold one more call (pure).

A held INVITE keeps its transaction in shared memory, and its phone needs more when it
wakes: a new TCP connection (the connection and its 16 KB read buffer), the INVITE
relayed to it, the ACK and BYE transactions, kept for the call's length plus tm's 5 s
wait. If held calls leave no room for that, the woken phones cannot connect and every
held call is lost. So a call is held only while the free shared memory covers a base
reserve (for everything else Kamailio does) plus the wake-up of every call held already
and of this one: phones may all wake at once, and each must find its memory.
"""

from __future__ import annotations


def room_to_hold(free: int | None, held: int, base: int, per_wake: int) -> bool:
    """True when ``free`` bytes of shm cover ``base`` plus ``per_wake`` for each of the
    ``held`` calls held now and for the new one. No figure (``free`` None) or no base
    reserve (``base`` 0, the check switched off): always room."""
    if base <= 0 or free is None:
        return True
    return free > base + (max(held, 0) + 1) * max(per_wake, 0)
