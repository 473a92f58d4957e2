"""Held-call admission by shared memory (kemi/capacity.py): every call held keeps room
for its phone's wake-up, and a call leaves the count when it ends."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from testkit.stack import Stack, is_call_push

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def test_a_call_is_held_only_while_every_held_calls_wake_up_fits(make_stack: MakeStack) -> None:
    # -m 64, a few MB used: room for 1 MB + one wake-up of 40,000 KB, not for two.
    stack = make_stack(
        hold_timeout=3, defines={"PUSHGATE_SHM_RESERVE": "1", "PUSHGATE_WAKE_SHM": "40000"}
    )
    alice, bob = stack.phone("alice"), stack.phone("bob")
    stack.register_and_sleep(alice)
    stack.register_and_sleep(bob)
    assert stack.apns is not None
    first = stack.call("alice", expect_answer=False, label="alice")
    stack.apns.wait_for_pushes(1)
    # alice's call is held: bob's would need room for two wake-ups.
    refused = stack.call("bob", expect_answer=False, label="bob-refused")
    assert refused.wait(10) == 0, refused.output()[-2000:]
    assert refused.final_response() == (503, 'SIP;cause=503;text="Server at capacity"')
    assert "Retry-After: 30" in refused.received()[-1]
    assert [e["why"] for e in stack.events("hold_refused")] == ["shm"]
    assert call_pushes(stack) == [alice.token]
    # alice's call ends at the hold timeout and leaves the count: bob's is held now.
    assert first.wait(15) == 0 and first.final_response()[0] == 480
    again = stack.call("bob", expect_answer=False, label="bob-held")
    assert again.wait(15) == 0 and again.final_response()[0] == 480
    assert call_pushes(stack) == [alice.token, bob.token]
    assert len(stack.events("hold_refused")) == 1


def call_pushes(stack: Stack) -> list[str]:
    assert stack.apns is not None
    return [p.token for p in stack.apns.pushes if is_call_push(p)]
