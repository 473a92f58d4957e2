"""Several nodes, the Kamailio-facing side (kemi/cluster.py and the hooks a host calls) on
a stand-in KSR: what a request from another node does, branches toward another node,
the reply route of a call relayed to a phone's flow here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit import fake_ksr

fake_ksr.install()

from kemi import cluster  # noqa: E402
from kemi.hooks import Hooks  # noqa: E402
from kemi.host import KemiHost, NativeHost  # noqa: E402
from kemi.settings import Settings  # noqa: E402
from pushgate.cluster import Node  # noqa: E402

A, B = "127.0.0.2", "127.0.0.3"
NODE_A = cluster.Cluster(node=Node("127.0.0.2:5060"), nodes=frozenset({A, B}))


@pytest.fixture
def ksr() -> Iterator[fake_ksr.FakeKSR]:
    yield fake_ksr.reset()


def hooks(host: NativeHost | KemiHost, *, clustered: bool = True) -> Hooks:
    # The defaults of pushgate.cfg (no #!define on the stand-in KSR).
    settings = Settings.from_cfg()
    made = Hooks(settings, host)
    made.cluster = NODE_A if clustered else None
    return made


def test_on_a_single_kamailio_nothing_is_from_a_node(ksr: fake_ksr.FakeKSR) -> None:
    ksr.method = "KDMQ"
    ksr.pvs["$si"] = B
    assert hooks(NativeHost(), clustered=False).from_node() is False
    assert ksr.calls == []


def test_kdmq_from_elsewhere_is_refused(ksr: fake_ksr.FakeKSR) -> None:
    ksr.method = "KDMQ"
    ksr.pvs["$si"] = "198.51.100.7"
    assert hooks(NativeHost()).from_node() is True
    assert ksr.called("sl", "sl_send_reply") == [(403, "Not a cluster node")]
    assert not ksr.called("dmq", "handle_message")


def test_in_dialog_request_from_a_node_is_the_hosts(ksr: fake_ksr.FakeKSR) -> None:
    ksr.method = "BYE"
    ksr.pvs["$si"] = B
    ksr.returns["siputils.has_totag"] = 1
    assert hooks(NativeHost()).from_node() is False
    # Its Route is left for the host's own loose_route.
    assert not ksr.called("rr", "loose_route")


@pytest.mark.parametrize(
    ("host", "reply_route"),
    [(NativeHost(), "PUSHGATE_PEER_REPLY"), (KemiHost(), "ksr_pushgate_peer_reply")],
)
def test_a_call_relayed_here_goes_over_the_flow_with_pushgates_reply_route(
    ksr: fake_ksr.FakeKSR, host: NativeHost | KemiHost, reply_route: str
) -> None:
    ksr.pvs.update({"$si": B, "$du": "sip:198.51.100.7:40123;transport=tcp"})
    ksr.returns["siputils.has_totag"] = -1
    assert hooks(host).from_node() is True
    assert ksr.called("tm", "t_on_reply") == [(reply_route,)]
    assert ksr.called("tm", "t_relay") == [()]
    assert ("core", "set_forward_no_connect", ()) in ksr.calls


def test_a_call_from_elsewhere_is_not_a_relay(ksr: fake_ksr.FakeKSR) -> None:
    ksr.pvs.update({"$si": "198.51.100.9", "$du": "sip:198.51.100.7:40123;transport=tcp"})
    ksr.returns["siputils.has_totag"] = -1
    assert hooks(NativeHost()).from_node() is False
    assert not ksr.called("tm", "t_relay")


@pytest.mark.parametrize(
    ("dd", "dp", "toward"),
    [(B, 5060, True), (A, 5060, False), ("198.51.100.7", 40123, False), (None, None, False)],
)
def test_to_node(ksr: fake_ksr.FakeKSR, dd: str | None, dp: int | None, toward: bool) -> None:
    ksr.pvs.update({"$dd": dd, "$dp": dp})
    assert NODE_A.to_node() is toward


def test_a_branch_toward_another_node_drops_the_bindings_flags(ksr: fake_ksr.FakeKSR) -> None:
    ksr.pvs.update({"$dd": B, "$dp": 5060, "$bf": 1 << 7})
    assert hooks(NativeHost()).branch() is True
    assert ksr.pvs["$bf"] == 0


def test_a_branch_to_the_phone_keeps_them(ksr: fake_ksr.FakeKSR) -> None:
    ksr.pvs.update({"$dd": "198.51.100.7", "$dp": 40123, "$bf": 1 << 7})
    assert hooks(NativeHost()).branch() is True
    assert ksr.pvs["$bf"] == 1 << 7


@pytest.mark.parametrize(
    ("status", "proto", "aliased"),
    [(200, "tcp", True), (180, "tls", True), (100, "tcp", False), (200, "udp", False)],
)
def test_alias_reply(ksr: fake_ksr.FakeKSR, status: int, proto: str, aliased: bool) -> None:
    ksr.pvs.update({"$rs": status, "$pr": proto})
    cluster.alias_reply()
    assert bool(ksr.called("nathelper", "add_contact_alias")) is aliased
