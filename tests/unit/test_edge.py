"""Edge mode: the pure decisions (pushgate/edge.py) and the hooks on a stand-in KSR."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest

from tests.unit import fake_ksr

fake_ksr.install()

from kemi import edge, held_calls, ksr_bindings, native  # noqa: E402
from kemi.hooks import Hooks  # noqa: E402
from kemi.host import NativeHost, Route  # noqa: E402
from kemi.settings import Settings  # noqa: E402
from pushgate import edge as plan  # noqa: E402
from pushgate import flow_token, pn_params  # noqa: E402
from pushgate.decision import Binding  # noqa: E402
from pushgate.flow_token import Flow  # noqa: E402

SECRET = "unit-test-secret"
KEY = flow_token.key(SECRET)
AOR = "alice@example.com"
PHONE = Flow("tcp", "192.0.2.1", 5060, "198.51.100.7", 40000)
UPSTREAM = ("udp", "192.0.2.1", 5060, "203.0.113.5", 5060)
IPHONE_URI = (
    "sip:alice@198.51.100.7:40000;transport=tcp;pn-provider=apns;"
    "pn-prid=00fc13adff785122;pn-param=ABCDE12345.com.example.app.voip"
)
INSTANCE = "<urn:uuid:00000000-0000-4000-8000-000000000001>"


@pytest.fixture
def ksr() -> Iterator[fake_ksr.FakeKSR]:
    yield fake_ksr.reset()


def settings() -> Settings:
    """pushgate.cfg's defaults (no #!define on the stand-in KSR), in edge mode."""
    return dataclasses.replace(Settings.from_cfg(), edge=True, flow_secret=SECRET)


def binding(uri: str = IPHONE_URI, instance: str = INSTANCE, **kw: object) -> Binding:
    fields: dict[str, object] = {
        "ruid": "r1",
        "uri": uri,
        "instance": instance,
        "transport": "udp",
        "alive": True,
        "push": pn_params.parse_uri(uri),
        "target": uri,
    }
    fields.update(kw)
    return Binding(**fields)  # type: ignore[arg-type]


def arrive(ksr: fake_ksr.FakeKSR, flow: tuple[str, str, int, str, int], **pvs: object) -> None:
    """The current request came over ``flow`` (proto, local ip, local port, remote...)."""
    proto, rip, rport, sip, sport = flow
    ksr.pvs.update({"$pr": proto, "$Ri": rip, "$Rp": rport, "$si": sip, "$sp": sport})
    ksr.pvs.update({"$ci": "call-1", "$cs": "1", "$rm": ksr.method, **pvs})


# ----- pure decisions -----
def test_the_copy_keeps_bindings_registered_through_the_edge_that_the_upstream_holds() -> None:
    saved = [
        plan.Kept("r1", "sip:a@p1"),
        plan.Kept("r2", "sip:a@desk"),
        plan.Kept("r3", "sip:a@p2"),
    ]
    drop = plan.stale(
        saved,
        granted={"sip:a@p1", "sip:a@desk", "sip:a@p2"},
        registered={"sip:a@p1"},
        kept_before={"sip:a@p2"},
    )
    assert drop == ["r2"]  # the desk phone registered straight at the upstream
    # The upstream no longer holds p2 (removed or lapsed there): the copy drops it too.
    assert plan.stale(
        saved[:1] + saved[2:],
        granted={"sip:a@p1"},
        registered={"sip:a@p1"},
        kept_before={"sip:a@p2"},
    ) == ["r3"]


def test_the_upstreams_own_contact_params_do_not_make_another_binding() -> None:
    registered = "sip:a@10.0.0.5:40000;transport=tcp;pn-provider=fcm;pn-prid=t"
    echoed = registered + ";fs_nat=yes"  # FreeSWITCH lists its stored Contact
    assert plan.contact_key(echoed) == plan.contact_key(registered)
    assert plan.contact_key(registered.replace("40000", "40001")) != plan.contact_key(registered)
    assert plan.contact_key(registered.replace("tcp", "tls")) != plan.contact_key(registered)
    assert (
        plan.stale(
            [plan.Kept("r1", echoed)], granted={echoed}, registered={registered}, kept_before=set()
        )
        == []
    )
    assert plan.granted_expires([f"<{echoed}>;expires=60"], registered) == 60


