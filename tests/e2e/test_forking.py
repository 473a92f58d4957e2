"""Several devices per AoR: live ones ring at once, sleeping ones are pushed and join."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from testkit.procs import wait_until
from testkit.stack import Stack
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]
ELSEWHERE = 'Reason: SIP;cause=200;text="Call completed elsewhere"'


@on_kamailio("5.6", "6.0")
def test_desk_phone_rings_at_once_while_the_sleeping_iphone_is_pushed(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    iphone = stack.phone("alice", n=1)
    desk = stack.phone("alice", n=2)
    stack.register_and_sleep(iphone)
    desk_run = stack.register(desk, keep_open_ms=15000, answer=True, label="desk")
    wait_until(lambda: len(stack.bindings("alice")) == 2, 10, "two bindings")
    caller = stack.call("alice", expect_answer=True)
    assert caller.wait(20) == 0, caller.output()[-2000:]
    assert desk_run.wait(10) == 97  # the desk answered
    assert stack.apns is not None
    # Concurrent HTTP/2 streams: APNs may take the two in either order.
    pushes = sorted(stack.apns.wait_for_pushes(2, timeout=5), key=lambda p: p.push_type != "voip")
    assert [(p.token, p.push_type) for p in pushes] == [
        (iphone.token, "voip"),
        (iphone.token, "alert"),
    ]
    assert pushes[1].payload.get("reason") == "answered_elsewhere"
    # The desk's call was never held: it was relayed while the push went out.
    assert stack.events("resume") == []


@on_kamailio("5.6", "6.0")
def test_all_asleep_each_woken_device_joins_and_the_loser_is_cancelled(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    first = stack.phone("bob", n=1)
    second = stack.phone("bob", n=2)
    stack.register_and_sleep(first)
    stack.register_and_sleep(second)
    ringing = stack.wake_on_push(first, ring=True)
    answering = stack.wake_on_push(second, delay=1.0)
    caller = stack.call("bob", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert answering and answering[0].wait(10) == 97
    assert ringing and ringing[0].wait(10) == 97
    received = ringing[0].received()
    invites = [m for m in received if m.startswith("INVITE ")]
    cancels = [m for m in received if m.startswith("CANCEL ")]
    assert len(invites) == 1, "one INVITE per device, never two"
    assert len(cancels) == 1 and ELSEWHERE in cancels[0]
    # The second device joined the call the first one's wake-up resumed (tsilo).
    assert [e["outcome"] for e in stack.events("ringing_join")] == ["joined"]
    assert stack.apns is not None
    voip = [p.token for p in stack.apns.pushes if p.push_type == "voip"]
    assert sorted(voip) == sorted([first.token, second.token])


@on_kamailio("5.6", "6.0")
def test_device_waking_after_the_call_ended_has_no_call_to_join(make_stack: MakeStack) -> None:
    """Pushed while the desk phone rang, woken after the desk answered and the call is
    gone: tsilo has nothing to add it to (5.6 says -1, 6.0 -2: kemi/compat.py reads both)."""
    stack = make_stack()
    iphone, desk = stack.phone("carol", n=1), stack.phone("carol", n=2)
    stack.register_and_sleep(iphone)
    desk_run = stack.register(desk, keep_open_ms=15000, answer=True, label="desk")
    wait_until(lambda: len(stack.bindings("carol")) == 2, 10, "two bindings")
    caller = stack.call("carol", expect_answer=True)
    assert caller.wait(20) == 0, caller.output()[-2000:]
    assert desk_run.wait(10) == 97
    # tm keeps the ended transaction for its wait timer; tsilo forgets it after.
    wait_until(
        lambda: "carol" not in stack.kamailio.kamcmd("ts.dump"), 15, "tsilo to drop the call", 0.2
    )
    stack.register_and_sleep(iphone)
    assert [e["outcome"] for e in stack.events("ringing_join")] == ["no_call"]
