"""Push wake-up through real Kamailio, PostgreSQL, pushd and SIPp (issue: walking skeleton)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from testkit.procs import wait_until
from testkit.stack import Stack
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


@on_kamailio("5.6", "6.0")
def test_sleeping_iphone_is_woken_by_push_and_answers(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)

    caller = stack.call("alice", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-3000:]

    assert stack.apns is not None
    pushes = stack.apns.pushes
    assert len(pushes) == 1
    push = pushes[0]
    assert push.token == phone.token
    assert push.topic == "com.example.app.voip"
    assert push.push_type == "voip"
    assert push.priority == 10
    assert push.status == 200
    assert push.payload.get("aor") == "sip:alice@pushgate.test"
    assert push.payload.get("call_id")
    # Expiration no later than the hold deadline.
    invite_in = float(stack.events("request_in")[0]["t"])
    assert push.expiration is not None and push.expiration <= invite_in + 30 + 1
    assert len(woken) == 1
    assert woken[0].wait(15) == 97  # the phone's answer scenario stops SIPp after BYE
    # Its wake-up REGISTER was challenged first (401, then with credentials): still
    # exactly one INVITE reaches it.
    received = [m.splitlines()[0] for m in woken[0].received()]
    assert received[0] == "SIP/2.0 401 Unauthorized"
    assert sum(1 for line in received if line.startswith("INVITE ")) == 1
    statuses = [e["status"] for e in stack.events("reply")]
    assert "180" in statuses and "200" in statuses


@on_kamailio("5.6", "6.0")
def test_live_phone_gets_the_call_directly_without_push(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("bob")
    live = stack.register(phone, keep_open_ms=15000, answer=True, label="live")
    wait_until(lambda: len(stack.bindings("bob")) == 1, 10, "bob's binding")
    caller = stack.call("bob", expect_answer=True)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert live.wait(15) == 97
    assert stack.apns is not None and stack.apns.pushes == []


@on_kamailio("5.6", "6.0")
def test_phone_that_never_wakes_gets_480_at_the_hold_timeout(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=3)
    phone = stack.phone("carol")
    stack.register_and_sleep(phone)
    started = time.monotonic()
    caller = stack.call("carol", expect_answer=False)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    elapsed = time.monotonic() - started
    code, reason = caller.final_response()
    assert code == 480
    assert "did not wake" in reason
    assert 2.5 <= elapsed <= 5.0
    assert stack.apns is not None
    assert [p.push_type for p in stack.apns.pushes if p.push_type == "voip"] == ["voip"]


@on_kamailio("5.6", "6.0")
def test_apns_410_ends_the_call_early_and_removes_the_binding(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=20)
    phone = stack.phone("dave")
    stack.register_and_sleep(phone)
    assert stack.apns is not None
    stack.apns.script(phone.token, 410, "Unregistered")
    started = time.monotonic()
    caller = stack.call("dave", expect_answer=False)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    elapsed = time.monotonic() - started
    code, reason = caller.final_response()
    assert code == 480 and "Push notification failed" in reason
    assert elapsed < 5
    # The dead token's binding is gone from usrloc, memory and database alike.
    wait_until(lambda: stack.bindings("dave") == [], 5, "binding removal")
    assert phone.token not in stack.kamailio.kamcmd("ul.dump")  # memory too, not only the DB


def test_pushd_down_gives_a_clean_480_and_sip_keeps_working(make_stack: MakeStack) -> None:
    stack = make_stack(pushd=False)
    phone = stack.phone("erin")
    stack.register_and_sleep(phone)
    started = time.monotonic()
    caller = stack.call("erin", expect_answer=False)
    assert caller.wait(10) == 0, caller.output()[-3000:]
    code, reason = caller.final_response()
    assert code == 480 and "Push service unavailable" in reason
    assert time.monotonic() - started < 3
    # Kamailio still serves: another phone registers fine.
    stack.register_and_sleep(stack.phone("frank"))
    assert len(stack.bindings("frank")) == 1


def test_unknown_user_gets_404(make_stack: MakeStack) -> None:
    stack = make_stack()
    caller = stack.call("nobody", expect_answer=False)
    assert caller.wait(10) == 0
    assert caller.final_response()[0] == 404


@on_kamailio("5.6", "6.0")
def test_sleeping_android_is_woken_by_fcm_and_answers(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("gina", provider="fcm")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)
    caller = stack.call("gina", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert stack.fcm is not None and stack.apns is not None
    messages = stack.fcm.messages
    assert len(messages) == 1 and stack.apns.pushes == []
    msg = messages[0]
    assert (msg.token, msg.project, msg.status) == (phone.token, "pushgate-test", 200)
    assert msg.priority == "HIGH"
    assert msg.ttl is not None and 0 < int(msg.ttl.rstrip("s")) <= 30
    assert msg.data is not None and msg.data.get("aor") == "sip:gina@pushgate.test"
    assert all(isinstance(v, str) for v in msg.data.values())
    assert woken and woken[0].wait(15) == 97


def test_fcm_unregistered_removes_the_binding_and_ends_the_call(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=20)
    phone = stack.phone("hank", provider="fcm")
    stack.register_and_sleep(phone)
    assert stack.fcm is not None
    stack.fcm.script(phone.token, 404, "UNREGISTERED")
    started = time.monotonic()
    caller = stack.call("hank", expect_answer=False)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert caller.final_response()[0] == 480
    assert time.monotonic() - started < 5
    wait_until(lambda: stack.bindings("hank") == [], 5, "binding removal")
    # A second call finds no binding: no further push.
    again = stack.call("hank", expect_answer=False, label="again")
    assert again.wait(10) == 0
    assert again.final_response()[0] == 480
    assert len(stack.fcm.messages) == 1
