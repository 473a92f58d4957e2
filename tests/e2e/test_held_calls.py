"""Held INVITEs: several at once, and SIP service while pushd hangs."""

from __future__ import annotations

import socket
import statistics
import time
import urllib.request
from collections.abc import Callable

import pytest

from testkit.procs import wait_until
from testkit.stack import Stack

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def test_two_calls_held_for_the_same_aor_both_complete(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    assert stack.apns is not None
    # Hold the first push's wake-up until both INVITEs are held.
    woken = stack.wake_on_push(phone, many=True)
    stack.on_push.pop(phone.token)
    first = stack.call("alice", expect_answer=True, label="caller1", talk_ms=1000)
    stack.apns.wait_for_pushes(1, timeout=10)
    second = stack.call("alice", expect_answer=True, label="caller2", talk_ms=1000)
    # The second call waits for the first call's push: the device is not pushed twice.
    wait_until(lambda: stack.count_events("push_coalesced") == 1, 10, "the second call held")
    assert len(stack.apns.pushes) == 1
    stack.wake_on_push(phone, many=True)
    stack.on_push[phone.token](stack.apns.pushes[0])
    try:
        assert first.wait(30) == 0, first.output()[-2000:]
        assert second.wait(30) == 0, second.output()[-2000:]
    finally:
        for run in woken:
            run.stop()
    assert len(stack.events("resume")) == 2


def options_rtt(port: int, count: int) -> list[float]:
    """Round-trip times (ms) of ``count`` sequential OPTIONS over UDP."""
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        lport = sock.getsockname()[1]
        for i in range(count):
            msg = (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-opt-{i}-{time.time_ns()}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:probe@pushgate.test>;tag=p\r\n"
                f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: opt-{i}-{time.time_ns()}\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            sock.sendto(msg, ("127.0.0.1", port))
            reply = sock.recv(4096)
            rtts.append((time.perf_counter() - t0) * 1000)
            assert reply.startswith(b"SIP/2.0 200")
    return rtts


def test_hung_pushd_does_not_delay_other_sip_traffic(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=10)
    baseline = options_rtt(stack.kamailio.sip_port, 50)
    phones = [stack.phone(f"sleeper{i}") for i in range(4)]
    for phone in phones:
        stack.register_and_sleep(phone)
    stack.pause_pushd()
    callers = [
        stack.call(p.user, expect_answer=False, label=f"held{i}") for i, p in enumerate(phones)
    ]
    wait_until(lambda: stack.count_events("push_request") == 4, 10, "four held INVITEs")
    during = options_rtt(stack.kamailio.sip_port, 200)
    # A REGISTER (digest round trip, database write) also goes through at once.
    t0 = time.monotonic()
    stack.register_and_sleep(stack.phone("newcomer"))
    register_s = time.monotonic() - t0
    for c in callers:
        c.stop()
    # Non-blocking, not a benchmark: a blocked worker would cost seconds, not ms.
    assert max(during) < 250, (statistics.median(baseline), max(during))
    assert register_s < 2


def test_metrics_count_what_the_timeline_shows(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=2)
    phone = stack.phone("mia")
    stack.register_and_sleep(phone)
    caller = stack.call("mia", expect_answer=False)
    assert caller.wait(10) == 0
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{stack.kamailio.sip_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert 'kamailio_pushgate_requests_total{method="INVITE", action="push"} 1' in body
    assert 'kamailio_pushgate_pushes_total{kind="call"} 1' in body
    assert 'kamailio_pushgate_held_calls_total{outcome="timeout"} 1' in body
    assert "kamailio_pushgate_pushd_connected 1" in body
