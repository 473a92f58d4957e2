"""Pushgate dropped into Kamailio's own stock configs with the patches docs/integrate.md shows.

Both flavours of testkit/stock.py, taken from the installed Debian package at test time:
the default config (native, ``patches/kamailio-<version>-default.patch``) and the KEMI
Python example (``patches/kamailio-<version>-kemi-python.patch``), on Kamailio 5.6 (the
host's) and, for the cases marked ``on_kamailio("5.6", "6.0")``, on 6.0 (its root: Debian
13's default config and the 6.0 source's KEMI example). The host keeps its own digest
auth, lookup, relay, NAT handling and accounting; callers come from a foreign domain
(the stock configs challenge INVITEs from local users).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit import sipp, stock
from testkit.certs import TestPki
from testkit.linphone import Linphone, PushStyle
from testkit.postgres import PostgresCluster
from testkit.procs import wait_until
from testkit.stack import DOMAIN, TEAM_PARAM_PREFIX, Stack
from tests.conftest import MakeLinphone, on_kamailio
from tests.e2e.test_linphone import BUNDLE, VOIP_TOKEN, sleep_push_wake_answer

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("flavour", stock.FLAVOURS)]

REPO = Path(__file__).resolve().parents[2]


def patch_for(flavour: str, version: str = "5.6") -> Path:
    """Pushgate's patch to Kamailio ``version``'s stock config of ``flavour`` (one per
    release: the stock files' context lines differ between 5.6 and 6.0)."""
    name = {"default": "default", "kemi": "kemi-python"}[flavour]
    return REPO / "patches" / f"kamailio-{version}-{name}.patch"


FOREIGN = "caller.example"

MakeStack = Callable[..., Stack]


@pytest.fixture
def dropin(make_stack: MakeStack, kamailio_version: str) -> Callable[..., Stack]:
    """``dropin(flavour, **make_stack_kwargs)``: a stock config with Pushgate's patch (the
    test's Kamailio version's config and patch)."""

    def factory(flavour: str, **kwargs: object) -> Stack:
        patch = patch_for(flavour, kamailio_version)
        return make_stack(flavour=flavour, patches=[patch], **kwargs)

    return factory


Dropin = Callable[..., Stack]


def changed_lines(patch: Path) -> int:
    return sum(
        1
        for line in patch.read_text().splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


@on_kamailio("5.6", "6.0")
def test_the_patches_stay_small_and_pass_the_syntax_check(
    flavour: str, kamailio_version: str, pg: PostgresCluster, pki: TestPki, tmp_path: Path
) -> None:
    patch = patch_for(flavour, kamailio_version)
    assert changed_lines(patch) <= (32 if flavour == "default" else 25)
    stack = Stack(
        tmp_path / "stack", pg, pki, flavour=flavour, patches=[patch], kamailio=kamailio_version
    )
    r = stack.kamailio.check()
    assert r.returncode == 0, r.stderr[-3000:]


@on_kamailio("5.6", "6.0")
def test_sleeping_iphone_is_woken_by_apns_and_answers(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour)
    phone = stack.phone("alice")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)
    caller = stack.call("alice", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert stack.apns is not None
    (push,) = stack.apns.pushes
    assert (push.token, push.push_type, push.topic) == (phone.token, "voip", f"{BUNDLE}.voip")
    assert push.payload.get("aor") == f"sip:alice@{DOMAIN}"
    assert len(woken) == 1 and woken[0].wait(15) == 97
    received = [m.splitlines()[0] for m in woken[0].received()]
    # The woken phone's REGISTER is challenged the host's way, then the INVITE arrives once.
    assert received[0] == "SIP/2.0 401 Unauthorized"
    assert sum(1 for line in received if line.startswith("INVITE ")) == 1
    # The woken device replaced its binding (same +sip.instance, new flow): one binding.
    assert len(stack.bindings("alice")) == 1
    # Delivered through the host's own location + relay: accounted as the host does.
    log = stack.kamailio.log.read_text(errors="replace")
    assert "ACC: transaction answered:" in log


@on_kamailio("6.0")
def test_a_5_6_config_with_its_hooks_keeps_working_after_the_upgrade_to_6_0(
    flavour: str, make_stack: MakeStack
) -> None:
    """Debian's upgrade keeps an operator's changed kamailio.cfg (and KEMI script): 5.6's
    stock files with 5.6's patches, run by Kamailio 6.0."""
    stack = make_stack(flavour=flavour, patches=[patch_for(flavour, "5.6")], stock_from="5.6")
    phone = stack.phone("paul")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)
    caller = stack.call("paul", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert stack.apns is not None and [p.push_type for p in stack.apns.pushes] == ["voip"]
    assert len(woken) == 1 and woken[0].wait(15) == 97
    assert "ACC: transaction answered:" in stack.kamailio.log.read_text(errors="replace")


def test_sleeping_android_is_woken_by_fcm_and_answers(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour)
    phone = stack.phone("bob", provider="fcm")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone)
    caller = stack.call("bob", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert stack.fcm is not None
    calls = [m for m in stack.fcm.messages if (m.data or {}).get("kind") == "call"]
    assert [m.token for m in calls] == [phone.token]
    assert len(woken) == 1 and woken[0].wait(15) == 97


@on_kamailio("5.6", "6.0")
def test_live_phone_rings_directly_without_push(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour)
    phone = stack.phone("carol")
    live = stack.register(phone, keep_open_ms=15000, answer=True, label="live")
    wait_until(lambda: len(stack.bindings("carol")) == 1, 10, "carol's binding")
    caller = stack.call("carol", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert live.wait(15) == 97
    assert stack.apns is not None and stack.apns.pushes == []


@on_kamailio("5.6", "6.0")
def test_phone_that_never_wakes_gets_480_at_the_hold_timeout(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour, hold_timeout=3)
    stack.register_and_sleep(stack.phone("dave"))
    started = time.monotonic()
    caller = stack.call("dave", expect_answer=False, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    code, reason = caller.final_response()
    assert code == 480 and "did not wake" in reason
    assert 2.5 <= time.monotonic() - started <= 6


@on_kamailio("5.6", "6.0")
def test_apns_410_ends_the_call_early_and_removes_the_binding(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour, hold_timeout=20)
    phone = stack.phone("erin")
    stack.register_and_sleep(phone)
    assert stack.apns is not None
    stack.apns.script(phone.token, 410, "Unregistered")
    started = time.monotonic()
    caller = stack.call("erin", expect_answer=False, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    code, reason = caller.final_response()
    assert code == 480 and "Push notification failed" in reason
    assert time.monotonic() - started < 5
    wait_until(lambda: stack.bindings("erin") == [], 5, "binding removal")


@on_kamailio("5.6", "6.0")
def test_cancel_during_the_hold_gives_487(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour)
    phone = stack.phone("frank")
    stack.register_and_sleep(phone)
    caller = sipp.start(
        "caller_cancel",
        target_port=stack.kamailio.sip_port,
        logdir=stack.logs,
        keys={"domain": DOMAIN, "callee": "frank", "caller_domain": FOREIGN},
        pause_ms=500,
        label="canceller",
    )
    assert caller.wait(10) == 0, caller.output()[-3000:]
    assert [m.splitlines()[0] for m in caller.received()][-2:] == [
        "SIP/2.0 200 OK",
        "SIP/2.0 487 Request Terminated",
    ]
    assert stack.apns is not None
    kinds = [p.push_type for p in stack.apns.wait_for_pushes(2)]
    assert kinds == ["voip", "alert"]  # the call, then its cancel notice


def test_pushd_down_fails_cleanly_and_sip_keeps_working(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour, pushd=False)
    stack.register_and_sleep(stack.phone("gina"))
    started = time.monotonic()
    caller = stack.call("gina", expect_answer=False, caller_domain=FOREIGN)
    assert caller.wait(10) == 0, caller.output()[-3000:]
    code, reason = caller.final_response()
    assert code == 480 and "Push service unavailable" in reason
    assert time.monotonic() - started < 3
    stack.register_and_sleep(stack.phone("hank"))
    assert len(stack.bindings("hank")) == 1


def test_phone_without_push_params_behaves_as_without_pushgate(
    flavour: str, dropin: Dropin
) -> None:
    stack = dropin(flavour)
    phone = stack.phone("ivan")
    phone.push = False
    live = stack.register(phone, keep_open_ms=15000, answer=True, label="ivan")
    wait_until(lambda: len(stack.bindings("ivan")) == 1, 10, "ivan's binding")
    caller = stack.call("ivan", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert live.wait(15) == 97
    # Asleep without push: the host's own answer (its relay fails at once), no push.
    stack.register_and_sleep(phone)
    again = stack.call("ivan", expect_answer=False, caller_domain=FOREIGN, label="asleep")
    assert again.wait(10) == 0, again.output()[-3000:]
    assert again.final_response()[0] in (477, 500)
    assert stack.apns is not None and stack.apns.pushes == []


def test_unauthenticated_register_is_challenged_the_hosts_way(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour, pushd=False)
    run = stack.register_without_credentials(stack.phone("jane"))
    assert run.wait(10) == 0, run.output()[-3000:]
    assert run.final_response()[0] == 401
    assert f'WWW-Authenticate: Digest realm="{DOMAIN}"' in run.received()[-1]
    assert stack.bindings("jane") == []


@on_kamailio("5.6", "6.0")
def test_real_linphonec_is_woken_by_push_and_answers(
    flavour: str, dropin: Dropin, make_linphone: MakeLinphone
) -> None:
    stack = dropin(flavour)
    params = f"pn-provider=apns;pn-prid={VOIP_TOKEN};pn-param={TEAM_PARAM_PREFIX}.{BUNDLE}.voip"
    phone: Linphone = make_linphone(stack, "kate", PushStyle.CONTACT_URI, params)
    sleep_push_wake_answer(stack, phone, VOIP_TOKEN, caller_domain=FOREIGN)
    wait_until(
        lambda: "ended" in phone.out_file(1).read_text(errors="replace"), 10, "the call to end"
    )
    output = phone.out_file(1).read_text(errors="replace")
    assert "auto answering" in output and "connected" in output


@on_kamailio("5.6", "6.0")
def test_live_and_sleeping_devices_fork_and_the_sleeper_hears_answered_elsewhere(
    flavour: str, dropin: Dropin
) -> None:
    stack = dropin(flavour)
    iphone, desk = stack.phone("lena", n=1), stack.phone("lena", n=2)
    stack.register_and_sleep(iphone)
    desk_run = stack.register(desk, keep_open_ms=15000, answer=True, label="desk")
    wait_until(lambda: len(stack.bindings("lena")) == 2, 10, "two bindings")
    caller = stack.call("lena", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert desk_run.wait(10) == 97
    assert stack.apns is not None
    pushes = stack.apns.wait_for_pushes(2, timeout=5)
    # Two requests in flight at once on HTTP/2 streams: APNs (and its stand-in) may take
    # the alert before the VoIP push; Apple promises no order either.
    by_type = {p.push_type: p for p in pushes}
    assert sorted((p.token, p.push_type) for p in pushes) == [
        (iphone.token, "alert"),
        (iphone.token, "voip"),
    ]
    assert by_type["alert"].payload.get("reason") == "answered_elsewhere"


def test_woken_phone_skips_the_challenge_with_its_wake_token(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour)
    phone = stack.phone("mia")
    stack.register_and_sleep(phone)
    woken = stack.wake_on_push(phone, fast=True)
    caller = stack.call("mia", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(30) == 0, caller.output()[-3000:]
    assert woken and woken[0].wait(15) == 97
    statuses = [m.splitlines()[0] for m in woken[0].received() if m.startswith("SIP/2.0")]
    assert statuses[0] == "SIP/2.0 200 OK"
    assert [e["accepted"] for e in stack.events("wake_token")] == ["True"]


@on_kamailio("5.6", "6.0")
def test_message_to_a_sleeping_device_is_stored_pushed_and_delivered_on_register(
    flavour: str, dropin: Dropin
) -> None:
    stack = dropin(flavour)
    phone = stack.phone("nora")
    stack.register_and_sleep(phone)
    sender = stack.send_message("nora", "see you at 8", caller_domain=FOREIGN)
    assert sender.wait(10) == 0, sender.output()[-3000:]
    assert sender.final_response()[0] == 202
    assert stack.apns is not None
    (push,) = stack.apns.wait_for_pushes(1)
    assert push.push_type == "alert"
    run = stack.register(phone, keep_open_ms=10000, take_message=True, label="woken")
    assert run.wait(15) == 97, run.output()[-3000:]
    taken = [m for m in run.received() if m.startswith("MESSAGE ")]
    assert len(taken) == 1 and "see you at 8" in taken[0]


def test_register_with_bad_push_params_gets_400_and_a_warning(flavour: str, dropin: Dropin) -> None:
    stack = dropin(flavour, pushd=False)
    run = stack.register_refused(stack.phone("olga"), prid="not-a-hex-token")
    assert run.wait(10) == 0, run.output()[-3000:]
    assert run.final_response()[0] == 400
    assert 'Warning: 399 pushgate "pn-prid:' in run.received()[-1]
    assert stack.bindings("olga") == []
