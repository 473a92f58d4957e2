"""REGISTER: digest authentication, pn param validation, persistence across restarts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from testkit.procs import wait_until
from testkit.stack import Stack
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]


def test_register_without_credentials_is_challenged_and_stores_nothing(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(pushd=False)
    phone = stack.phone("alice")
    run = stack.register_without_credentials(phone)
    assert run.wait(10) == 0, run.output()[-2000:]
    code, _ = run.final_response()
    assert code == 401
    assert stack.bindings("alice") == []


def test_register_with_wrong_password_is_refused_and_stores_nothing(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(pushd=False)
    phone = stack.phone("alice")
    run = stack.register(phone, password="wrong-password")
    assert run.wait(10) != 0
    assert run.final_response()[0] in (401, 403)
    assert stack.bindings("alice") == []


def test_malformed_push_params_get_400_with_a_warning_naming_the_param(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(pushd=False)
    phone = stack.phone("alice")
    run = stack.register_refused(phone, prid="not-a-hex-token")
    assert run.wait(10) == 0, run.output()[-2000:]
    assert run.final_response()[0] == 400
    last = run.received()[-1]
    assert 'Warning: 399 pushgate "pn-prid:' in last
    assert stack.bindings("alice") == []


def test_outbound_registration_is_answered_with_flow_timer_and_stored_with_push_params(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(pushd=False)
    phone = stack.phone("alice")
    run = stack.register(phone)
    assert run.wait(10) == 0
    ok = run.received()[-1]
    assert ok.startswith("SIP/2.0 200")
    assert "Require: outbound" in ok and "Flow-Timer: 25" in ok
    assert 'Feature-Caps: *;+sip.pns="apns"' in ok
    ((contact, instance, reg_id),) = stack.pg.query(
        "SELECT contact, instance, reg_id FROM location WHERE username = %s", ("alice",)
    )
    assert f"pn-prid={phone.token}" in contact
    assert phone.instance in instance and reg_id == 1
    # Same instance + reg-id from a new connection replaces the binding (RFC 5626 §6).
    assert stack.register(phone).wait(10) == 0
    assert len(stack.bindings("alice")) == 1


@on_kamailio("5.6", "6.0")
def test_push_capable_bindings_survive_a_kamailio_restart(make_stack: MakeStack) -> None:
    stack = make_stack(hold_timeout=10)
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    stack.kamailio.stop()
    stack.kamailio.start()
    wait_until(lambda: stack.count_events("pushd_connected") >= 2, 15, "pushd to reconnect")
    woken = stack.wake_on_push(phone)
    caller = stack.call("alice", expect_answer=True)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert stack.apns is not None and len(stack.apns.pushes) == 1
    assert woken and woken[0].wait(15) == 97


@on_kamailio("5.6", "6.0")
def test_kamailio_cfg_passes_the_syntax_check(make_stack: MakeStack) -> None:
    stack = make_stack(pushd=False)
    result = stack.kamailio.check()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("keys", "status", "header"),
    [
        ({"provider": "webpush"}, 555, 'Warning: 399 pushgate "pn-provider'),
        ({"expires": "30"}, 423, "Min-Expires: 150"),
    ],
)
def test_unserved_provider_and_too_short_expiry_are_refused(
    make_stack: MakeStack, keys: dict[str, str], status: int, header: str
) -> None:
    stack = make_stack(pushd=False)
    phone = stack.phone("alice")
    run = stack.register_refused(phone, **keys)
    assert run.wait(10) == 0, run.output()[-2000:]
    assert run.final_response()[0] == status
    assert header in run.received()[-1]
    assert stack.bindings("alice") == []


def test_pushd_is_refused_while_the_secret_is_the_default(make_stack: MakeStack) -> None:
    stack = make_stack(pushd=False, defines={"PUSHGATE_SECRET": '"change-me"'})
    stack.kamailio.secret = "change-me"
    stack.start_pushd(wait=False)
    wait_until(
        lambda: "PUSHGATE_SECRET is not set" in stack.kamailio.log.read_text(), 15, "the refusal"
    )
    assert stack.count_events("pushd_connected") == 0


@pytest.mark.parametrize(
    ("defines", "fix"),
    [
        ({"UL_DB_MODE": "0"}, "PUSHGATE_USRLOC_MEMORY"),
    ],
)
def test_kamailio_refuses_to_start_without_what_pushgate_needs(
    make_stack: MakeStack, defines: dict[str, str], fix: str
) -> None:
    with pytest.raises(RuntimeError) as failed:
        make_stack(pushd=False, defines=defines)
    assert "pushgate: cannot start:" in str(failed.value) and fix in str(failed.value)


def test_usrloc_in_memory_only_is_accepted_when_asked_for(make_stack: MakeStack) -> None:
    stack = make_stack(pushd=False, defines={"UL_DB_MODE": "0", "PUSHGATE_USRLOC_MEMORY": ""})
    assert stack.kamailio.running()
