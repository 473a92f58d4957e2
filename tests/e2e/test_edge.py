"""Edge mode (issue 10): Pushgate's edge.cfg in front of a registrar that is not ours.

The upstream is a second, unmodified Kamailio running Debian's own default config
(``/etc/kamailio/kamailio.cfg``, site settings only: WITH_AUTH, WITH_USRLOCDB, WITH_NAT,
its own database in the test cluster); it knows nothing about push. Phones register
through the edge, which relays their REGISTERs (the upstream challenges them) with a
Path carrying a flow token, and keeps a copy of the binding when the upstream answers
2xx. Callers send their INVITEs to the upstream, never to the edge; they come from a
foreign domain (the stock config challenges INVITEs whose From is a local user).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable

import pytest

from pushd import refresh
from pushd.config import Secret
from pushgate import flow_token
from testkit import sipp
from testkit.linphone import Linphone, PushStyle
from testkit.procs import wait_until
from testkit.stack import DOMAIN, EDGE_FLOW_SECRET, TEAM_PARAM_PREFIX, Stack
from tests.conftest import MakeLinphone
from tests.e2e.test_linphone import BUNDLE, VOIP_TOKEN, find, sleep_push_wake_answer

pytestmark = pytest.mark.e2e

FOREIGN = "caller.example"
KEY = flow_token.key(EDGE_FLOW_SECRET)

MakeStack = Callable[..., Stack]
Edge = Callable[..., Stack]


@pytest.fixture
def edge(make_stack: MakeStack) -> Edge:
    """``edge(**make_stack_kwargs)``: edge.cfg + pushd in front of a stock upstream."""

    def factory(**kwargs: object) -> Stack:
        return make_stack(flavour="edge", **kwargs)

    return factory


def first_lines(run: sipp.SippRun) -> list[str]:
    return [m.splitlines()[0] for m in run.received() if m]


def upstream_paths(stack: Stack, user: str) -> list[str]:
    """The Path the upstream keeps with each binding of ``user`` (``kamcmd ul.dump``)."""
    assert stack.upstream is not None
    paths: list[str] = []
    aor = None
    for line in stack.upstream.kamcmd("ul.dump").splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "AoR":
            aor = value
        elif key == "Path" and aor == user:
            paths.append(value)
    return paths


def path_token(path: str) -> str:
    m = re.match(r"<sip:([^@>]+)@127\.0\.0\.1:(\d+);lr;ob>$", path)
    assert m, path
    return m.group(1)


def edge_rows(stack: Stack, user: str) -> list[tuple[str, float]]:
    """(contact, seconds left) of the edge's own copy (its location table, write-through)."""
    rows = stack.pg.query("SELECT contact, expires FROM location WHERE username = %s", (user,))
    return [(str(c), e.timestamp() - time.time()) for c, e in rows]


def bye_answered(phone: Linphone) -> bool:
    return any(m.out and m.status == 200 and m.cseq_method == "BYE" for m in phone.messages(1))


def test_edge_config_passes_the_syntax_check(edge: Edge) -> None:
    stack = edge(pushd=False)
    r = stack.kamailio.check()
    assert r.returncode == 0, r.stderr[-3000:]


