"""Pushgate for a native kamailio.cfg: the script pushgate.cfg gives app_python3.

pushgate.cfg's ``route(PUSHGATE_*)`` blocks call the methods below with
``python_exec("name")``. What the cfg sees of a return value: 1 is true, -1 false. Never
0 (it ends the whole script, even inside ``if``), never None or an exception escaping
(it poisons the next ``python_exec`` of the process): every method is wrapped.
"""

from __future__ import annotations

from collections.abc import Callable

from kemi.hooks import Hooks, check_setup, log_error
from kemi.host import NativeHost
from kemi.settings import Settings

TRUE = 1
FALSE = -1


def mod_init() -> NativeEntry:
    check_setup()
    return NativeEntry()


def _run(name: str, step: Callable[[], object], on_error: int) -> int:
    try:
        result = step()
    except Exception:
        log_error(name)
        return on_error
    return FALSE if result is False else TRUE


class NativeEntry:
    """The methods python_exec calls, one per block of pushgate.cfg."""

    def __init__(self) -> None:
        self.host = NativeHost()
        self.hooks = Hooks(Settings.from_cfg(), self.host)

    def child_init(self, rank: int) -> int:
        return 0

    # On a bug: requests go on as if Pushgate were not there (False / True below are
    # "not ours" for each hook), so the host's own routing still answers them.
    def cancel(self, msg: object) -> int:
        return _run("cancel", self.hooks.cancel, FALSE)

    def trusted(self, msg: object) -> int:
        return _run("trusted", self.hooks.trusted, FALSE)

    def register(self, msg: object) -> int:
        return _run("register", self.hooks.register, TRUE)

    def registered(self, msg: object) -> int:
        return _run("registered", self.hooks.registered, TRUE)

    def location(self, msg: object) -> int:
        return _run("location", self.hooks.location, FALSE)

    def branch(self, msg: object) -> int:
        return _run("branch", self.hooks.branch, TRUE)

    def reply(self, msg: object) -> int:
        return _run("reply", self.hooks.reply, TRUE)

    # Edge mode (edge.cfg): on a bug, the REGISTER still reaches the upstream (nothing
    # kept), a request from the upstream is refused (no flow verified) or relayed over
    # its verified flow, as by a plain edge proxy.
    def edge_register(self, msg: object) -> int:
        return _run("edge_register", self.hooks.edge_register, TRUE)

    def edge_registered(self, msg: object) -> int:
        return _run("edge_registered", self.hooks.edge_registered, TRUE)

    def edge_route(self, msg: object) -> int:
        return _run("edge_route", self.hooks.edge_route, FALSE)

    def edge_location(self, msg: object) -> int:
        return _run("edge_location", self.hooks.edge_location, FALSE)

    def edge_outgoing(self, msg: object) -> int:
        return _run("edge_outgoing", self.hooks.edge_outgoing, TRUE)

    def cluster_message(self, msg: object) -> int:
        return _run("cluster_message", self.hooks.cluster_message, TRUE)

    # Several nodes (WITH_PUSHGATE_CLUSTER): on a bug, a relayed call goes through the
    # host's own routing, a failed relay gets the host's error reply.
    def cluster_register(self, msg: object) -> int:
        return _run("cluster_register", self.hooks.cluster_register, TRUE)

    def from_node(self, msg: object) -> int:
        return _run("from_node", self.hooks.from_node, FALSE)

    def relay_failed(self, msg: object) -> int:
        return _run("relay_failed", self.hooks.relay_failed, FALSE)

    def held_timeout(self, msg: object) -> int:
        return _run("held_timeout", self.hooks.held_timeout, TRUE)

    def resume(self, msg: object) -> int:
        return _run("resume", self.hooks.resume, TRUE)

    def cancelled(self, msg: object) -> int:
        return _run("cancelled", self.hooks.cancelled, TRUE)

    def push_failed(self, msg: object) -> int:
        return _run("push_failed", self.hooks.push_failed, TRUE)

    def peer_failed(self, msg: object) -> int:
        return _run("peer_failed", self.hooks.peer_failed, TRUE)

    def message_failed(self, msg: object) -> int:
        return _run("message_failed", self.hooks.message_failed, TRUE)

    def evapi(self, msg: object, evname: str) -> int:
        return _run("evapi", lambda: self.hooks.evapi(evname), TRUE)

    def ack_timer(self, msg: object) -> int:
        return _run("ack_timer", self.hooks.ack_timer, TRUE)

    def metrics(self, msg: object) -> int:
        return _run("metrics", self.hooks.metrics, TRUE)

    def next_continue(self, msg: object) -> int:
        """A transaction to t_continue is in $var(pushgate_t*): the cfg continues it."""
        return _run("next_continue", self.host.next_continue, FALSE)
