"""A real browser softphone: headless Chromium running JsSIP (testkit/chromium.py,
testkit/browser/) over SIP over secure WebSocket, woken by Web Push.

Real Kamailio (WITH_WEBSOCKET, WITH_TLS), PostgreSQL, pushd (pywebpush) and SIPp; the
Web Push service is the stand-in (testkit/fake_webpush.py: RFC 8030 + RFC 8292 checks).
The page cannot get a vendor's push subscription here: the test makes one at the
stand-in, restricted to pushd's VAPID key, and gives the page its endpoint. "Asleep" is
the page closed (its WebSocket gone); the stand-in's accepted push "wakes" the phone by
opening the page again, which re-registers and answers the held call.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit import sipp, stock
from testkit.certs import TestPki
from testkit.chromium import Chromium, PageServer
from testkit.fake_webpush import Subscription, wait_for_push
from testkit.procs import wait_until
from testkit.stack import DOMAIN, Stack
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]

MakeStack = Callable[..., Stack]
PASSWORD = "browser-secret-1"
INSTANCE = "6f1b3c2a-0d4e-4f5a-9b8c-7d6e5f4a3b2c"


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path: Path, pki: TestPki) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path, trust_cert=pki.server_cert)
    yield chromium
    chromium.quit()


def page_url(pages: PageServer, stack: Stack, user: str, sub: Subscription | None) -> str:
    """The softphone page: WSS when Kamailio has TLS, else WS (the drop-in's site)."""
    k = stack.kamailio
    ws = f"wss://127.0.0.1:{k.wss_port}" if k.tls else f"ws://127.0.0.1:{k.ws_port}"
    return pages.url(
        ws=ws,
        user=user,
        password=PASSWORD,
        domain=DOMAIN,
        instance=INSTANCE,
        prid=sub.endpoint if sub is not None else "",
    )


def ws_connections(stack: Stack) -> int:
    """WebSocket connections Kamailio holds (websocket module's ws.dump)."""
    return len(re.findall(r"\(state: \w+", stack.kamailio.kamcmd("ws.dump")))


def caller(stack: Stack, callee: str, *, expect_answer: bool) -> sipp.SippRun:
    """A caller whose SDP offer a browser accepts (DTLS-SRTP, ICE)."""
    return sipp.start(
        "caller_call_webrtc" if expect_answer else "caller_fail",
        target_port=stack.caller_port,
        logdir=stack.logs,
        keys={"domain": DOMAIN, "callee": callee, "caller_domain": "caller.example"},
        pause_ms=300,
        label=f"caller-{callee}-{time.monotonic_ns()}",
    )


def register_page(
    browser: Chromium, pages: PageServer, stack: Stack, user: str, sub: Subscription | None
) -> None:
    browser.open(page_url(pages, stack, user, sub))
    browser.wait_for("registered", 20)


def sleep_page(browser: Chromium, stack: Stack) -> None:
    assert ws_connections(stack) == 1
    browser.close_page()
    wait_until(lambda: ws_connections(stack) == 0, 10, "the page's WebSocket to close")


def sleep_call_wake_answer(
    stack: Stack, browser: Chromium, pages: PageServer, user: str
) -> dict[str, float]:
    """Register the page with a webpush subscription, close it, call: the push at the
    stand-in reopens the page, which must answer the held call; returns the timings (s)."""
    stack.add_subscriber(user, PASSWORD)
    fake = stack.webpush
    assert fake is not None
    sub = fake.subscribe(stack.vapid_public_key)
    register_page(browser, pages, stack, user, sub)
    # RFC 8599 §8.3: our VAPID key in the same Feature-Caps as sip.pns.
    caps = browser.value("window.phone.featureCaps")
    assert caps == [f'*;+sip.pns="webpush";+sip.vapid="{stack.vapid_public_key}"'], caps
    [binding] = stack.bindings(user)
    assert "pn-provider=webpush" in binding and sub.endpoint in binding
    assert "transport=ws" in binding
    sleep_page(browser, stack)

    since = time.time()
    call = caller(stack, user, expect_answer=True)
    [push] = wait_for_push(fake, sub, 1, 15)
    reopened = browser.open(page_url(pages, stack, user, sub))
    assert call.wait(30) == 0, call.output()[-3000:]
    answered = browser.wait_for("answered", 5)
    browser.wait_for("ended", 10)  # the caller's BYE reached the page

    # The push as the stand-in checked it (RFC 8030, RFC 8292; RFC 8599 §12: no payload).
    assert push.status == 201, push.reason
    assert push.payload is None
    assert push.urgency == "high"
    assert push.ttl is not None and 20 <= push.ttl <= 30  # the hold deadline
    assert push.claims["aud"] == fake.origin
    assert push.vapid_key == stack.vapid_public_key
    assert len(fake.pushes_for(sub)) == 1

    events = [e for e in stack.events() if float(e["t"]) >= since]
    invite_in = next(float(e["t"]) for e in events if e.get("event") == "request_in")
    register_in = next(float(e["t"]) for e in events if e.get("event") == "register_in")
    relayed = next(float(e["t"]) for e in events if e.get("event") == "invite_relayed")
    assert invite_in < push.at < reopened < register_in < relayed < answered.at + 0.05
    timings = {
        "INVITE in -> push at stand-in": push.at - invite_in,
        "push at stand-in -> page reopened": reopened - push.at,
        "page reopened -> REGISTER in": register_in - reopened,
        "REGISTER in -> INVITE relayed": relayed - register_in,
        "INVITE relayed -> 200 (page answered)": answered.at - relayed,
        "INVITE in -> 200": answered.at - invite_in,
    }
    report = "\n".join(f"  {name:40s} {1000 * s:8.1f} ms" for name, s in timings.items())
    (stack.logs / "browser-wake-timings.txt").write_text(report + "\n")
    print(f"\nbrowser wake path ({stack.flavour}, Kamailio {stack.kamailio.version}):\n{report}")
    return timings


@on_kamailio("5.6", "6.0")
def test_sleeping_browser_is_woken_by_web_push_and_answers(
    make_stack: MakeStack, browser: Chromium, pages: PageServer
) -> None:
    stack = make_stack(websocket=True, tls=True)
    sleep_call_wake_answer(stack, browser, pages, "alice")


@pytest.mark.parametrize("flavour", stock.FLAVOURS)
def test_browser_is_woken_through_the_dropin_include(
    make_stack: MakeStack, browser: Chromium, pages: PageServer, flavour: str
) -> None:
    """Kamailio's own stock config with Pushgate's patch, WITH_WEBSOCKET and a WS socket
    of the site's: pushgate.cfg loads xhttp + websocket and answers the handshake."""
    patch = (
        REPO
        / "patches"
        / f"kamailio-5.6-{'default' if flavour == 'default' else 'kemi-python'}.patch"
    )
    stack = make_stack(websocket=True, flavour=flavour, patches=[patch])
    sleep_call_wake_answer(stack, browser, pages, "dora")


def test_web_push_410_ends_the_call_early_and_removes_the_binding(
    make_stack: MakeStack, browser: Chromium, pages: PageServer
) -> None:
    stack = make_stack(websocket=True, tls=True, hold_timeout=20)
    stack.add_subscriber("bob", PASSWORD)
    fake = stack.webpush
    assert fake is not None
    sub = fake.subscribe(stack.vapid_public_key)
    register_page(browser, pages, stack, "bob", sub)
    sleep_page(browser, stack)
    fake.unsubscribe(sub)  # the user revoked the subscription: 410 Gone
    started = time.monotonic()
    call = caller(stack, "bob", expect_answer=False)
    assert call.wait(20) == 0, call.output()[-3000:]
    code, reason = call.final_response()
    assert code == 480 and "Push notification failed" in reason
    assert time.monotonic() - started < 5
    assert [r.status for r in fake.pushes_for(sub)] == [410]
    wait_until(lambda: stack.bindings("bob") == [], 5, "binding removal")
    assert sub.endpoint not in stack.kamailio.kamcmd("ul.dump")


def test_connected_browser_is_rung_directly_without_push(
    make_stack: MakeStack, browser: Chromium, pages: PageServer
) -> None:
    stack = make_stack(websocket=True, tls=True)
    stack.add_subscriber("carol", PASSWORD)
    fake = stack.webpush
    assert fake is not None
    sub = fake.subscribe(stack.vapid_public_key)
    register_page(browser, pages, stack, "carol", sub)
    call = caller(stack, "carol", expect_answer=True)
    assert call.wait(20) == 0, call.output()[-3000:]
    browser.wait_for("answered", 5)
    assert fake.pushes_for(sub) == []
    assert [e for e in stack.events() if e.get("event") == "push_request"] == []


def test_bad_vapid_key_refuses_pushd_start(make_stack: MakeStack) -> None:
    stack = make_stack(websocket=True, pushd=False)
    stack.vapid_key_file.write_text("not a key\n")
    with pytest.raises(RuntimeError, match="pushd exited") as err:
        stack.start_pushd()
    assert "webpush.vapid_private_key_file" in str(err.value)
    assert "is not an unencrypted PEM private key" in str(err.value)
