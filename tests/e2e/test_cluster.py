"""Two Kamailio nodes sharing registrations (docs/cluster.md): real Kamailio processes on
127.0.0.2 (A) and 127.0.0.3 (B), dmq + dmq_usrloc, one PostgreSQL, one pushd per node,
the fake APNs counting pushes; SIPp phones and callers on 127.0.0.1 (callers from a
foreign domain: the stock cfg challenges INVITEs from local users).

Each case runs on the shapes an operator deploys (``shape``):

- ``allinone``: our kamailio.cfg with ``WITH_CLUSTER``;
- ``default``: the drop-in shape, Kamailio's own default cfg from the installed package
  with Pushgate's patch applied as docs/integrate.md shows
  (``patches/kamailio-<version>-default.patch``), ``import_file "pushgate.cfg"`` and
  ``WITH_PUSHGATE_CLUSTER``;
- ``kemi``: Kamailio's KEMI Python example with its patch (every case but the shared
  push counts)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pushgate.flood import device_count_key
from testkit.certs import TestPki
from testkit.cluster import Cluster
from testkit.postgres import PostgresCluster
from testkit.procs import wait_until
from testkit.stack import DOMAIN, ul_contacts
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
A, B = 0, 1
SHAPES = ("allinone", "default", "kemi")
COUNTS_SHARED = ("allinone", "default")
"""The shapes whose push counts are the cluster's: the KEMI example loads htable before
dmq (it hard-defines WITH_ANTIFLOOD), so its counts stay per node (docs/cluster.md)."""
PATCHES = {"default": "default", "kemi": "kemi-python"}


@pytest.fixture
def make_cluster(
    pg: PostgresCluster, pki: TestPki, tmp_path: Path, kamailio_version: str
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def factory(shape: str = "allinone", **kw: object) -> Cluster:
        if shape != "allinone":
            patch = REPO / "patches" / f"kamailio-{kamailio_version}-{PATCHES[shape]}.patch"
            kw = {"flavour": shape, "patches": [patch], **kw}
        cluster = Cluster(
            tmp_path / f"cluster{len(made)}", pg, pki, kamailio=kamailio_version, **kw
        )
        made.append(cluster)
        return cluster.start()

    yield factory
    for cluster in made:
        cluster.stop()


def call_pushes(cluster: Cluster, token: str) -> int:
    assert cluster.apns is not None
    return sum(1 for p in cluster.apns.pushes if p.token == token and p.push_type == "voip")


def register_to_invite(trace: str) -> tuple[float, float]:
    """From a phone's SIPp message trace: when it sent its last REGISTER before the first
    INVITE it received, and when that INVITE came (SIPp's own clock, seconds)."""
    sent = None
    for block in trace.split("-" * 47 + " ")[1:]:
        stamp, _, rest = block.partition("\n")
        when = datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        head, _, message = rest.partition("\n\n")
        if "message sent" in head and message.startswith("REGISTER "):
            sent = when
        elif "message received" in head and message.startswith("INVITE ") and sent:
            return sent, when
    raise AssertionError("no REGISTER then INVITE in the phone's trace")


def contacts_on(cluster: Cluster, i: int, user: str) -> list[str]:
    """``user``'s contacts in node i's usrloc (the stock cfg's AoRs have no domain)."""
    dump = cluster.ul_dump(i)
    return ul_contacts(dump, f"{user}@{DOMAIN}") + ul_contacts(dump, user)


def registered_on(cluster: Cluster, i: int, user: str) -> bool:
    return bool(contacts_on(cluster, i, user))


@on_kamailio("5.6", "6.0")
@pytest.mark.parametrize("shape", SHAPES)
def test_live_on_a_called_through_b(make_cluster: Callable[..., Cluster], shape: str) -> None:
    cluster = make_cluster(shape)
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
@pytest.mark.parametrize("shape", SHAPES)
def test_asleep_on_a_called_through_b_one_push_wakes_on_a(
    make_cluster: Callable[..., Cluster], shape: str
) -> None:
    cluster = make_cluster(shape)
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
@pytest.mark.parametrize("shape", SHAPES)
def test_held_on_a_woken_register_lands_on_b(
    make_cluster: Callable[..., Cluster], shape: str
) -> None:
    cluster = make_cluster(shape)
    a, b = cluster.nodes
    phone = cluster.phone("alice")
    cluster.register_and_sleep(phone, node=a)
    wait_until(lambda: registered_on(cluster, B, "alice"), 10, "alice replicated to B")
    woken = cluster.wake_on_push(phone, node=lambda: b)

    caller = cluster.call("alice", expect_answer=True, node=a)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert woken and woken[0].wait(15) == 97, woken[0].output()[-3000:] if woken else ""
    assert call_pushes(cluster, phone.token) == 1
    # Cross-node wake, as the phone sees it: its REGISTER (the one B saved) sent -> the
    # held INVITE in, A having resumed it on dmq_usrloc's copy and relayed it through B.
    assert [e for e in cluster.node_events(A, "resume") if e.get("via") == "dmq"]
    sent, got = register_to_invite(woken[0].messages())
    ms = 1000 * (got - sent)
    print(f"cross-node wake ({shape}): REGISTER sent to B -> held INVITE in: {ms:.1f} ms")
    assert 0 < ms < 1000
    assert not cluster.node_events(B, "push_request")


@on_kamailio("5.6", "6.0")
def test_woken_on_b_by_a_push_from_a_skips_the_digest_round_trip(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The wake token of A's push is B's too (htable over dmq): the woken phone's REGISTER
    on B with it gets 200 at once, no 401; the token is spent on both nodes."""
    cluster = make_cluster()
    a, b = cluster.nodes
    phone = cluster.phone("alice")
    cluster.register_and_sleep(phone, node=a)
    wait_until(lambda: registered_on(cluster, B, "alice"), 10, "alice replicated to B")
    woken = cluster.wake_on_push(phone, node=lambda: b, fast=True)

    caller = cluster.call("alice", expect_answer=True, node=a)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    # phone_register_fast expects 200 to its first REGISTER: a 401 fails it.
    assert woken and woken[0].wait(15) == 97, woken[0].output()[-3000:] if woken else ""
    replies = [m.splitlines()[0] for m in woken[0].received() if m.startswith("SIP/2.0")]
    assert replies and replies[0] == "SIP/2.0 200 OK" and "401" not in " ".join(replies)
    assert [e.get("accepted") for e in cluster.node_events(B, "wake_token")] == ["True"]
    assert len(cluster.node_events(A, "push_request")) == 1
    sent, got = register_to_invite(woken[0].messages())
    print(
        f"cross-node fast wake: REGISTER with the token sent to B -> INVITE in: "
        f"{1000 * (got - sent):.1f} ms"
    )
    # Spent everywhere: the same token again, on A this time, is refused (digest).
    assert cluster.apns is not None
    token = next(
        p.payload["wake_token"]
        for p in cluster.apns.pushes
        if p.push_type == "voip" and p.payload is not None
    )
    again = cluster.register(phone, node=a, wake_token=token)
    assert again.wait(15) != 0
    assert [e.get("accepted") for e in cluster.node_events(A, "wake_token")] == ["False"]


@on_kamailio("5.6", "6.0")
@pytest.mark.parametrize("shape", SHAPES)
def test_node_killed_with_calls_held_then_restarted(
    make_cluster: Callable[..., Cluster], shape: str
) -> None:
    cluster = make_cluster(shape)
    a, b = cluster.nodes
    alice, carol, dave = cluster.phone("alice"), cluster.phone("carol"), cluster.phone("dave")
    for phone in (alice, carol, dave):
        cluster.register_and_sleep(phone, node=a)
    wait_until(lambda: registered_on(cluster, B, "dave"), 10, "bindings replicated to B")
    # Two calls held on A (their phones do not wake).
    held = [
        cluster.call(user, expect_answer=False, node=a, label=f"held-{user}")
        for user in ("alice", "carol")
    ]
    wait_until(lambda: len(cluster.node_events(A, "push_request")) >= 2, 10, "two calls held on A")

    cluster.kill_node(A)
    killed = time.time()
    # What their callers see: 100 Trying from A, then nothing from it; their own timer or
    # an upstream proxy's (Timer C / fr_inv_timer) ends them. Nothing is left on B.
    time.sleep(1)
    for run in held:
        assert run.proc.poll() is None
        assert [m.split()[1] for m in run.received()] == ["100"]
        run.stop()
    # The bindings are intact on B: its memory, and the shared table (the stock cfg
    # writes it back later: usrloc db_mode 2).
    for user in ("alice", "carol", "dave"):
        assert len(contacts_on(cluster, B, user)) == 1
        if shape == "allinone":
            assert len(cluster.bindings(user)) == 1

    # A new call into B for a phone whose flow was on A: A's port refuses B's connection
    # (a host that is gone: no answer within 3 s), B holds and pushes once, the phone
    # re-registers on B and answers. (alice and carol were pushed
    # by A: a call for them waits for that push's wake-up, up to the hold timeout.)
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
        f"{shape}, call into B with A dead: INVITE in -> 200 "
        f"{float(answered[-1]['t']) - invite_in:.2f} s (placed {invite_in - killed:.1f} s "
        "after the kill)"
    )

    # A restarts: dmq gives it every binding back; it serves calls again (the phone now
    # sleeps on B: A relays through B, B answers 430, A holds, pushes, the phone wakes).
    connected = len(cluster.node_events(A, "pushd_connected"))
    started = time.time()
    cluster.restart_node(A)
    wait_until(
        lambda: all(registered_on(cluster, A, u) for u in ("alice", "carol", "dave")),
        10,
        "A synced",
    )
    print(f"{shape}: A restarted and synced in {time.time() - started:.2f} s")
    wait_until(
        lambda: len(cluster.node_events(A, "pushd_connected")) > connected, 10, "A's pushd back"
    )
    woken_again = cluster.wake_on_push(dave, node=lambda: a)
    caller = cluster.call("dave", expect_answer=True, node=a, label="after-restart")
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert woken_again and woken_again[0].wait(15) == 97
    assert call_pushes(cluster, dave.token) == 2


@pytest.mark.parametrize("shape", COUNTS_SHARED)
def test_two_calls_on_two_nodes_for_one_sleeping_phone(
    make_cluster: Callable[..., Cluster], shape: str
) -> None:
    """A call into A and one into B for the same sleeping phone: each node holds its own
    call and pushes for it (one push per call; pushes in flight are per node), both reach
    the phone when it wakes. The push counts are the cluster's (htable over dmq): A's push
    is counted on B before B's call arrives. (In the drop-in shape only with a host cfg
    that loads htable after dmq: Kamailio's default cfg without WITH_ANTIFLOOD.)"""
    cluster = make_cluster(shape)
    a, b = cluster.nodes
    phone = cluster.phone("alice")
    cluster.register_and_sleep(phone, node=a)
    wait_until(lambda: registered_on(cluster, B, "alice"), 10, "alice replicated to B")
    woken = cluster.wake_on_push(phone, node=lambda: a, many=True, delay=1.0)

    first = cluster.call("alice", expect_answer=True, node=a, label="first")
    wait_until(lambda: call_pushes(cluster, phone.token) == 1, 10, "the first call's push")
    wait_until(
        lambda: device_count_key("apns", phone.token) in b.kamcmd("htable.dump", "pushgate_rate"),
        5,
        "A's push counted on B",
    )
    second = cluster.call("alice", expect_answer=True, node=b, label="second")
    assert first.wait(30) == 0, first.output()[-3000:]
    assert second.wait(30) == 0, second.output()[-3000:]
    assert call_pushes(cluster, phone.token) == 2
    assert len(cluster.node_events(A, "push_request")) == 1
    assert len(cluster.node_events(B, "push_request")) == 1
    assert woken