def test_granted_expiry_and_the_cap_the_metrics_count() -> None:
    reply = [
        '<sip:a@p1;transport=tcp>;expires=3600;+sip.instance="<urn:uuid:1>"',
        "<sip:a@desk>;expires=120",
    ]
    assert plan.granted_expires(reply, "sip:a@p1;transport=tcp") == 3600
    assert plan.granted_expires(reply, "sip:a@gone") is None
    # FreeSWITCH echoes the Contact and grants in an Expires header.
    assert plan.granted_expires(["<sip:a@fs>"], "sip:a@fs", 300) == 300
    voip = pn_params.parse_uri(IPHONE_URI)
    assert voip is not None
    g = plan.grant(7200, 3600, voip)
    assert g.capped and not g.refreshable  # a VoIP-only iOS token: no background push
    fcm = pn_params.parse_uri("sip:a@h;pn-provider=fcm;pn-prid=tok-12345678;pn-param=my-project-1")
    assert fcm is not None
    assert not plan.grant(600, 600, fcm).capped and plan.grant(None, 600, fcm).refreshable


def test_a_held_call_waits_for_its_device_by_instance_or_push_token() -> None:
    target = {"instance": INSTANCE, "prid": "00fc13adff785122"}
    assert plan.woken_by([target], binding())
    assert not plan.woken_by([target], binding(instance="<urn:uuid:other>"))
    no_instance = binding(uri=IPHONE_URI.replace("40000", "40001"), instance="")
    assert plan.woken_by([{"instance": "", "prid": "00fc13adff785122"}], no_instance)
    assert plan.device_key("", "sip:x@h") == "sip:x@h"
    assert plan.device_key('"<urn:uuid:1>"', "sip:x@h") == "<urn:uuid:1>"


# ----- hooks on the stand-in KSR -----
def route_to_edge(ksr: fake_ksr.FakeKSR, token: str) -> None:
    ksr.returns["is_myself"] = True
    ksr.pvs["$route_uri"] = f"sip:{token}@192.0.2.1:5060;lr;ob"
    ksr.pvs["$(route_uri{uri.user})"] = token


def test_a_request_with_a_tampered_flow_token_is_refused_and_goes_nowhere(
    ksr: fake_ksr.FakeKSR,
) -> None:
    hooks = Hooks(settings(), NativeHost())
    token = flow_token.encode(PHONE, KEY)
    arrive(ksr, UPSTREAM)
    for bad in (token[:-6] + "AAAAA=", flow_token.encode(PHONE, flow_token.key("x")), ""):
        route_to_edge(ksr, bad)
        assert hooks.edge_route() is False
    assert [args[0] for args in ksr.called("sl", "sl_send_reply")] == [403, 403, 403]
    assert ksr.called("rr", "loose_route") == [] and "$du" not in ksr.pvs


def test_a_genuine_flow_token_sends_the_request_over_its_flow(ksr: fake_ksr.FakeKSR) -> None:
    hooks = Hooks(settings(), NativeHost())
    arrive(ksr, UPSTREAM)
    route_to_edge(ksr, flow_token.encode(PHONE, KEY))
    assert hooks.edge_route() is True
    assert ksr.called("rr", "loose_route") == [()]
    assert (ksr.pvs["$du"], ksr.pvs["$fs"]) == (PHONE.uri, PHONE.socket)
    assert ("core", "set_forward_no_connect", ()) in ksr.calls
    # The phone itself cannot pass its own token off as the upstream's request.
    arrive(ksr, (PHONE.proto, PHONE.local_ip, PHONE.local_port, PHONE.remote_ip, 40000))
    assert hooks.edge_route() is False


