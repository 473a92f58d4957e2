"""Who may do what (docs/security.md): a push token under someone else's AoR, a wake token
replayed or used by another device, a local user calling without credentials."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from testkit import sipp
from testkit.stack import DOMAIN, Stack, push_data
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def statuses(run: sipp.SippRun) -> list[str]:
    return [m.splitlines()[0] for m in run.received() if m.startswith("SIP/2.0")]


def answered(run: sipp.SippRun) -> set[str]:
    """The answers a scenario got that it did not expect (SIPp traces those twice)."""
    return set(statuses(run))


@on_kamailio("5.6", "6.0")
def test_a_push_binding_under_someone_elses_aor_is_refused(make_stack: MakeStack) -> None:
    # bob's own credentials, alice's AoR in From/To: auth_check(..., flag 1) compares the
    # credentials' user with the To user of a REGISTER and fails; the answer is a new
    # challenge (as Kamailio's default config does), nothing is stored, nothing pushed.
    stack = make_stack(hold_timeout=3)
    alice, bob = stack.phone("alice"), stack.phone("bob")
    run = stack.register_scenario("register_other_aor", alice, auth=(bob.user, bob.password))
    assert run.wait(10) == 0, run.output()[-2000:]
    assert statuses(run) == ["SIP/2.0 401 Unauthorized", "SIP/2.0 401 Unauthorized"]
    assert stack.bindings("alice") == [] and stack.bindings("bob") == []
    (challenged, again) = stack.events("register_challenged")
    assert (challenged["aor"], challenged["rc"]) == (f"sip:alice@{DOMAIN}", "-5")  # none given
    assert again["rc"] == "-8"  # AUTH_USER_MISMATCH: bob's credentials are good, not alice's
    caller = stack.call("alice", expect_answer=False)
    assert caller.wait(10) == 0 and caller.final_response()[0] == 480
    assert stack.apns is not None and stack.apns.pushes == []


def test_a_wake_token_is_refused_once_used(make_stack: MakeStack) -> None:
    stack = make_stack()
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone, fast=True)
    caller = stack.call("alice", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-2000:]
    assert woken and woken[0].wait(15) == 97
    assert stack.apns is not None
    token = push_data(stack.apns.pushes[0])["wake_token"]
    # The same REGISTER again, token and all (a replay): digest challenge, not a 200.
    replay = stack.register(phone, wake_token=token, label="replay")
    assert replay.wait(10) != 0
    assert answered(replay) == {"SIP/2.0 401 Unauthorized"}
    assert [e["accepted"] for e in stack.events("wake_token")] == ["True", "False"]


def test_a_wake_token_is_refused_to_another_aor_and_to_another_device(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(hold_timeout=4)
    alice, bob = stack.phone("alice"), stack.phone("bob")
    stack.register_and_sleep(alice)
    stack.register_and_sleep(bob)
    callers = [stack.call(user, expect_answer=False, label=user) for user in ("alice", "bob")]
    assert stack.apns is not None
    pushes = stack.apns.wait_for_pushes(2)
    token = {p.token: push_data(p)["wake_token"] for p in pushes}
    # bob's token in alice's REGISTER (her own device): bound to bob's AoR.
    run = stack.register(alice, wake_token=token[bob.token], label="other-aor")
    assert run.wait(10) != 0 and answered(run) == {"SIP/2.0 401 Unauthorized"}
    # alice's token from another device of alice's: bound to the pushed instance.
    other = dataclasses.replace(alice, instance="00000000-0000-4000-8000-0000000000ff")
    run = stack.register(other, wake_token=token[alice.token], label="other-instance")
    assert run.wait(10) != 0 and answered(run) == {"SIP/2.0 401 Unauthorized"}
    assert [e["accepted"] for e in stack.events("wake_token")] == ["False", "False"]
    assert stack.events("resume") == []
    for caller in callers:
        assert caller.wait(10) == 0 and caller.final_response()[0] == 480


@on_kamailio("5.6", "6.0")
def test_a_local_caller_without_credentials_is_challenged_and_nothing_is_pushed(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    stack.register_and_sleep(stack.phone("alice"))
    stack.phone("bob")  # a local user: From bob@pushgate.test must prove it
    caller = stack.call("alice", expect_answer=False, caller_domain=DOMAIN)
    assert caller.wait(10) == 0, caller.output()[-2000:]
    assert caller.final_response()[0] == 407
    lines = caller.received()[-1].splitlines()
    (challenge,) = [line for line in lines if line.startswith("Proxy-Authenticate:")]
    assert challenge.startswith(f'Proxy-Authenticate: Digest realm="{DOMAIN}"')
    assert [e["method"] for e in stack.events("request_challenged")] == ["INVITE"]
    assert stack.events("request_in") == []  # never reached the location step
    assert stack.apns is not None and stack.apns.pushes == []
    # A MESSAGE too (msilo would store and push it).
    sender = stack.send_message("alice", "hi", caller_domain=DOMAIN)
    assert sender.wait(10) != 0
    assert answered(sender) == {"SIP/2.0 407 Proxy Authentication Required"}
    assert stack.apns.pushes == []


def test_a_local_caller_with_credentials_gets_through_and_only_as_itself(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    alice = stack.phone("alice")
    live = stack.register(alice, keep_open_ms=15000, answer=True, label="alice")
    bob, carol = stack.phone("bob", password="bobs-secret"), stack.phone("carol")

    def call(auth: tuple[str, str], label: str) -> sipp.SippRun:
        return sipp.start(
            "caller_call_auth",
            target_port=stack.kamailio.sip_port,
            logdir=stack.logs,
            keys={"domain": DOMAIN, "callee": "alice", "caller_domain": DOMAIN},
            auth=auth,
            label=label,
        )

    # carol's good credentials in a call From bob: flag 1 wants bob's. Challenged again.
    impostor = call((carol.user, carol.password), "impostor")
    assert impostor.wait(10) != 0
    seen = statuses(impostor)  # (then SIPp's own BYE when it aborts the call: 404)
    assert seen[:2] == ["SIP/2.0 407 Proxy Authentication Required"] * 2
    assert not [s for s in seen if s.startswith(("SIP/2.0 1", "SIP/2.0 2"))], seen
    assert [e["rc"] for e in stack.events("request_challenged")] == ["-5", "-8"]
    # bob's own: the call is answered.
    caller = call((bob.user, bob.password), "bob")
    assert caller.wait(20) == 0, caller.output()[-2000:]
    assert live.wait(15) == 97


def test_a_message_a_local_user_stored_is_delivered_from_the_store(make_stack: MakeStack) -> None:
    # msilo sends a stored MESSAGE with its sender's From: from a local user, it must not
    # be challenged by our own authentication (it is trusted as msilo's, PUSHGATE_TRUSTED).
    stack = make_stack()
    alice = stack.phone("alice")
    stack.register_and_sleep(alice)
    bob = stack.phone("bob")
    sender = sipp.start(
        "sender_message_auth",
        target_port=stack.kamailio.sip_port,
        logdir=stack.logs,
        keys={"domain": DOMAIN, "callee": "alice", "text": "from a neighbour",
              "caller_domain": DOMAIN},
        auth=(bob.user, bob.password),
        label="sender",
    )  # fmt: skip
    assert sender.wait(10) == 0, sender.output()[-2000:]
    assert statuses(sender)[-1] == "SIP/2.0 202 Accepted"
    run = stack.register(alice, keep_open_ms=10000, take_message=True, label="woken")
    assert run.wait(15) == 97, run.output()[-2000:]
    message = next(m for m in run.received() if m.startswith("MESSAGE "))
    assert f"From: \"Bob\" <sip:bob@{DOMAIN}>" in message or f"sip:bob@{DOMAIN}" in message
    assert message.rstrip().endswith("from a neighbour")
    assert [e["method"] for e in stack.events("request_challenged")] == ["MESSAGE"]
