"""A real Linphone (Debian's ``linphonec``) is woken by push and answers (issue: real Linphone).

The phone registers over TCP with RFC 8599 push params and ``+sip.instance``, is put to
sleep (SIGKILL: its TCP flow dies, no un-REGISTER), the call's VoIP push reaches the fake
APNs, whose callback starts linphonec again with the same linphonerc (same instance id);
it re-registers, gets the held INVITE, auto-answers, and the caller's BYE gets its 200.

Two ways of configuring the push params, as Linphone users do:

* ``contact_uri_parameters`` (plain RFC 8599 params copied into the Contact URI);
* liblinphone's native push support (``push_notification`` + ``push_parameters``), which
  adds its own params (pn-silent, pn-timeout, pn-msg-str, ...) and here carries a
  multi-token pn-prid (``<voip>:voip&<remote>:remote``) and ``pn-provider=apns.dev``.

The fake APNs serves both APNs environments on one host (pushd's ``apns.host`` override);
each request still names the Apple host it is for (``:authority``), which tells the fake
the environment pushd chose. pushd's per-push log line (debug level) must say the same.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from testkit.linphone import Linphone, PushStyle, SipMessage
from testkit.procs import wait_until
from testkit.stack import DOMAIN, FOREIGN_DOMAIN, TEAM_PARAM_PREFIX, Stack
from tests.conftest import LINPHONE_PASSWORD, MakeLinphone, on_kamailio

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]

BUNDLE = "com.example.app"
VOIP_TOKEN = "c0ffee" + "0123456789abcdef" * 3 + "0123456789"
REMOTE_TOKEN = "f00d" + "fedcba9876543210" * 3 + "fedcba987654"
PASSWORD = LINPHONE_PASSWORD


def stack_with_push_log(make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """A stack whose pushd logs each push's outcome (topic, environment) at debug level."""
    stack = make_stack(pushd=False)
    write_config = stack.pushd_config

    def debug_config() -> Path:
        path = write_config()
        cfg = yaml.safe_load(path.read_text())
        cfg["log"]["level"] = "debug"
        path.write_text(yaml.safe_dump(cfg))
        return path

    monkeypatch.setattr(stack, "pushd_config", debug_config)
    stack.start_pushd()
    return stack


def flow_ports(stack: Stack) -> set[int]:
    """Remote ports of the TCP connections Kamailio holds open."""
    return {int(p) for p in re.findall(r"src_port: (\d+)", stack.kamailio.kamcmd("core.tcp_list"))}


def hostport(uri: str) -> tuple[str, int]:
    m = re.match(r"sips?:[^@;>]+@([^:;>]+):(\d+)", uri)
    assert m, uri
    return m.group(1), int(m.group(2))


def instance_of(contact_header: str) -> str:
    m = re.search(r'\+sip\.instance="<([^>]+)>"', contact_header)
    assert m, contact_header
    return m.group(1)


def find(messages: list[SipMessage], *, out: bool, what: str, cseq: str = "") -> SipMessage:
    """The first message sent (``out``) or received whose start line begins with ``what``."""
    for msg in messages:
        if msg.out is out and msg.first_line.startswith(what) and cseq in msg.cseq_method:
            return msg
    seen = "\n".join(("-> " if m.out else "<- ") + m.first_line[:80] for m in messages)
    raise AssertionError(f"linphonec {'sent' if out else 'received'} no {what} {cseq}:\n{seen}")


def sleep_push_wake_answer(
    stack: Stack, phone: Linphone, voip_token: str, caller_domain: str = FOREIGN_DOMAIN
) -> None:
    """Register, sleep, call: the push wakes linphonec, which answers; the caller hangs up."""
    stack.add_subscriber(phone.user, PASSWORD)
    phone.start()
    phone.wait_registered()
    first = phone.contact_uri()
    wait_until(lambda: stack.bindings(phone.user) == [first], 5, "kamailio to store the binding")
    _, first_port = hostport(first)
    assert first_port in flow_ports(stack)

    phone.kill()  # asleep: no un-REGISTER, the kernel closes the TCP flow
    wait_until(lambda: first_port not in flow_ports(stack), 5, "kamailio to see the flow close")
    assert stack.bindings(phone.user) == [first], "binding must survive the dead flow"

    stack.on_push[voip_token] = lambda record: phone.start()  # the "wake" command
    started = time.monotonic()
    caller = stack.call(phone.user, expect_answer=True, talk_ms=500, caller_domain=caller_domain)
    rc = caller.wait(15)
    assert rc == 0, f"caller sipp rc={rc}:\n{caller.output()[-3000:]}\n{phone.log_text()[-4000:]}"
    assert time.monotonic() - started < 10
    assert len(phone.runs) == 2, "linphonec started exactly once more, by the push"


