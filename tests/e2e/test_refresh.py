"""Binding refresh by push (RFC 8599 §5.5) through the real stack."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from testkit.procs import wait_until
from testkit.stack import Stack

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]
SHORT = {"REG_MIN_EXPIRES": "1", "PUSHGATE_MIN_EXPIRES": "1"}


def expires_at(stack: Stack, user: str) -> object:
    return stack.pg.query("SELECT expires FROM location WHERE username = %s", (user,))


def test_binding_about_to_expire_gets_one_refresh_push_then_none(make_stack: MakeStack) -> None:
    stack = make_stack(defines=SHORT, refresh_interval=1)
    phone = dataclasses.replace(stack.phone("rita", provider="fcm"), expires=10)
    stack.register_and_sleep(phone)
    first_expiry = expires_at(stack, "rita")
    assert stack.fcm is not None
    (msg,) = stack.fcm.wait_for_messages(1, timeout=10)
    assert msg.token == phone.token and (msg.data or {}).get("kind") == "refresh"
    # The app re-registers on the refresh push: the binding lives on, one push per lifetime.
    stack.register_and_sleep(phone)
    assert expires_at(stack, "rita") != first_expiry
    (_, second) = stack.fcm.wait_for_messages(2, timeout=10)
    assert (second.data or {}).get("kind") == "refresh"
    # Removed: never pushed again.
    stack.register_and_sleep(dataclasses.replace(phone, expires=0))
    count = len(stack.fcm.messages)
    wait_until(lambda: stack.bindings("rita") == [], 5, "the removal")
    with pytest.raises(TimeoutError):
        stack.fcm.wait_for_messages(count + 1, timeout=3)
