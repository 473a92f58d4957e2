"""How a held call ends without an answer: CANCEL, timeout (CallKit-friendly notices)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from testkit import sipp
from testkit.procs import wait_until
from testkit.stack import Stack
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


@on_kamailio("5.6", "6.0")
def test_cancel_of_a_held_call_gives_487_and_a_cancel_notice(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=20)
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    started = time.monotonic()
    caller = sipp.start(
        "caller_cancel",
        target_port=stack.kamailio.sip_port,
        logdir=stack.logs,
        keys={"domain": "pushgate.test", "callee": "alice", "caller_domain": "caller.example"},
        pause_ms=500,
        label="canceller",
    )
    assert caller.wait(10) == 0, caller.output()[-2000:]
    assert time.monotonic() - started < 3
    assert [m.splitlines()[0] for m in caller.received()][-2:] == [
        "SIP/2.0 200 OK",
        "SIP/2.0 487 Request Terminated",
    ]
    assert stack.apns is not None
    pushes = stack.apns.wait_for_pushes(2, timeout=5)
    call, cancel = pushes[0], pushes[1]
    assert (call.push_type, call.topic) == ("voip", "com.example.app.voip")
    # The notice is an alert to the app's own topic, not a second VoIP push.
    assert (cancel.push_type, cancel.topic) == ("alert", "com.example.app")
    assert cancel.payload.get("call_id") == call.payload.get("call_id")
    # Nothing is left held: a later wake-up REGISTER resumes nothing.
    stack.register_and_sleep(phone)
    assert stack.events("resume") == []


def test_nobody_answers_480_and_a_missed_call_alert(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=2)
    phone = stack.phone("bob")
    stack.register_and_sleep(phone)
    caller = stack.call("bob", expect_answer=False)
    assert caller.wait(10) == 0, caller.output()[-2000:]
    assert caller.final_response()[0] == 480
    assert stack.apns is not None
    pushes = stack.apns.wait_for_pushes(2, timeout=5)
    assert [p.push_type for p in pushes] == ["voip", "alert"]
    assert pushes[1].token == phone.token


def test_device_waking_after_the_cancel_still_gets_the_invite_then_a_cancel(
    make_stack: MakeStack,
) -> None:
    """iOS must report every VoIP push to CallKit: the late phone sees the call, then its end."""
    stack = make_stack(hold_timeout=20)
    phone = stack.phone("carol")
    stack.register_and_sleep(phone)
    late = stack.wake_on_push(phone, ring=True, delay=1.0)  # wakes after the caller gave up
    caller = sipp.start(
        "caller_cancel",
        target_port=stack.kamailio.sip_port,
        logdir=stack.logs,
        keys={"domain": "pushgate.test", "callee": "carol", "caller_domain": "caller.example"},
        pause_ms=300,
        label="canceller",
    )
    assert caller.wait(10) == 0, caller.output()[-2000:]
    wait_until(lambda: bool(late), 10, "the late wake-up")
    assert late[0].wait(15) == 97, "the late phone got INVITE then CANCEL"
    requests = [m for m in late[0].received() if not m.startswith("SIP/2.0")]
    kinds = [m.split(" ", 1)[0] for m in requests]
    assert kinds == ["INVITE", "CANCEL", "ACK"]
    assert "Reason: SIP;cause=487" in requests[1]
    (push,) = [p for p in stack.apns.pushes if p.push_type == "voip"] if stack.apns else []
    call_id = push.payload.get("call_id")
    assert all(f"Call-ID: {call_id}" in m for m in requests), "same Call-ID as the push"
