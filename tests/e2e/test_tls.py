"""Phones on SIP over TLS (WITH_TLS) are woken and reached like TCP ones."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from testkit.stack import Stack

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def test_phone_registered_over_tls_is_woken_and_answers(make_stack: MakeStack) -> None:
    stack = make_stack(tls=True)
    phone = stack.phone("tina")
    stack.register_and_sleep(phone)
    assert [e["proto"] for e in stack.events("register_in")] == ["tls"]
    woken = stack.wake_on_push(phone)
    caller = stack.call("tina", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert woken and woken[0].wait(15) == 97
    assert [e["proto"] for e in stack.events("register_in")] == ["tls", "tls"]
    assert stack.apns is not None and len(stack.apns.pushes) == 1
    (binding,) = stack.pg.query("SELECT received FROM location WHERE username = %s", ("tina",))
    assert str(binding[0]).endswith(";transport=tls")