def test_a_register_is_relayed_with_its_flows_token_in_path_and_stashed(
    ksr: fake_ksr.FakeKSR,
) -> None:
    ksr.method = "REGISTER"
    hooks = Hooks(settings(), NativeHost())
    arrive(ksr, ("tcp", "192.0.2.1", 5060, "198.51.100.7", 40000), **{"$conid": 7})
    ksr.pvs.update(
        {"$hdrc(Contact)": 1, "$hdr(Expires)": "600", "$tU": "alice", "$td": "example.com"}
    )
    ksr.returns["hdr.get_idx"] = f'<{IPHONE_URI}>;+sip.instance="{INSTANCE}";reg-id=1'
    assert hooks.edge_register() is True
    ((user, params),) = ksr.called("path", "add_path_user_params")
    assert flow_token.decode(user, KEY) == PHONE and params == "ob"
    stash = edge.stashed()
    assert stash is not None
    assert (stash.flow, stash.conid, stash.expires) == (PHONE, 7, 600)
    assert [c.split(">")[0] for c in stash.contacts] == [f"<{IPHONE_URI}"]


def test_the_copy_tells_live_from_asleep_by_the_edges_own_flow_record(
    ksr: fake_ksr.FakeKSR,
) -> None:
    Hooks(settings(), NativeHost())
    assert ksr_bindings.flow_override is edge.with_flow
    b = binding()  # as usrloc gives it after save() of a UDP reply: "alive", wrongly
    asleep = edge.with_flow(AOR, b)
    assert (asleep.alive, asleep.transport) == (False, "tcp")  # no flow known: asleep
    edge.remember(AOR, INSTANCE, edge.FlowRecord(PHONE, 7, IPHONE_URI), 600)
    ksr.returns["tcpops.tcp_conid_alive"] = 1
    live = edge.with_flow(AOR, b)
    assert (live.alive, live.target) == (True, PHONE.uri)
    assert edge.device_of_flow(PHONE) == (AOR, INSTANCE)
    ksr.returns["tcpops.tcp_conid_alive"] = -1
    assert not edge.with_flow(AOR, b).alive
    # A binding of the same device with another Contact (an older registration): asleep.
    assert not edge.with_flow(AOR, binding(uri=IPHONE_URI + ";x=1")).alive
    # Outside edge mode nothing is overridden.
    Hooks(dataclasses.replace(settings(), edge=False), NativeHost())
    assert ksr_bindings.flow_override is None


def hold_two_calls() -> None:
    """Transaction 1:2 held for the iPhone (INSTANCE), 3:4 for the user's iPad."""
    mine = held_calls.Held(aor=AOR, uri="sip:" + AOR, index=1, label=2)
    other = held_calls.Held(aor=AOR, uri="sip:" + AOR, index=3, label=4)
    held_calls.hold(mine, "call-1", 30, [{"instance": INSTANCE, "prid": "00fc13adff785122"}])
    held_calls.hold(other, "call-2", 30, [{"instance": "<urn:uuid:ipad>", "prid": "ab"}])