def assert_woken_linphone_answered(stack: Stack, phone: Linphone) -> None:
    first, second = phone.contacts_sent(0)[-1], phone.contacts_sent(1)[-1]
    # Same device (instance id from the same linphonerc), new flow, new Contact port.
    assert instance_of(first) == instance_of(second)
    assert instance_of(second) == f"urn:uuid:{phone.instance}"
    assert hostport(phone.contact_uri(0))[1] != hostport(phone.contact_uri(1))[1]
    # The wake-up REGISTER replaced the sleeping binding (same instance, no reg-id).
    assert stack.bindings(phone.user) == [phone.contact_uri(1)]

    # The held INVITE went to the new flow; linphonec rang, answered with its GRUU as
    # dialog Contact, and the caller's BYE (addressed to that GRUU) got linphonec's 200.
    callid = stack.events("request_in")[0]["callid"]
    assert [e["event"] for e in stack.events() if e.get("callid") == callid][:3] == [
        "request_in",
        "push_request",
        "invite_relayed",
    ]
    wait_until(
        lambda: any(
            m.out and m.status == 200 and m.cseq_method == "BYE" for m in phone.messages(1)
        ),
        5,
        "linphonec to answer the BYE",
    )
    msgs = phone.messages(1)
    invite = find(msgs, out=False, what="INVITE ")
    assert invite.header("Call-ID") == callid
    assert invite.first_line.startswith(f"INVITE {phone.contact_uri(1)} ")
    find(msgs, out=True, what="SIP/2.0 180 ", cseq="INVITE")
    ok = find(msgs, out=True, what="SIP/2.0 200 ", cseq="INVITE")
    assert ok.header("Contact") == f"<sip:{phone.user}@{DOMAIN};gr=urn:uuid:{phone.instance}>"
    find(msgs, out=False, what="ACK ")
    bye = find(msgs, out=False, what="BYE ")
    assert bye.header("Call-ID") == callid
    find(msgs, out=True, what="SIP/2.0 200 ", cseq="BYE")
    assert [e["method"] for e in stack.events("in_dialog") if e["callid"] == callid] == ["BYE"]
    output = phone.out_file(1).read_text(errors="replace")
    assert "auto answering" in output and "connected" in output and "ended" in output


def assert_one_voip_push(stack: Stack, user: str, token: str, environment: str) -> None:
    assert stack.apns is not None and stack.fcm is not None
    pushes = stack.apns.pushes
    assert len(pushes) == 1 and stack.fcm.messages == []
    push = pushes[0]
    assert (push.token, push.topic, push.push_type, push.priority, push.status) == (
        token,
        f"{BUNDLE}.voip",
        "voip",
        10,
        200,
    )
    assert push.payload is not None and push.payload.get("aor") == f"sip:{user}@{DOMAIN}"
    assert push.environment == environment, push.authority
    wait_until(
        lambda: f"topic={BUNDLE}.voip env={environment}: delivered" in stack.pushd_log.read_text(),
        5,
        f"pushd to log the push as sent to APNs {environment}",
    )


@on_kamailio("5.6", "6.0")
def test_linphonec_with_contact_uri_parameters_is_woken_by_push_and_answers(
    make_stack: MakeStack, make_linphone: MakeLinphone, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = stack_with_push_log(make_stack, monkeypatch)
    params = f"pn-provider=apns;pn-prid={VOIP_TOKEN};pn-param={TEAM_PARAM_PREFIX}.{BUNDLE}.voip"
    phone = make_linphone(stack, "alice", PushStyle.CONTACT_URI, params)

    sleep_push_wake_answer(stack, phone, VOIP_TOKEN)

    contact = phone.contacts_sent(0)[-1]
    assert f";{params};transport=tcp>" in contact  # verbatim, before linphonec's transport
    assert "reg-id" not in contact and ";ob" not in contact  # instance only, no RFC 5626
    assert_woken_linphone_answered(stack, phone)
    assert_one_voip_push(stack, phone.user, VOIP_TOKEN, "production")


def test_linphonec_with_native_push_parameters_is_woken_by_push_and_answers(
    make_stack: MakeStack, make_linphone: MakeLinphone, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = stack_with_push_log(make_stack, monkeypatch)
    params = (
        f"pn-provider=apns.dev;pn-prid={VOIP_TOKEN}:voip&{REMOTE_TOKEN}:remote;"
        f"pn-param={TEAM_PARAM_PREFIX}.{BUNDLE}.voip&remote"
    )
    phone = make_linphone(stack, "alice", PushStyle.NATIVE, params)

    sleep_push_wake_answer(stack, phone, VOIP_TOKEN)

    contact = phone.contacts_sent(0)[-1]
    for param in (
        f"pn-prid={VOIP_TOKEN}:voip&{REMOTE_TOKEN}:remote",
        "pn-provider=apns.dev",
        f"pn-param={TEAM_PARAM_PREFIX}.{BUNDLE}.voip&remote",
        "pn-silent=1",  # liblinphone's own defaults, not in our push_parameters
        "pn-timeout=0",
        "pn-call-str=IC_MSG",
    ):
        assert f";{param};" in contact, (param, contact)
    assert "reg-id" not in contact and ";ob" not in contact
    assert_woken_linphone_answered(stack, phone)
    # The voip token of the multi-token prid, sent to the sandbox (apns.dev pins it).
    assert_one_voip_push(stack, phone.user, VOIP_TOKEN, "sandbox")
