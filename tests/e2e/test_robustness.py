"""Defects a public SIP service meets on its first day, each pinned on the real stack."""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit import sipp
from testkit.certs import TestPki
from testkit.postgres import start_cluster
from testkit.procs import wait_until
from testkit.stack import (
    DOMAIN,
    FOREIGN_DOMAIN,
    Phone,
    Stack,
    world_readable_tempdir,
)

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def invite(callee: str, port: int, transport: str) -> bytes:
    call_id = uuid.uuid4().hex
    return (
        f"INVITE sip:{callee}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK{call_id[:12]};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bob@{FOREIGN_DOMAIN}>;tag=1\r\n"
        f"To: <sip:{callee}@{DOMAIN}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:bob@127.0.0.1:{port};transport={transport.lower()}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def final_status(read: Callable[[], bytes], timeout: float) -> str:
    """The first final status code among the answers ``read`` returns (one per call)."""
    deadline = time.monotonic() + timeout
    buffered = b""
    while time.monotonic() < deadline:
        buffered += read()
        while b"\r\n\r\n" in buffered:
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            if not status.startswith("1"):
                return status
    raise AssertionError("no final answer")


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_a_retransmitted_invite_pushes_once(make_stack: MakeStack, transport: str) -> None:
    # A caller whose 100 Trying was lost sends the same INVITE again (UDP), or an
    # upstream proxy forwards such a retransmission over its TCP connection.
    stack = make_stack(hold_timeout=3)
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(6)
        port = sock.getsockname()[1]
        target = ("127.0.0.1", stack.kamailio.sip_port)
        message = invite("alice", port, transport)
        if transport == "TCP":
            sock.connect(target)
        sock.sendto(message, target) if transport == "UDP" else sock.sendall(message)
        assert stack.apns is not None
        stack.apns.wait_for_pushes(1, timeout=5)
        sock.sendto(message, target) if transport == "UDP" else sock.sendall(message)
        assert final_status(lambda: sock.recv(65535), 6) == "480"
    pushes = stack.apns.wait_for_pushes(2, timeout=5)
    assert [p.push_type for p in pushes] == ["voip", "alert"]  # the call, then "missed"
    assert len([e for e in stack.events("push_request") if e.get("kind") == "call"]) == 1


def test_an_unregister_without_angle_brackets_does_not_end_a_held_call(
    make_stack: MakeStack,
) -> None:
    # Without <>, ";expires=0" is a header param: usrloc matches no binding (the URI
    # differs) and keeps the old one; the call must stay held, not end at once.
    stack = make_stack(hold_timeout=4)
    phone = stack.phone("bob")
    stack.register_and_sleep(phone)
    started = time.monotonic()
    caller = stack.call("bob", expect_answer=False)
    assert stack.apns is not None
    stack.apns.wait_for_pushes(1, timeout=5)
    unregister = sipp.start(
        "phone_unregister_bare",
        target_port=stack.kamailio.sip_port,
        logdir=stack.logs,
        transport="t1",
        keys={**phone.keys(), "contact_hostport": f"127.0.0.1:{sipp.LOCAL_PORT}"},
        auth=(phone.user, phone.password),
        label="unregister-bare",
    )
    assert unregister.wait(10) == 0, unregister.output()[-2000:]
    assert caller.wait(15) == 0, caller.output()[-2000:]
    code, reason = caller.final_response()
    assert (code, "did not wake" in reason) == (480, True), reason
    assert time.monotonic() - started >= 3.5
    assert stack.events("resume") == []
    assert len(stack.bindings("bob")) == 1


def test_no_notice_goes_to_a_token_the_provider_called_dead(make_stack: MakeStack) -> None:
    stack = make_stack()
    iphone, desk = stack.phone("carol", n=1), stack.phone("carol", n=2)
    stack.register_and_sleep(iphone)
    assert stack.apns is not None
    stack.apns.script(iphone.token, 410, "Unregistered")
    # The desk answers after APNs has called the iPhone's token dead.
    desk_run = stack.register(desk, keep_open_ms=15000, answer_late=True, label="desk")
    wait_until(lambda: len(stack.bindings("carol")) == 2, 10, "two bindings")
    caller = stack.call("carol", expect_answer=True)
    assert caller.wait(20) == 0, caller.output()[-2000:]
    assert desk_run.wait(10) == 97
    assert [e["verdict"] for e in stack.events("push_result")] == ["delete_token"]
    assert len(stack.bindings("carol")) == 1
    # The call push only: no "answered elsewhere" to the token APNs said is gone.
    assert [p.push_type for p in stack.apns.pushes if p.token == iphone.token] == ["voip"]


KILLED_PUSHD_CALLS = 100  # the burst of 100 held calls


def register_all(stack: Stack, phones: list[Phone]) -> None:
    """Register (and put to sleep) 20 SIPp phones at a time."""
    for batch in range(0, len(phones), 20):
        runs = [stack.register(phone) for phone in phones[batch : batch + 20]]
        for run in runs:
            assert run.wait(30) == 0, run.output()[-2000:]


def call_all(stack: Stack, phones: list[Phone], rate: int = 200) -> sipp.SippRun:
    """One SIPp calling every phone once, at ``rate`` calls/s: the burst goes out in well
    under a second even on a loaded machine (a SIPp process per call took seconds)."""
    inf = stack.logs / "callees.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"{p.user};\n" for p in phones))
    return sipp.start(
        "caller_call_each",
        target_port=stack.caller_port,
        logdir=stack.logs,
        keys={"domain": DOMAIN, "caller_domain": FOREIGN_DOMAIN},
        calls=len(phones),
        rate=rate,
        pause_ms=300,
        inf=inf,
        label="callers",
    )


@pytest.mark.parametrize("read", [False, True], ids=["unread", "sent-unanswered"])
def test_pushes_a_killed_pushd_took_along_are_sent_by_the_next_one(
    make_stack: MakeStack, read: bool
) -> None:
    """100 calls held, pushd killed (SIGKILL) with their pushes unread (hung pushd) or sent
    to APNs and not answered yet; a new pushd sends them all at once."""
    n = KILLED_PUSHD_CALLS
    stack = make_stack(hold_timeout=30)
    phones = [stack.phone(f"user{i:03d}") for i in range(n)]
    register_all(stack, phones)
    assert stack.apns is not None
    if read:
        # APNs sits on every first answer until pushd is dead: a push answered before
        # the kill would be delivered, not outstanding (seen on a loaded machine with a
        # 3 s delay, when the burst of pushes took longer than that to go out).
        for phone in phones:
            stack.apns.script(phone.token, 200, times=1, delay=120.0)
    else:
        stack.pause_pushd()  # hung: the push requests pile up unread in its socket
    callers = call_all(stack, phones)
    assert callers.proc.poll() is None, callers.output()[-2000:]
    wait_until(lambda: stack.count_events("push_request") >= n, 60, "the push requests")
    if read:
        stack.apns.wait_for_pushes(n, timeout=30)
    assert stack.count_events("push_result") == 0  # none answered: all outstanding
    stack.kill_pushd()
    # Only the pushes sent from now on wake the phones; 2 s later, so that starting 100
    # SIPp phones in this process does not slow the fake APNs while it takes the burst.
    woken = [stack.wake_on_push(phone, delay=2.0) for phone in phones]
    stack.start_pushd()
    wait_until(lambda: stack.count_events("push_resent") == 1, 5, "the pushes sent again")
    assert [e["count"] for e in stack.events("push_resent")] == [str(n)]
    # Every push out soon after the new pushd's hello: the first within 1 s (the issue's
    # bound; 0.1-0.2 s on a quiet machine), all within 3 s.
    connected = float(stack.events("pushd_connected")[-1]["t"]) - 0.001  # logged in ms

    def resent() -> list[float]:
        return sorted(wall for wall, _ in stack.push_log if wall >= connected)

    wait_until(lambda: len(resent()) == n, 10, "the harness to see every push sent again")
    first, last = resent()[0] - connected, resent()[-1] - connected
    assert first < 1.0, first
    assert last < 3.0, last
    # Every call answered by its woken phone: one whose hold (30 s) ran out would get 480
    # and fail the callers' scenario.
    assert callers.wait(60) == 0, callers.output()[-2000:]
    assert all(len(w) >= 1 for w in woken)
    # Sent twice only when the dead pushd had sent it already (documented), never lost.
    per_token = {p.token: len(stack.apns.pushes_for(p.token)) for p in phones}
    assert set(per_token.values()) == ({2} if read else {1})
    assert "Traceback" not in stack.kamailio.log.read_text(errors="replace")
    print(f"pushd killed with {n} held: pushes again {first:.3f}-{last:.3f} s after its hello")


FLOOD_CALLS, FLOOD_RATE = 1000, 100  # the 1,000 INVITEs in 10 s to one AoR


def test_an_invite_flood_to_a_sleeping_user_pushes_within_the_limits_and_spares_others(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(hold_timeout=3)
    victim, other = stack.phone("dora"), stack.phone("eric")
    stack.register_and_sleep(victim)
    stack.register_and_sleep(other)
    started = time.monotonic()
    flood = sipp.start(
        "caller_fail",
        target_port=stack.kamailio.sip_port,
        logdir=stack.logs,
        keys={"domain": DOMAIN, "callee": "dora", "caller_domain": FOREIGN_DOMAIN},
        calls=FLOOD_CALLS,
        rate=FLOOD_RATE,
        label="flood",
    )
    # Mid-flood, another user is called: pushed as usual, its call held to the timeout.
    wait_until(lambda: stack.count_events("push_limited") >= 100, 20, "the flood's refusals")
    caller = stack.call("eric", expect_answer=False, label="eric")
    assert caller.wait(15) == 0, caller.output()[-2000:]
    assert caller.final_response() == (480, 'SIP;cause=480;text="Device did not wake up"')
    assert flood.wait(FLOOD_CALLS / FLOOD_RATE + 30) == 0, flood.output()[-2000:]
    flood_seconds = time.monotonic() - started
    assert stack.apns is not None
    assert [p.push_type for p in stack.apns.pushes if p.token == other.token][:1] == ["voip"]
    # One caller: at most PUSHGATE_CALLER_PUSHES (3) VoIP pushes to dora per window, each
    # with its missed-call alert; every other INVITE answered at once (486: too many
    # waiting; 480: push limit reached), none held past the hold timeout.
    to_victim = [p.push_type for p in stack.apns.pushes if p.token == victim.token]
    assert 1 <= to_victim.count("voip") <= 3, to_victim
    wait_until(
        lambda: (
            [p.push_type for p in stack.apns.pushes if p.token == victim.token].count("alert")
            == to_victim.count("voip")
        ),
        10,
        "a missed-call alert per call push",
    )
    finals = [m for m in flood.received() if m.startswith("SIP/2.0 4")]
    limited = stack.count_events("push_limited")
    held = len(stack.events("hold_timeout")) - 1  # eric's call timed out too
    assert limited + held == FLOOD_CALLS, (limited, held)
    # PUSHGATE_MAX_HELD (4) at a time, each held up to the hold timeout (3 s).
    assert held <= 4 * (flood_seconds / 3 + 1), (held, flood_seconds)
    assert len(finals) >= FLOOD_CALLS
    assert {f.split(" ", 2)[1] for f in finals} <= {"480", "486"}
    assert all("\nReason: SIP;cause=48" in f for f in finals)
    print(
        f"flood: {FLOOD_CALLS} INVITEs at {FLOOD_RATE}/s done in {flood_seconds:.1f} s:"
        f" {to_victim.count('voip')} VoIP pushes, {held} held, {limited} answered at once"
    )


def test_database_down_gives_honest_answers_and_service_comes_back(
    pki: TestPki, tmp_path: Path
) -> None:
    # Its own PostgreSQL: this test stops it.
    pg_root = world_readable_tempdir("pushgate-pg-down-")
    pg = start_cluster(pg_root / "cluster")
    stack = Stack(tmp_path / "stack", pg, pki, hold_timeout=5)
    try:
        stack.start()
        phone = stack.phone("fred")
        stack.register_and_sleep(phone)
        pg.stop()
        # Valid credentials that cannot be checked: 503 + Retry-After, not "wrong password".
        run = stack.register(phone)
        run.wait(15)
        statuses = [m.splitlines()[0] for m in run.received() if m.startswith("SIP/2.0")]
        assert statuses[-1] == "SIP/2.0 503 Service Unavailable", statuses
        assert "Retry-After: 10" in run.received()[-1]
        # A registered, sleeping phone is still pushed from usrloc's memory.
        woken = stack.wake_on_push(phone)
        caller = stack.call("fred", expect_answer=False, label="during-outage")
        assert caller.wait(15) == 0, caller.output()[-2000:]
        assert stack.apns is not None and stack.apns.pushes[0].token == phone.token
        assert caller.final_response()[0] != 404
        for run in woken:
            run.stop()
        pg.start()
        # Back without restarting anything: registrations and calls work again.
        stack.register_and_sleep(phone)
        assert len(stack.bindings("fred")) == 1
    finally:
        stack.stop()
        pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


def test_kamailio_restarted_with_a_call_held_keeps_bindings_and_wakes_phones_again(
    make_stack: MakeStack,
) -> None:
    # The held transaction dies with Kamailio (tm state is in its memory): that caller
    # is ended by its own timers. What must survive: the bindings, and the service.
    stack = make_stack(hold_timeout=20)
    phone = stack.phone("gail")
    stack.register_and_sleep(phone)
    lost = stack.call("gail", expect_answer=False, label="lost")
    assert stack.apns is not None
    stack.apns.wait_for_pushes(1, timeout=5)
    stack.stop_pushd()
    stack.kamailio.stop()
    stack.kamailio.start()
    stack.start_pushd()
    lost.stop()
    assert phone.token in stack.kamailio.kamcmd("ul.dump")  # reloaded from the database
    woken = stack.wake_on_push(phone)
    caller = stack.call("gail", expect_answer=True, label="after-restart")
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert len(woken) == 1 and woken[0].wait(15) == 97


def test_a_slow_database_holds_up_registrations_only(make_stack: MakeStack) -> None:
    import psycopg2

    stack = make_stack()
    sleeper, late = stack.phone("hugo"), stack.phone("iris")
    stack.register_and_sleep(sleeper)
    blocker = psycopg2.connect(stack.pg.dsn)
    try:
        with blocker.cursor() as cur:  # every write to usrloc's table now waits
            cur.execute("LOCK TABLE location IN ACCESS EXCLUSIVE MODE")
        waiting = stack.register(late, label="waiting")
        wait_until(
            lambda: (
                stack.pg.query(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                )[0][0]
                >= 1
            ),
            10,
            "the REGISTER's write to wait for the lock",
        )
        assert waiting.proc.poll() is None
        # SIP that needs no database write goes on: OPTIONS, and a call to a sleeping
        # phone is pushed from usrloc's memory.
        started = time.monotonic()
        caller = stack.call("hugo", expect_answer=False, label="during-lock")
        assert stack.apns is not None
        stack.apns.wait_for_pushes(1, timeout=3)
        assert time.monotonic() - started < 1.0
        caller.stop()
    finally:
        blocker.rollback()
        blocker.close()
    assert waiting.wait(15) == 0, waiting.output()[-2000:]
    assert len(stack.bindings("iris")) == 1