def test_the_woken_devices_held_call_resumes_and_no_other(ksr: fake_ksr.FakeKSR) -> None:
    host = NativeHost()
    hooks = Hooks(settings(), host)
    hold_two_calls()
    ksr.method = "REGISTER"
    reply_contact = f'<{IPHONE_URI}>;expires=600;+sip.instance="{INSTANCE}";reg-id=1'
    stash = {
        "flow": PHONE.__dict__,
        "conid": 7,
        "contacts": [f'<{IPHONE_URI}>;+sip.instance="{INSTANCE}";reg-id=1'],
        "expires": 600,
        "has_pns": False,
    }
    ksr.pvs.update({edge.STASH: json.dumps(stash), "$tU": "alice", "$td": "example.com"})
    ksr.pvs.update({"$hdrc(Contact)": 1, "$ci": "reg-1", "$cs": "2"})
    ksr.returns["hdr.get_idx"] = reply_contact
    saved = binding()
    fetched = iter([(AOR, []), (AOR, [saved])])
    hooks_fetch = ksr_bindings.fetch
    try:
        ksr_bindings.fetch = lambda aor: next(fetched)  # type: ignore[assignment]
        hooks.edge_registered()
    finally:
        ksr_bindings.fetch = hooks_fetch  # type: ignore[assignment]
    assert ksr.called("registrar", "save") == [("location", edge.SAVE_FLAGS)]
    assert list(host.pending) == [(1, 2, Route.RESUME)]
    assert held_calls.held_for_aor(AOR) == ["3:4"]  # the iPad's call still waits
    assert edge.current(AOR, INSTANCE) == edge.FlowRecord(PHONE, 7, IPHONE_URI)
    assert any("Feature-Caps" in args[0] for args in ksr.called("hdr", "append"))


@pytest.mark.parametrize("outcome", [True, False, None, RuntimeError("boom")])
def test_edge_python_exec_methods_never_return_zero_or_none(
    ksr: fake_ksr.FakeKSR, monkeypatch: pytest.MonkeyPatch, outcome: object
) -> None:
    entry = native.NativeEntry()

    def step() -> object:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    for name in (
        "edge_register",
        "edge_registered",
        "edge_route",
        "edge_location",
        "edge_outgoing",
    ):
        monkeypatch.setattr(entry.hooks, name, step)
        assert getattr(entry, name)(None) in (1, -1), name


# ----- several edges (WITH_CLUSTER) -----
EDGE_B = "192.0.2.2"
HANDOFF = plan.Handoff(
    aor=AOR,
    device=INSTANCE,
    instance=INSTANCE,
    prid="00fc13adff785122",
    contact=IPHONE_URI,
    route=plan.handoff_route(flow_token.encode(PHONE, KEY), f"{EDGE_B}:5060"),
)


def clustered(ksr: fake_ksr.FakeKSR) -> None:
    ksr.pvs.update(
        {
            "$def(PUSHGATE_CLUSTER)": 1,
            "$def(CLUSTER_SELF)": '"sip:192.0.2.1:5060"',
            "$def(CLUSTER_NODES)": f'"192.0.2.1,{EDGE_B}"',
        }
    )


def test_a_handoff_reads_back_and_bad_ones_name_the_field() -> None:
    assert plan.Handoff.from_json(HANDOFF.to_json()) == HANDOFF
    assert HANDOFF.next_hop == f"sip:{EDGE_B}:5060;transport=tcp"
    good = json.loads(HANDOFF.to_json())
    for change, message in (
        ({"aor": ""}, "aor: missing"),
        ({"prid": 7}, "prid: not a string"),
        ({"route": "sip:x@h"}, "route: not a loose-routing SIP URI"),
        ({"contact": "tel:+1"}, "contact: not a SIP URI"),
    ):
        with pytest.raises(plan.HandoffError, match=message):
            plan.Handoff.from_json(json.dumps({**good, **change}))
    with pytest.raises(plan.HandoffError, match="not JSON"):
        plan.Handoff.from_json("{")


def test_an_initial_request_is_not_pinned_to_the_phones_flow_before_the_edge_decides(
    ksr: fake_ksr.FakeKSR,
) -> None:
    hooks = Hooks(settings(), NativeHost())
    arrive(ksr, UPSTREAM)
    route_to_edge(ksr, flow_token.encode(PHONE, KEY))
    ksr.returns["siputils.has_totag"] = -1
    assert hooks.edge_route() is True
    assert ksr.pvs["$du"] == PHONE.uri
    # It may yet go to another edge, over a new connection.
    assert ("core", "set_forward_no_connect", ()) not in ksr.calls


