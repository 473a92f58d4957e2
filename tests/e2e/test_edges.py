"""Several edges in front of one registrar (edge.cfg with WITH_CLUSTER, docs/edge.md):
real Kamailio edges on 127.0.0.2 (A) and 127.0.0.3 (B), each with its own database and
pushd, dmq between them, in front of an unmodified stock Kamailio registrar (Debian's
default cfg) on 127.0.0.1; SIPp phones and callers on 127.0.0.1, the fake APNs counting
pushes. A phone may go to sleep behind one edge and wake up through the other."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pushgate.flood import device_count_key
from testkit.certs import TestPki
from testkit.edges import Edges
from testkit.postgres import PostgresCluster
from testkit.procs import wait_until
from tests.conftest import on_kamailio
from tests.e2e.test_cluster import call_pushes, register_to_invite

pytestmark = pytest.mark.e2e

A, B = 0, 1
FOREIGN = "caller.example"


@pytest.fixture
def make_edges(
    pg: PostgresCluster, pki: TestPki, tmp_path: Path, kamailio_version: str
) -> Iterator[Callable[..., Edges]]:
    made: list[Edges] = []

    def factory(**kw: object) -> Edges:
        edges = Edges(tmp_path / f"edges{len(made)}", pg, pki, kamailio=kamailio_version, **kw)
        made.append(edges)
        return edges.start()

    yield factory
    for edges in made:
        edges.stop()


def record_routes(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.lower().startswith("record-route:")]


@on_kamailio("5.6", "6.0")
def test_call_held_on_a_reaches_the_phone_woken_through_b(
    make_edges: Callable[..., Edges],
) -> None:
    edges = make_edges()
    a, b = edges.nodes
    phone = edges.phone("alice")
    edges.register_and_sleep(phone, node=a)
    woken = edges.wake_on_push(phone, node=lambda: b)

    caller = edges.call("alice", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert len(woken) == 1 and woken[0].wait(15) == 97, woken[0].output()[-3000:]
    assert call_pushes(edges, phone.token) == 1
    # A held it and pushed; the phone registered through B; B told A (dmq); A sent the
    # INVITE through B, which record-routed it with the new flow's token: the dialog
    # (the caller's BYE above) goes through B only.
    invite = next(m for m in woken[0].received() if m.startswith("INVITE "))
    assert [r for r in record_routes(invite) if "127.0.0.3" in r], invite
    assert not [r for r in record_routes(invite) if "127.0.0.2" in r], invite
    assert [e for e in edges.node_events(A, "edge_handoff_deliver")]
    assert [e for e in edges.node_events(B, "edge_handoff_sent")]
    sent, got = register_to_invite(woken[0].messages())
    print(f"\nREGISTER through B -> INVITE held on A at the phone: {1000 * (got - sent):.0f} ms")
    # The push budgets are the edges' together: A's push is counted on B, under the
    # device's push token (its bindings' ruids differ between the edges).
    wait_until(
        lambda: device_count_key("apns", phone.token) in b.kamcmd("htable.dump", "pushgate_rate"),
        5,
        "A's push counted on B",
    )


def test_after_the_move_calls_go_through_b_without_another_push(
    make_edges: Callable[..., Edges],
) -> None:
    """Kamailio's registrar replaces the binding (same instance and reg-id): its Path now
    names B, so the next call goes through B alone, to the phone's live flow."""
    edges = make_edges()
    a, b = edges.nodes
    phone = edges.phone("bob")
    edges.register_and_sleep(phone, node=a)
    woken = edges.wake_on_push(phone, node=lambda: b, many=True)
    first = edges.call("bob", expect_answer=True, caller_domain=FOREIGN, label="first")
    assert first.wait(30) == 0, first.output()[-3000:]
    assert len(edges.upstream_bindings("bob")) == 1
    second = edges.call("bob", expect_answer=True, caller_domain=FOREIGN, label="second")
    assert second.wait(30) == 0, second.output()[-3000:]
    assert len(woken) == 1 and woken[0].alive()
    assert call_pushes(edges, phone.token) == 1
    assert len(edges.node_events(A, "request_in")) == 1  # the first call only
    assert [e["action"] for e in edges.node_events(B, "request_in")] == ["relay", "relay"]


def test_edge_killed_with_a_call_held_its_woken_phone_is_reached_through_b(
    make_edges: Callable[..., Edges],
) -> None:
    """A dies holding a call; the phone its push woke registers through B: that call is
    gone with A (its caller had 100 Trying only; the upstream's timer ends it), the
    binding moves to B at the upstream, and the next call reaches the phone through B."""
    edges = make_edges()
    a, b = edges.nodes
    phone = edges.phone("carol")
    edges.register_and_sleep(phone, node=a)
    woken = edges.wake_on_push(phone, node=lambda: b, many=True)
    # The phone wakes only once A is dead.
    a_dead = threading.Event()
    wake = edges.on_push[phone.token]
    edges.on_push[phone.token] = lambda record: (a_dead.wait(10), wake(record))[-1]
    held = edges.call("carol", expect_answer=False, caller_domain=FOREIGN, label="held")
    wait_until(lambda: call_pushes(edges, phone.token) == 1, 10, "carol pushed by A")
    edges.kill_node(A)
    a_dead.set()
    wait_until(lambda: len(woken) == 1 and "carol" in edges.ul_dump(B), 10, "carol through B")
    assert [m.split()[1] for m in held.received() if m.startswith("SIP/2.0")] == ["100"]
    held.stop()
    wait_until(lambda: len(edges.upstream_bindings("carol")) == 1, 5, "upstream binding")

    after = edges.call("carol", expect_answer=True, caller_domain=FOREIGN, label="after")
    assert after.wait(30) == 0, after.output()[-3000:]
    assert call_pushes(edges, phone.token) == 1  # the next call found it awake behind B
    assert [e["action"] for e in edges.node_events(B, "request_in")] == ["relay"]
