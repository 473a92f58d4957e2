"""Fast wake-up: the one-time token from the push replaces the digest round trip."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from testkit.procs import wait_until
from testkit.stack import Stack, push_data

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def test_woken_phone_registers_with_its_wake_token_and_answers(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone, fast=True)
    caller = stack.call("alice", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert woken and woken[0].wait(15) == 97
    # Accepted on the first REGISTER: no 401 in the woken phone's trace.
    statuses = [m.splitlines()[0] for m in woken[0].received() if m.startswith("SIP/2.0")]
    assert statuses[0] == "SIP/2.0 200 OK"
    assert "SIP/2.0 401 Unauthorized" not in statuses
    assert [e["accepted"] for e in stack.events("wake_token")] == ["True"]


def test_wake_token_is_single_use_and_bound_to_the_instance(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=5)
    phone = stack.phone("bob")
    stack.register_and_sleep(phone)
    caller = stack.call("bob", expect_answer=False)
    assert stack.apns is not None
    (push,) = stack.apns.wait_for_pushes(1)
    token = push_data(push)["wake_token"]
    # Another instance presenting the token: refused (falls back to digest, gets 401).
    other = dataclasses.replace(phone, instance="00000000-0000-4000-8000-0000000000ff")
    run = stack.register(other, wake_token=token, label="thief")
    assert run.wait(10) != 0
    assert run.received()[-1].startswith("SIP/2.0 401")
    # The token was burnt by the misuse: the right phone can't use it either now.
    run = stack.register(phone, wake_token=token, label="late")
    assert run.wait(10) != 0
    assert run.received()[-1].startswith("SIP/2.0 401")
    assert [e["accepted"] for e in stack.events("wake_token")] == ["False", "False"]
    # Normal digest still works.
    stack.register_and_sleep(phone)
    wait_until(lambda: stack.count_events("resume") == 1, 5, "resume after digest REGISTER")
    caller.stop()
