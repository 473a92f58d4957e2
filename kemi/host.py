"""How Pushgate hands control back to the routing it is part of.

Pushgate's hooks run inside someone else's routing: a native kamailio.cfg (through
app_python3's ``python_exec``) or a KEMI Python script. Two things differ between them:

- the names tm calls back (``t_on_failure``, ``t_continue``): KEMI takes method names of
  the script's object, a native cfg needs route blocks that exist in the cfg (tm crashes
  Kamailio when a failure route named from Python does not exist);
- ``t_continue`` itself: from Python under a native cfg it does nothing, so the cfg must
  call it; under KEMI Python calls it directly.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Protocol

import KSR


class Route(enum.Enum):
    """Routes tm runs for Pushgate, by what they do."""

    HELD_TIMEOUT = "held_timeout"  # failure route of a held INVITE (tm's timer fired)
    RESUME = "resume"  # t_continue: the device woke, deliver the INVITE
    CANCELLED = "cancelled"  # t_continue: caller cancelled while held, 487
    PUSH_FAILED = "push_failed"  # t_continue: every push failed, 480
    MESSAGE_FAILED = "message_failed"  # failure route of a MESSAGE relayed to a live device
    PEER_FAILED = "peer_failed"  # failure route of an INVITE relayed through another node
    PEER_REPLY = "peer_reply"  # onreply route of a call another node relays to a flow here


class Host(Protocol):
    def route_name(self, route: Route) -> str: ...

    def continue_tx(self, index: int, label: int, route: Route) -> None: ...


class KemiHost:
    """A KEMI Python script: routes are methods ``ksr_pushgate_<name>`` of its object
    (given by ``kemi.api.PushgateRoutes``)."""

    def route_name(self, route: Route) -> str:
        return f"ksr_pushgate_{route.value}"

    def continue_tx(self, index: int, label: int, route: Route) -> None:
        KSR.tmx.t_continue(index, label, self.route_name(route))


# $var names the native cfg reads in route[PUSHGATE_CONTINUE].
VAR_INDEX = "$var(pushgate_tindex)"
VAR_LABEL = "$var(pushgate_tlabel)"
VAR_ROUTE = "$var(pushgate_troute)"


class NativeHost:
    """A native kamailio.cfg with pushgate.cfg: routes are blocks ``PUSHGATE_<NAME>``.

    Continuations are queued (per process) and handed to the cfg one by one
    (``next_continue``), which calls ``t_continue`` itself.
    """

    def __init__(self) -> None:
        self.pending: deque[tuple[int, int, Route]] = deque()

    def route_name(self, route: Route) -> str:
        return f"PUSHGATE_{route.value.upper()}"

    def continue_tx(self, index: int, label: int, route: Route) -> None:
        self.pending.append((index, label, route))

    def next_continue(self) -> bool:
        """Put the next queued continuation in $var for the cfg; False when none is left."""
        if not self.pending:
            return False
        index, label, route = self.pending.popleft()
        KSR.pv.seti(VAR_INDEX, index)
        KSR.pv.seti(VAR_LABEL, label)
        KSR.pv.sets(VAR_ROUTE, self.route_name(route))
        return True
