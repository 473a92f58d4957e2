"""Two nodes of the drop-in shape (docs/cluster.md): each real Kamailio runs Kamailio's own
default cfg from the installed package with Pushgate's patch applied as docs/integrate.md
shows (``patches/kamailio-<version>-default.patch``), ``import_file "pushgate.cfg"`` and
``WITH_PUSHGATE_CLUSTER`` (one case also with the KEMI Python example and its patch);
nodes on 127.0.0.2 (A) and 127.0.0.3 (B), dmq + dmq_usrloc, one PostgreSQL, one pushd per
node, the fake APNs counting pushes; SIPp phones and callers on 127.0.0.1 (callers from a
foreign domain: the stock cfg challenges INVITEs from local users)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.certs import TestPki
from testkit.cluster import Cluster
from testkit.postgres import PostgresCluster
from testkit.procs import wait_until
from testkit.stack import ul_contacts
from tests.conftest import on_kamailio
from tests.e2e.test_cluster import call_pushes, register_to_invite

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
A, B = 0, 1


def contacts_on(cluster: Cluster, i: int, user: str) -> list[str]:
    """``user``'s contacts in node i's usrloc (the stock cfg's AoRs have no domain)."""
    return ul_contacts(cluster.ul_dump(i), user)


def registered_on(cluster: Cluster, i: int, user: str) -> bool:
    return bool(contacts_on(cluster, i, user))


@pytest.fixture
def make_cluster(
    pg: PostgresCluster, pki: TestPki, tmp_path: Path, kamailio_version: str
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def factory(flavour: str = "default", **kw: object) -> Cluster:
        name = {"default": "default", "kemi": "kemi-python"}[flavour]
        patch = REPO / "patches" / f"kamailio-{kamailio_version}-{name}.patch"
        cluster = Cluster(
            tmp_path / f"cluster{len(made)}",
            pg,
            pki,
            kamailio=kamailio_version,
            flavour=flavour,
            patches=[patch],
            **kw,
        )
        made.append(cluster)
        return cluster.start()

    yield factory
    for cluster in made:
        cluster.stop()


@on_kamailio("5.6", "6.0")
@pytest.mark.parametrize("flavour", ["default", "kemi"])
def test_live_on_a_called_through_b(make_cluster: Callable[..., Cluster], flavour: str) -> None:
    cluster = make_cluster(flavour)
    a, b = cluster.nodes
    phone = cluster.phone("alice")
    live = cluster.register(phone, keep_open_ms=15000, answer=True, node=a)
    wait_until(lambda: registered_on(cluster, B, "alice"), 10, "alice replicated to B")
    # A's Path (with the phone's flow) came with the binding.
    assert "sip:127.0.0.2:" in cluster.ul_dump(B)

    caller = cluster.call("alice", expect_answer=True, node=b)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert live.wait(15) == 97, live.output()[-3000:]
    assert call_pushes(cluster, phone.token) == 0
    # B relayed it through A (the flow's owner), which sent it over the phone's flow.
    invite = next(m for m in live.received() if m.startswith("INVITE "))
    assert "Record-Route: <sip:127.0.0.2" in invite and "127.0.0.3" in invite


@on_kamailio("5.6", "6.0")
def test_asleep_on_a_called_through_b_one_push_wakes_on_a(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    a, b = cluster.nodes
    phone = cluster.phone("alice")
    cluster.register_and_sleep(phone, node=a)
    wait_until(lambda: registered_on(cluster, B, "alice"), 10, "alice replicated to B")
    woken = cluster.wake_on_push(phone, node=lambda: a)

    caller = cluster.call("alice", expect_answer=True, node=b)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert woken and woken[0].wait(15) == 97, woken[0].output()[-3000:] if woken else ""
    # A said the flow is gone (430); B held the call and pushed; A pushed nothing.
    assert call_pushes(cluster, phone.token) == 1
    assert cluster.node_events(A, "flow_failed")
    assert cluster.node_events(B, "peer_flow_failed")
    assert not cluster.node_events(A, "push_request")
    assert len(cluster.node_events(B, "push_request")) == 1
    assert [e for e in cluster.node_events(B, "resume") if e.get("via") == "dmq"]


@on_kamailio("5.6", "6.0")
@pytest.mark.parametrize("flavour", ["default", "kemi"])
def test_held_on_a_woken_register_lands_on_b(
    make_cluster: Callable[..., Cluster], flavour: str
) -> None:
    """Also with Kamailio's KEMI Python example and its patch (pushgate.from_node(),
    cluster_register(), relay_failed())."""
    cluster = make_cluster(flavour)
    a, b = cluster.nodes
    phone = cluster.phone("alice")
    cluster.register_and_sleep(phone, node=a)
    wait_until(lambda: registered_on(cluster, B, "alice"), 10, "alice replicated to B")
    woken = cluster.wake_on_push(phone, node=lambda: b)

    caller = cluster.call("alice", expect_answer=True, node=a)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert woken and woken[0].wait(15) == 97, woken[0].output()[-3000:] if woken else ""
    assert call_pushes(cluster, phone.token) == 1
    # A resumed the held call on dmq_usrloc's copy of B's save() and relayed it through B.
    assert [e for e in cluster.node_events(A, "resume") if e.get("via") == "dmq"]
    assert not cluster.node_events(B, "push_request")
    sent, got = register_to_invite(woken[0].messages())
    ms = 1000 * (got - sent)
    print(f"cross-node wake ({flavour}): REGISTER sent to B -> held INVITE in: {ms:.1f} ms")
    assert 0 < ms < 1000


@on_kamailio("5.6", "6.0")
def test_node_killed_with_calls_held(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    a, b = cluster.nodes
    alice, carol, dave = cluster.phone("alice"), cluster.phone("carol"), cluster.phone("dave")
    for phone in (alice, carol, dave):
        cluster.register_and_sleep(phone, node=a)
    wait_until(lambda: registered_on(cluster, B, "dave"), 10, "bindings replicated to B")
    held = [
        cluster.call(user, expect_answer=False, node=a, label=f"held-{user}")
        for user in ("alice", "carol")
    ]
    wait_until(lambda: len(cluster.node_events(A, "push_request")) == 2, 10, "two calls held on A")

    cluster.kill_node(A)
    killed = time.time()
    # Their callers had 100 Trying from A and nothing after: their own timers end them.
    time.sleep(1)
    for run in held:
        assert run.proc.poll() is None
        assert [m.split()[1] for m in run.received()] == ["100"]
        run.stop()
    # Every binding is intact in B's memory (the stock cfg writes the table back later:
    # usrloc db_mode 2).
    for user in ("alice", "carol", "dave"):
        assert len(contacts_on(cluster, B, user)) == 1

    # A new call into B for a phone whose flow was on A: A's port refuses the relay, B
    # holds the call, pushes once, the phone re-registers on B and answers.
    woken = cluster.wake_on_push(dave, node=lambda: b)
    caller = cluster.call("dave", expect_answer=True, node=b, label="after-kill")
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert woken and woken[0].wait(15) == 97, woken[0].output()[-3000:] if woken else ""
    assert call_pushes(cluster, dave.token) == 1
    failed = cluster.node_events(B, "peer_flow_failed")
    assert failed and failed[-1]["status"] == "send_failed"
    invite_in = float(cluster.node_events(B, "request_in")[-1]["t"])
    answered = [e for e in cluster.node_events(B, "reply") if e.get("status") == "200"]
    print(
        f"drop-in, call into B with A dead: INVITE in -> 200 "
        f"{float(answered[-1]['t']) - invite_in:.2f} s (placed {invite_in - killed:.1f} s "
        "after the kill)"
    )

    # A restarts: dmq's sync gives it every binding back; it serves again.
    started = time.time()
    connected = len(cluster.node_events(A, "pushd_connected"))
    cluster.restart_node(A)
    wait_until(
        lambda: all(registered_on(cluster, A, u) for u in ("alice", "carol", "dave")),
        10,
        "A synced",
    )
    print(f"drop-in: A restarted and synced in {time.time() - started:.2f} s")
    wait_until(
        lambda: len(cluster.node_events(A, "pushd_connected")) > connected, 10, "A's pushd back"
    )
    woken_again = cluster.wake_on_push(dave, node=lambda: a)
    caller = cluster.call("dave", expect_answer=True, node=a, label="after-restart")
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert woken_again and woken_again[0].wait(15) == 97
    assert call_pushes(cluster, dave.token) == 2


def test_push_counts_are_the_clusters(make_cluster: Callable[..., Cluster]) -> None:
    """Kamailio's default cfg without WITH_ANTIFLOOD: htable is loaded by pushgate.cfg after
    dmq, so the push counts replicate (htable's dmq). A call into A and one into B for the
    same sleeping phone: each node holds and pushes its own, A's push is counted on B, both
    calls reach the phone when it wakes."""
    cluster = make_cluster()
    a, b = cluster.nodes
    phone = cluster.phone("alice")
    cluster.register_and_sleep(phone, node=a)
    wait_until(lambda: registered_on(cluster, B, "alice"), 10, "alice replicated to B")
    woken = cluster.wake_on_push(phone, node=lambda: a, many=True, delay=1.0)

    first = cluster.call("alice", expect_answer=True, node=a, label="first")
    wait_until(lambda: call_pushes(cluster, phone.token) == 1, 10, "the first call's push")
    wait_until(
        lambda: "d:uloc-" in b.kamcmd("htable.dump", "pushgate_rate"), 5, "A's push counted on B"
    )
    second = cluster.call("alice", expect_answer=True, node=b, label="second")
    assert first.wait(30) == 0, first.output()[-3000:]
    assert second.wait(30) == 0, second.output()[-3000:]
    assert call_pushes(cluster, phone.token) == 2
    assert len(cluster.node_events(A, "push_request")) == 1
    assert len(cluster.node_events(B, "push_request")) == 1
    assert woken
