"""Removed bindings are never pushed; phones behind NAT are reached over their flow."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest

from testkit import sipp
from testkit.stack import Stack

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def assert_480_without_push(stack: Stack, user: str) -> None:
    caller = stack.call(user, expect_answer=False)
    assert caller.wait(10) == 0, caller.output()[-2000:]
    assert caller.final_response()[0] == 480
    assert stack.apns is not None and stack.apns.pushes == []


def test_expires_zero_removes_the_binding_and_stops_pushes(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    stack.register_and_sleep(dataclasses.replace(phone, expires=0))
    # Straight after the delete: memory (what calls use) and database agree at once.
    assert stack.bindings("alice") == []
    assert "sip:alice@pushgate.test" not in stack.kamailio.kamcmd("ul.dump")
    assert_480_without_push(stack, "alice")


def test_contact_star_removes_every_binding(make_stack: MakeStack) -> None:
    stack = make_stack()
    iphone = stack.phone("bob")
    stack.register_and_sleep(iphone)
    stack.register_and_sleep(stack.phone("bob", n=2))
    assert len(stack.bindings("bob")) == 2
    run = sipp.start(
        "phone_unregister_all",
        target_port=stack.kamailio.sip_port,
        logdir=stack.logs,
        transport="t1",
        keys=iphone.keys(),
        auth=(iphone.user, iphone.password),
        label="unregister-all",
    )
    assert run.wait(10) == 0, run.output()[-2000:]
    assert stack.bindings("bob") == []
    assert_480_without_push(stack, "bob")


def test_unknown_pn_params_are_kept_and_ignored(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("carol")
    odd = dataclasses.replace(phone, param=phone.param + ";pn-silent=1;pn-timeout=0;pn-msg-str=IM")
    stack.register_and_sleep(odd)
    (contact,) = stack.bindings("carol")
    assert "pn-silent=1" in contact and "pn-msg-str=IM" in contact
    woken = stack.wake_on_push(odd)
    caller = stack.call("carol", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert woken and woken[0].wait(15) == 97


def test_phone_behind_nat_is_reached_over_its_flow_not_its_contact(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    # The Contact names an address the phone does not listen on (as behind NAT).
    phone = dataclasses.replace(stack.phone("dave"), contact_host="127.0.0.2:5099")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)
    caller = stack.call("dave", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert woken and woken[0].wait(15) == 97


def test_client_without_outbound_is_replaced_by_instance_and_reached_over_its_flow(
    make_stack: MakeStack,
) -> None:
    """liblinphone/baresip style: +sip.instance but no reg-id and no ;ob."""
    stack = make_stack()
    phone = dataclasses.replace(stack.phone("erin"), outbound=False, contact_host="127.0.0.3:5070")
    stack.register_and_sleep(phone)
    stack.register_and_sleep(phone)  # a new connection, same instance
    assert len(stack.bindings("erin")) == 1
    woken = stack.wake_on_push(phone)
    caller = stack.call("erin", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert woken and woken[0].wait(15) == 97
    assert len(stack.bindings("erin")) == 1


def test_in_dialog_requests_to_a_gruu_reach_the_phone(make_stack: MakeStack) -> None:
    """The phone answers with its GRUU as Contact; the caller's BYE must still arrive."""
    stack = make_stack()
    phone = dataclasses.replace(stack.phone("fred"), gruu=True)
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)
    caller = stack.call("fred", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert woken and woken[0].wait(15) == 97
    # The caller addressed its BYE to the GRUU; the proxy retargeted it to the phone's flow.
    assert f"BYE sip:fred@pushgate.test;gr=urn:uuid:{phone.instance}" in caller.messages()
    assert len([m for m in woken[0].received() if m.startswith("BYE ")]) == 1


def test_expired_binding_is_never_pushed(make_stack: MakeStack) -> None:
    stack = make_stack(defines={"REG_MIN_EXPIRES": "1", "PUSHGATE_MIN_EXPIRES": "1"})
    phone = dataclasses.replace(stack.phone("gail"), expires=2)
    stack.register_and_sleep(phone)
    assert len(stack.bindings("gail")) == 1
    time.sleep(3)  # the binding's own lifetime, not a readiness guess
    # usrloc's timer has not necessarily purged it yet; calls must ignore it anyway.
    assert_480_without_push(stack, "gail")
