"""Pushgate for a KEMI Python script (app_python3, ``cfgengine "python"``).

Two things to add to your script (docs/integrate.md shows the patch to Kamailio's own
``kamailio-basic-kemi-python.py``):

1. Your routing class inherits ``PushgateRoutes``: it gives the methods tm and evapi
   call for Pushgate by name (``ksr_pushgate_*``). A woken INVITE is delivered through
   your own location step, ``self.ksr_route_location(msg)``; override
   ``pushgate_deliver`` if yours has another name.
2. Your routes call the hooks of ``pushgate`` at their steps::

       pushgate.cancel()      CANCEL, before relaying it       True: answered, stop
       pushgate.trusted()     start of authentication          True: skip digest auth
       pushgate.register()    REGISTER, before save()          False: rejected, stop
       pushgate.registered()  REGISTER, after a successful save()
       pushgate.location()    start of location, before lookup True: handled, stop
       pushgate.branch()      branch route                     False: drop the branch
       pushgate.reply()       reply route (ksr_reply_route)

   With several nodes (WITH_CLUSTER or WITH_PUSHGATE_CLUSTER, docs/cluster.md; our
   all-in-one script does this)::

       pushgate.cluster_message()   a KDMQ request, first thing
       pushgate.cluster_relay(r)    after the transaction check     True: handled, stop
       pushgate.cluster_register()  REGISTER, just before save()
       pushgate.relay_failed()      after a t_relay that failed     True: handled

   or, for the first two, one call after the transaction check (KDMQ included)::

       pushgate.from_node()                                         True: handled, stop

   In edge mode (docs/edge.md; the registrar is another server), instead of
   register/registered/location::

       pushgate.edge_register()    phone's REGISTER, before relaying it    False: stop
       pushgate.edge_registered()  onreply route of its 2xx (does save())
       pushgate.edge_route()       any request from the upstream, first    False: stop
       pushgate.edge_location()    initial request from the upstream       True: stop
                                   (also the woken-INVITE delivery; it record-routes)
       pushgate.edge_outgoing()    a phone's own initial request (it record-routes)
"""

from __future__ import annotations

from collections.abc import Callable

import KSR

from kemi import cluster
from kemi.hooks import Hooks, check_setup, log_error
from kemi.host import KemiHost
from kemi.settings import Settings

OK = 1

check_setup()
pushgate = Hooks(Settings.from_cfg(), KemiHost())


class PushgateRoutes:
    """Mix-in for the KEMI routing class: the routes tm and evapi call for Pushgate."""

    def pushgate_deliver(self, msg: object) -> int:
        """Deliver a woken INVITE: the host's own location step (lookup + relay)."""
        deliver = getattr(self, "ksr_route_location", None)
        if deliver is None:
            KSR.err("pushgate: no ksr_route_location: override pushgate_deliver\n")
            KSR.tm.t_reply(500, "Server Error")
            return OK
        deliver(msg)
        return OK

    def ksr_pushgate_held_timeout(self, msg: object) -> int:
        return _run("held_timeout", pushgate.held_timeout)

    def ksr_pushgate_resume(self, msg: object) -> int:
        if _run("resume", pushgate.resume) == OK:
            self.pushgate_deliver(msg)
        return OK

    def ksr_pushgate_cancelled(self, msg: object) -> int:
        return _run("cancelled", pushgate.cancelled)

    def ksr_pushgate_push_failed(self, msg: object) -> int:
        return _run("push_failed", pushgate.push_failed)

    def ksr_pushgate_message_failed(self, msg: object) -> int:
        return _run("message_failed", pushgate.message_failed)

    def ksr_pushgate_peer_failed(self, msg: object) -> int:
        return _run("peer_failed", pushgate.peer_failed)

    def ksr_pushgate_peer_reply(self, msg: object) -> int:
        return _run("peer_reply", cluster.alias_reply)

    def ksr_pushgate_evapi(self, msg: object, evname: str) -> int:
        return _run("evapi", lambda: pushgate.evapi(evname))

    def ksr_pushgate_ack_timer(self, msg: object, evname: str = "") -> int:
        return _run("ack_timer", pushgate.ack_timer)

    def ksr_pushgate_xhttp(self, msg: object, evname: str = "") -> int:
        return _run("http", pushgate.http)


def _run(name: str, step: Callable[[], object]) -> int:
    try:
        step()
    except Exception:
        log_error(name)
        return -1
    return OK