def test_sleeping_iphone_is_woken_through_the_edge_and_answers(edge: Edge) -> None:
    stack = edge()
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    # The upstream holds the binding with a Path through the edge; its flow token names
    # the phone's flow (Pushgate's tokens, HMAC-checked).
    (contact,) = stack.upstream_bindings("alice")
    (path,) = upstream_paths(stack, "alice")
    flow = flow_token.decode(path_token(path), KEY)
    assert (flow.proto, flow.local_port) == ("tcp", stack.kamailio.sip_port)
    assert f"@127.0.0.1:{flow.remote_port};" in contact
    # The edge keeps a copy: the same binding, the expiry the upstream granted.
    assert stack.bindings("alice") == [contact]

    woken = stack.wake_on_push(phone)
    caller = stack.call("alice", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert stack.apns is not None
    (push,) = stack.apns.pushes
    assert (push.token, push.push_type, push.topic) == (phone.token, "voip", f"{BUNDLE}.voip")
    assert push.payload.get("aor") == f"sip:alice@{DOMAIN}"
    assert len(woken) == 1 and woken[0].wait(15) == 97
    # The woken phone's REGISTER went through to the upstream, which challenged it; the
    # upstream's 2xx released the held INVITE over the new flow: one INVITE, no second
    # one from the upstream.
    received = woken[0].received()
    assert received[0].startswith("SIP/2.0 401 Unauthorized")
    assert f'realm="{DOMAIN}"' in received[0]
    # The upstream's 2xx reaches the phone with the edge's RFC 8599 Feature-Caps added.
    (ok,) = [m for m in received if m.startswith("SIP/2.0 200") and "REGISTER" in m]
    assert 'Feature-Caps: *;+sip.pns="apns"' in ok
    invites = [m for m in received if m.startswith("INVITE ")]
    assert len(invites) == 1
    (new_contact,) = stack.upstream_bindings("alice")
    assert new_contact != contact
    assert invites[0].startswith(f"INVITE {new_contact} ")
    # Its dialog follows the new flow: the edge's Record-Route carries the new flow's token.
    rr_tokens = set(re.findall(r"<sip:([^@>]+)@127\.0\.0\.1:\d+[^>]*;r2=on", invites[0]))
    (rr_token,) = rr_tokens
    assert flow_token.decode(rr_token, KEY).remote_port != flow.remote_port
    assert stack.bindings("alice") == [new_contact]
    events = [e["event"] for e in stack.events() if e.get("callid") == push.payload["call_id"]]
    assert events[:2] == ["request_in", "push_request"] and "invite_relayed" in events
    assert [m for m in caller.received() if m.startswith("SIP/2.0 200")], "BYE answered"


def test_after_an_edge_restart_a_sleeping_phone_is_still_pushed_and_reached(edge: Edge) -> None:
    """The upstream keeps the Path (and its token) across the edge's restart: the token
    still verifies (persistent secret), the edge finds the binding in its database copy,
    pushes, and the woken phone gets the call."""
    stack = edge()
    phone = stack.phone("olga")
    stack.register_and_sleep(phone)
    connected = stack.count_events("pushd_connected")
    stack.kamailio.stop()
    stack.kamailio.start()
    wait_until(lambda: stack.count_events("pushd_connected") > connected, 10, "pushd back")
    woken = stack.wake_on_push(phone)
    caller = stack.call("olga", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert len(woken) == 1 and woken[0].wait(15) == 97


def test_sleeping_android_is_woken_by_fcm_through_the_edge(edge: Edge) -> None:
    stack = edge()
    phone = stack.phone("bob", provider="fcm")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)
    caller = stack.call("bob", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert stack.fcm is not None and stack.apns is not None
    calls = [m for m in stack.fcm.messages if (m.data or {}).get("kind") == "call"]
    assert [m.token for m in calls] == [phone.token] and stack.apns.pushes == []
    assert calls[0].data is not None and calls[0].data.get("aor") == f"sip:bob@{DOMAIN}"
    assert len(woken) == 1 and woken[0].wait(15) == 97


def test_real_linphonec_is_woken_through_the_edge_and_its_bye_succeeds(
    edge: Edge, make_linphone: MakeLinphone
) -> None:
    stack = edge()
    params = f"pn-provider=apns;pn-prid={VOIP_TOKEN};pn-param={TEAM_PARAM_PREFIX}.{BUNDLE}.voip"
    # linphonec's proxy/registrar is the edge (make_linphone points it at stack.kamailio).
    phone: Linphone = make_linphone(stack, "kate", PushStyle.CONTACT_URI, params)
    sleep_push_wake_answer(stack, phone, VOIP_TOKEN, caller_domain=FOREIGN)
    for run in (0, 1):
        msgs = phone.messages(run)
        # Its REGISTER was challenged by the upstream (the edge holds no passwords).
        challenge = find(msgs, out=False, what="SIP/2.0 401 ", cseq="REGISTER")
        assert f'realm="{DOMAIN}"' in (challenge.header("WWW-Authenticate") or "")
        find(msgs, out=False, what="SIP/2.0 200 ", cseq="REGISTER")
    msgs = phone.messages(1)
    invite = find(msgs, out=False, what="INVITE ")
    assert invite.first_line.startswith(f"INVITE {phone.contact_uri(1)} ")
    find(msgs, out=False, what="BYE ")
    wait_until(lambda: bye_answered(phone), 5, "linphonec to answer the BYE")
    assert stack.bindings("kate") == [phone.contact_uri(1)]
    wait_until(lambda: "ended" in phone.out_file(1).read_text(errors="replace"), 5, "call end")
    output = phone.out_file(1).read_text(errors="replace")
    assert "auto answering" in output and "connected" in output


def test_live_phone_is_reached_directly_through_the_edge(edge: Edge) -> None:
    stack = edge()
    phone = stack.phone("carol")
    live = stack.register(phone, keep_open_ms=15000, answer=True, label="live")
    wait_until(lambda: len(stack.bindings("carol")) == 1, 10, "carol's binding at the edge")
    caller = stack.call("carol", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert live.wait(15) == 97
    assert stack.apns is not None and stack.apns.pushes == []
    assert [e["action"] for e in stack.events("request_in")] == ["relay"]


def test_phone_that_never_wakes_gets_480_at_the_hold_timeout(edge: Edge) -> None:
    stack = edge(hold_timeout=3)
    stack.register_and_sleep(stack.phone("dave"))
    started = time.monotonic()
    caller = stack.call("dave", expect_answer=False, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    code, reason = caller.final_response()
    assert code == 480 and "did not wake" in reason
    assert 2.5 <= time.monotonic() - started <= 6
    assert stack.apns is not None
    assert [p.push_type for p in stack.apns.wait_for_pushes(2)] == ["voip", "alert"]  # missed


def test_apns_410_ends_the_call_early_and_removes_the_edges_binding(edge: Edge) -> None:
    stack = edge(hold_timeout=20)
    phone = stack.phone("erin")
    stack.register_and_sleep(phone)
    assert stack.apns is not None
    stack.apns.script(phone.token, 410, "Unregistered")
    started = time.monotonic()
    caller = stack.call("erin", expect_answer=False, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    code, reason = caller.final_response()
    assert code == 480 and "Push notification failed" in reason
    assert time.monotonic() - started < 5
    wait_until(lambda: stack.bindings("erin") == [], 5, "the edge's binding removal")
    # The upstream's binding is the upstream's: it lapses at its expiry (the edge has no
    # credentials to unregister it). A call meanwhile fails at once, without a push.
    assert len(stack.upstream_bindings("erin")) == 1
    again = stack.call("erin", expect_answer=False, caller_domain=FOREIGN, label="again")
    assert again.wait(10) == 0, again.output()[-3000:]
    assert again.final_response()[0] == 480
    assert len(stack.apns.pushes) == 1


def test_cancel_during_the_hold_gives_487(edge: Edge) -> None:
    stack = edge()
    stack.register_and_sleep(stack.phone("frank"))
    caller = sipp.start(
        "caller_cancel",
        target_port=stack.caller_port,
        logdir=stack.logs,
        keys={"domain": DOMAIN, "callee": "frank", "caller_domain": FOREIGN},
        pause_ms=500,
        label="canceller",
    )
    assert caller.wait(10) == 0, caller.output()[-3000:]
    # The upstream answers the CANCEL itself (tm: "200 canceling"), the edge the INVITE.
    cancel_ok, final = first_lines(caller)[-2:]
    assert cancel_ok.startswith("SIP/2.0 200 ") and final == "SIP/2.0 487 Request Terminated"
    assert stack.apns is not None
    kinds = [p.push_type for p in stack.apns.wait_for_pushes(2)]
    assert kinds == ["voip", "alert"]  # the call, then its cancel notice
    assert [e["event"] for e in stack.events("cancel_held")] == ["cancel_held"]


def test_device_waking_after_the_cancel_gets_the_invite_then_a_cancel(edge: Edge) -> None:
    """CallKit grace through the edge: the late phone sees the call, then its end."""
    stack = edge()
    phone = stack.phone("gail")
    stack.register_and_sleep(phone)
    late = stack.wake_on_push(phone, ring=True, delay=1.0)  # wakes after the caller gave up
    caller = sipp.start(
        "caller_cancel",
        target_port=stack.caller_port,
        logdir=stack.logs,
        keys={"domain": DOMAIN, "callee": "gail", "caller_domain": FOREIGN},
        pause_ms=300,
        label="canceller",
    )
    assert caller.wait(10) == 0, caller.output()[-3000:]
    wait_until(lambda: bool(late), 10, "the late wake-up")
    assert late[0].wait(15) == 97, "the late phone got INVITE then CANCEL"
    requests = [m for m in late[0].received() if not m.startswith("SIP/2.0")]
    assert [m.split(" ", 1)[0] for m in requests] == ["INVITE", "CANCEL", "ACK"]
    assert "Reason: SIP;cause=487" in requests[1]


def test_sleeping_device_hears_the_call_was_answered_elsewhere(edge: Edge) -> None:
    """A desk phone registered directly at the upstream answers; the upstream cancels the
    edge's branch (Reason: SIP;cause=200) and the sleeping iPhone gets the notice."""
    stack = edge()
    iphone, desk = stack.phone("hugo", n=1), stack.phone("hugo", n=2)
    stack.register_and_sleep(iphone)
    hostport = f"127.0.0.1:{sipp.LOCAL_PORT}"
    desk_run = sipp.start(
        "phone_register",
        target_port=stack.caller_port,  # straight to the upstream, not through the edge
        logdir=stack.logs,
        transport="t1",
        keys={
            **desk.keys(),
            "pn": "",
            "contact_hostport": hostport,
            "dialog_contact": desk.dialog_contact(hostport),
        },
        auth=(desk.user, desk.password),
        ooc="phone_answer",
        pause_ms=15000,
        label="desk",
    )
    wait_until(lambda: len(stack.upstream_bindings("hugo")) == 2, 10, "two bindings upstream")
    assert len(stack.bindings("hugo")) == 1  # the edge keeps its own phone only
    caller = stack.call("hugo", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert desk_run.wait(10) == 97
    assert stack.apns is not None
    stack.apns.wait_for_pushes(2, timeout=5)
    time.sleep(0.5)  # nothing more comes
    # pushd sends the call push and, a moment later, the notice over concurrent HTTP/2
    # streams: APNs may take them in either order.
    pushes = sorted(stack.apns.pushes, key=lambda p: p.push_type != "voip")
    assert [(p.token, p.push_type) for p in pushes] == [
        (iphone.token, "voip"),
        (iphone.token, "alert"),
    ]
    assert pushes[1].payload.get("reason") == "answered_elsewhere"


def test_wrong_password_gets_the_upstreams_challenge_and_nothing_is_stored(edge: Edge) -> None:
    stack = edge(pushd=False)
    phone = stack.phone("gina")
    run = stack.register(phone, password="not-her-password")
    assert run.wait(10) != 0  # SIPp wanted a 200
    lines = first_lines(run)
    # Challenged, and challenged again after the wrong answer (SIPp may answer twice).
    assert len(lines) >= 2 and set(lines) == {"SIP/2.0 401 Unauthorized"}, lines
    assert stack.bindings("gina") == [] and stack.upstream_bindings("gina") == []
    bare = stack.register_without_credentials(phone)
    assert bare.wait(10) == 0, bare.output()[-3000:]
    assert f'WWW-Authenticate: Digest realm="{DOMAIN}"' in bare.received()[-1]
    assert stack.bindings("gina") == []


def test_upstream_down_fails_cleanly_and_the_edge_keeps_serving(edge: Edge) -> None:
    stack = edge(pushd=False, defines={"PUSHGATE_EDGE_REGISTER_TIMEOUT": "2000"})
    assert stack.upstream is not None
    stack.upstream.stop()
    phone = stack.phone("hank")
    started = time.monotonic()
    run = sipp.start(
        "register_once",
        target_port=stack.kamailio.sip_port,
        logdir=stack.logs,
        transport="t1",
        keys={**phone.keys(), "contact_hostport": "127.0.0.1:5999"},
        label="register-upstream-down",
    )
    # Meanwhile (the REGISTER relayed, its transaction waiting for the upstream) the
    # edge's SIP workers are free: OPTIONS answered at once.
    wait_until(lambda: stack.count_events("edge_register_in") == 1, 5, "REGISTER relayed")
    assert options_rtt(stack.kamailio.sip_port) < 0.5
    assert run.wait(10) == 0, run.output()[-3000:]
    assert run.final_response()[0] in (408, 503)
    assert 1.5 < time.monotonic() - started < 5
    assert stack.bindings("hank") == []


def test_tampered_flow_token_is_refused_and_nothing_reaches_the_phone(edge: Edge) -> None:
    stack = edge()
    phone = stack.phone("ivan")
    live = stack.register(phone, keep_open_ms=4000, answer=True, label="live")
    wait_until(lambda: len(upstream_paths(stack, "ivan")) == 1, 10, "ivan's binding")
    (contact,) = stack.upstream_bindings("ivan")
    token = path_token(upstream_paths(stack, "ivan")[0])
    flipped = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    forged = flow_token.encode(flow_token.decode(token, KEY), flow_token.key("guess"))
    for bad in (flipped, forged, "bm90LWEtdG9rZW4=", None):
        for in_dialog in (False, True):
            status = send_as_upstream(stack, contact, bad, in_dialog=in_dialog)
            assert status == 403, (bad, in_dialog, status)
    assert live.wait(10) == 0  # the phone got no call
    assert not [m for m in live.received() if m.startswith("INVITE ")]
    assert stack.apns is not None and stack.apns.pushes == []
    # The genuine token works: a registrar's keep-alive OPTIONS (Asterisk's qualify) to the
    # phone, asleep by now, is answered by the edge for it, without a push.
    assert send_as_upstream(stack, contact, token, method="OPTIONS") == 200
    assert stack.apns.pushes == []


def test_upstream_cap_is_the_expiry_the_edge_keeps_and_refreshes_by(edge: Edge) -> None:
    stack = edge(pushd=False)
    android, iphone = stack.phone("judy", provider="fcm"), stack.phone("kurt")
    for phone in (android, iphone):
        phone.expires = 7200  # the stock upstream grants at most 3600 (max_expires)
        stack.register_and_sleep(phone)
    for user in ("judy", "kurt"):
        ((_, left),) = edge_rows(stack, user)
        assert 3500 < left <= 3600, left
    capped = stack.events("edge_binding")
    assert [(e["capped"], e["refreshable"]) for e in capped] == [
        ("True", "True"),
        ("True", "False"),  # a VoIP-only iOS token: no background push can refresh it
    ]
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{stack.kamailio.sip_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert re.search(
        r'pushgate_edge_bindings_total\{capped="True", ?refreshable="False"\} 1', metrics
    ), [line for line in metrics.splitlines() if "edge_bindings" in line]
    # pushd's binding refresh reads the edge's own location table: the Android binding is
    # due well before the upstream's 3600 s lapse, the VoIP-only iPhone is skipped.
    table = refresh.LocationTable(Secret(value=stack.pg.dsn))
    try:
        now = time.time()
        rows = table.fetch(now, now + 4000)
    finally:
        table.close()
    assert {r.aor for r in rows} == {f"sip:judy@{DOMAIN}", f"sip:kurt@{DOMAIN}"}
    later = now + 3600 - 130
    due = refresh.due_refreshes(rows, later, 150, ())
    assert [d.row.aor for d in due] == [f"sip:judy@{DOMAIN}"]
    (kurt,) = [r for r in rows if r.aor.startswith("sip:kurt")]
    assert refresh.classify(kurt, later, 150, ()) is refresh.Skip.VOIP_ONLY


def test_tls_phone_is_woken_through_the_edge(edge: Edge) -> None:
    stack = edge(tls=True)
    phone = stack.phone("lena")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)
    caller = stack.call("lena", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert len(woken) == 1 and woken[0].wait(15) == 97
    (path,) = upstream_paths(stack, "lena")
    assert flow_token.decode(path_token(path), KEY).proto == "tls"


# ----- raw SIP, as the upstream (or someone pretending to be it) would send it -----
def send_as_upstream(
    stack: Stack, ruri: str, token: str | None, *, in_dialog: bool = False, method: str = "INVITE"
) -> int:
    """A request with two Vias (a proxy's), routed to the edge with ``token``; its status."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        port = sock.getsockname()[1]
        user = f"{token}@" if token else ""
        branch = uuid.uuid4().hex
        to_tag = ";tag=abc" if in_dialog else ""
        message = (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch}\r\n"
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfar\r\n"
            f"Route: <sip:{user}127.0.0.1:{stack.kamailio.sip_port};lr;ob>\r\n"
            "Max-Forwards: 69\r\n"
            f"From: <sip:mallory@{FOREIGN}>;tag=m1\r\n"
            f"To: <sip:{DOMAIN}>{to_tag}\r\n"
            f"Call-ID: {branch}\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Contact: <sip:mallory@127.0.0.1:{port}>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(message.encode(), ("127.0.0.1", stack.kamailio.sip_port))
        while True:
            data = sock.recv(65535).decode(errors="replace")
            status = int(data.split(" ", 2)[1])
            if status >= 200:
                return status


def options_rtt(port: int) -> float:
    """Seconds for the edge to answer an OPTIONS addressed to itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        local = sock.getsockname()[1]
        message = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:probe@127.0.0.1>;tag=p\r\n"
            "To: <sip:127.0.0.1>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        started = time.monotonic()
        sock.sendto(message.encode(), ("127.0.0.1", port))
        data = sock.recv(65535).decode(errors="replace")
        assert data.startswith("SIP/2.0 200"), data[:200]
        return time.monotonic() - started