def test_another_edges_handoff_resumes_the_call_waiting_for_that_device_through_it(
    ksr: fake_ksr.FakeKSR,
) -> None:
    clustered(ksr)
    host = NativeHost()
    hooks = Hooks(settings(), host)
    hold_two_calls()
    ksr.method = "KDMQ"
    ksr.pvs.update({"$si": EDGE_B, "$rU": plan.HANDOFF_PEER, "$rb": HANDOFF.to_json()})
    hooks.cluster_message()
    assert ksr.called("sl", "sl_send_reply") == [(200, "OK")]
    assert list(host.pending) == [(1, 2, Route.RESUME)]
    assert held_calls.held_for_aor(AOR) == ["3:4"]
    # Resumed: delivered through B with B's Route on top, B's token naming the new flow.
    ksr.method = "INVITE"
    ksr.pvs["$ci"] = "call-1"
    hooks._resuming = "call-1"
    assert hooks.edge_location() is False
    assert ksr.pvs["$du"] == HANDOFF.next_hop and ksr.pvs["$ru"] == IPHONE_URI
    assert ksr.called("hdr", "insert") == [(f"Route: <{HANDOFF.route}>\r\n",)]
    assert ksr.called("rr", "record_route") == []
    assert ("core", "set_forward_no_connect", ()) not in ksr.calls
    # The device is known to be behind B until it registers here again.
    assert edge.moved(AOR, INSTANCE) == HANDOFF
    edge.remember(AOR, INSTANCE, edge.FlowRecord(PHONE, 7, IPHONE_URI), 600)
    assert edge.moved(AOR, INSTANCE) is None


def test_a_handoff_from_outside_the_cluster_or_malformed_changes_nothing(
    ksr: fake_ksr.FakeKSR,
) -> None:
    clustered(ksr)
    host = NativeHost()
    hooks = Hooks(settings(), host)
    held_calls.hold(
        held_calls.Held(aor=AOR, uri="sip:" + AOR, index=1, label=2),
        "call-1",
        30,
        [{"instance": INSTANCE, "prid": "00fc13adff785122"}],
    )
    ksr.method = "KDMQ"
    ksr.pvs.update({"$si": "203.0.113.9", "$rU": plan.HANDOFF_PEER, "$rb": HANDOFF.to_json()})
    hooks.cluster_message()
    ksr.pvs.update({"$si": EDGE_B, "$rb": '{"aor": "x"}'})
    hooks.cluster_message()
    assert ksr.called("sl", "sl_send_reply") == [
        (403, "Not a cluster node"),
        (400, "Bad handoff: device: missing"),
    ]
    assert list(host.pending) == [] and held_calls.held_for_aor(AOR) == ["1:2"]
    assert edge.moved(AOR, INSTANCE) is None


def test_a_call_through_the_old_path_of_a_device_now_behind_another_edge_goes_there(
    ksr: fake_ksr.FakeKSR, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that keys bindings by Contact keeps the old one (Path: this edge) until
    it expires: its calls go to the device's edge, not to another push."""
    clustered(ksr)
    hooks = Hooks(settings(), NativeHost())
    edge.remember(AOR, INSTANCE, edge.FlowRecord(PHONE, 7, IPHONE_URI), 600)
    edge.remember_moved(HANDOFF)
    ksr.returns["tcpops.tcp_conid_alive"] = -1  # its flow here is gone: asleep here
    monkeypatch.setattr(ksr_bindings, "fetch", lambda aor: (AOR, [binding(alive=False)]))
    ksr.method = "INVITE"
    arrive(ksr, UPSTREAM)
    route_to_edge(ksr, flow_token.encode(PHONE, KEY))
    ksr.returns["siputils.has_totag"] = -1
    assert hooks.edge_route() is True
    assert hooks.edge_location() is False
    assert ksr.pvs["$du"] == HANDOFF.next_hop
    assert ksr.called("hdr", "insert") == [(f"Route: <{HANDOFF.route}>\r\n",)]
    assert ksr.called("tm", "t_newtran") == []  # not held, nothing pushed
