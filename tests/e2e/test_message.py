"""MESSAGE to a sleeping device: stored by msilo, alert push, delivered on its next REGISTER."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from testkit.procs import wait_until
from testkit.stack import Stack

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def stored(stack: Stack, user: str) -> int:
    return int(stack.pg.query("SELECT count(*) FROM silo WHERE username = %s", (user,))[0][0])


def test_message_to_sleeping_device_is_stored_pushed_and_delivered_after_restart(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    sender = stack.send_message("alice", "see you at 8")
    assert sender.wait(10) == 0, sender.output()[-2000:]
    assert sender.final_response()[0] == 202
    assert stored(stack, "alice") == 1
    assert stack.apns is not None
    (push,) = stack.apns.wait_for_pushes(1)
    assert (push.push_type, push.topic) == ("alert", "com.example.app")
    assert push.payload.get("sender") == "sip:bob@caller.example"
    assert "preview" not in push.payload  # off by default: privacy
    # Nothing is lost across a restart of Kamailio and pushd.
    stack.stop_pushd()
    stack.kamailio.stop()
    stack.kamailio.start()
    stack.start_pushd()
    assert stored(stack, "alice") == 1
    # The device wakes (user opens the app): its REGISTER brings the message.
    run = stack.register(phone, keep_open_ms=10000, take_message=True, label="woken")
    assert run.wait(15) == 97, run.output()[-2000:]
    message = next(m for m in run.received() if m.startswith("MESSAGE "))
    assert message.rstrip().endswith("see you at 8")
    wait_until(lambda: stored(stack, "alice") == 0, 5, "the stored message to be removed")


def test_message_to_live_device_is_delivered_at_once(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("bob")
    live = stack.register(phone, keep_open_ms=10000, take_message=True, label="live")
    wait_until(lambda: len(stack.bindings("bob")) == 1, 10, "bob's binding")
    sender = stack.send_message("bob", "hello")
    assert sender.wait(10) == 0, sender.output()[-2000:]
    assert sender.final_response()[0] == 200
    assert live.wait(10) == 97
    assert stored(stack, "bob") == 0
    assert stack.apns is not None and stack.apns.pushes == []
