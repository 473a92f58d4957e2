"""Relay / push / 480 decision from bindings and their flow state."""

from __future__ import annotations

from pushgate import pn_params
from pushgate.decision import Action, Binding, decide, expired, flow_alive, transport_of

PUSH = pn_params.parse_uri(
    "sip:a@h;pn-provider=apns;pn-prid=" + "c" * 64 + ";pn-param=ABCDE12345.com.example.app.voip"
)


def binding(ruid: str, alive: bool, push: bool = True, transport: str = "tcp") -> Binding:
    return Binding(
        ruid=ruid,
        uri=f"sip:{ruid}@h",
        instance="",
        transport=transport,
        alive=alive,
        push=PUSH if push else None,
    )


def test_live_flow_is_relayed_and_sleeping_ones_listed_for_push() -> None:
    d = decide([binding("desk", True, push=False), binding("iphone", False)])
    assert d.action is Action.RELAY
    assert [b.ruid for b in d.relay] == ["desk"]
    assert [b.ruid for b in d.push] == ["iphone"]


def test_only_sleeping_push_capable_bindings_mean_push() -> None:
    d = decide([binding("iphone", False), binding("android", False)])
    assert d.action is Action.PUSH
    assert [b.ruid for b in d.push] == ["iphone", "android"]


def test_dead_flow_without_push_params_is_unavailable_at_once() -> None:
    d = decide([binding("softphone", False, push=False)])
    assert d.action is Action.UNAVAILABLE and d.reason


def test_no_bindings_is_unavailable() -> None:
    assert decide([]).action is Action.UNAVAILABLE


def test_flow_state_comes_from_the_connection_not_a_timer() -> None:
    assert flow_alive("tcp", 7, connection_open=True)
    assert not flow_alive("tcp", 7, connection_open=False)
    # Loaded from the database after a restart: no connection id.
    assert not flow_alive("tls", -1, connection_open=True)
    # UDP has no connection state: always worth a try.
    assert flow_alive("udp", -1, connection_open=False)


def test_transport_from_socket_or_uri() -> None:
    assert transport_of("tcp:127.0.0.1:5060", "", "sip:a@h") == "tcp"
    assert transport_of("", "sip:1.2.3.4:5;transport=TLS", "sip:a@h") == "tls"
    assert transport_of("", "", "sip:a@h;transport=ws") == "ws"
    assert transport_of("", "", "sip:a@h") == "udp"


def test_expired_is_absolute_and_zero_is_permanent() -> None:
    assert expired(100, now=100.0)
    assert not expired(101, now=100.0)
    assert not expired(0, now=100.0)


def test_a_register_wakes_the_device_only_if_usrloc_kept_a_binding_on_its_connection() -> None:
    from pushgate.decision import Binding, woke_on

    def b(conid: int, alive: bool = True) -> Binding:
        return Binding(
            ruid="r",
            uri="sip:a@h",
            instance="i",
            transport="tcp",
            alive=alive,
            push=None,
            conid=conid,
        )

    assert woke_on([b(7)], conid=7, requested=False)
    # An un-REGISTER whose Contact matched nothing: the old binding is on another flow.
    assert not woke_on([b(3, alive=False)], conid=7, requested=True)
    assert not woke_on([], conid=7, requested=True)
    # UDP: no connection to look at, the request decides.
    assert woke_on([b(0)], conid=0, requested=True)
    assert not woke_on([b(0)], conid=0, requested=False)
