"""Two pushd on one Kamailio (docs/cluster.md, "Several pushd"): real Kamailio, two real
pushd processes, the fake APNs counting every push. Each push goes out once; a pushd
killed (SIGKILL) or frozen (SIGSTOP) mid-load loses no call, its pushes taken over within
a second."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from testkit import sipp
from testkit.procs import stop, wait_until
from testkit.stack import REPO, Phone, Stack
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]
N = 10


class SecondPushd:
    """Another pushd process for the stack's Kamailio, next to ``stack.pushd_proc``."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.log = stack.logs / "pushd2.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.stack.spawn_pushd(self.stack.pushd_config(name="pushd2"), self.log)

    def kill(self) -> None:
        """SIGKILL: gone without a word."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
        stop(self.proc)


@pytest.fixture
def two_pushd(
    request: pytest.FixtureRequest, make_stack: MakeStack, kamailio_version: str
) -> Iterator[tuple[Stack, SecondPushd]]:
    """Our all-in-one config (KEMI: rtimer calls ``ksr_pushgate_ack_timer``) and Kamailio's
    default config with Pushgate's patch (native: ``route[PUSHGATE_ACK_TIMER]``)."""
    if getattr(request, "param", "allinone") == "allinone":
        stack = make_stack(hold_timeout=30)
    else:
        patch = REPO / "patches" / f"kamailio-{kamailio_version}-default.patch"
        stack = make_stack(hold_timeout=30, flavour="default", patches=[patch])
    second = SecondPushd(stack)
    second.start()
    try:
        yield stack, second
    finally:
        second.stop()


def connections(stack: Stack) -> list[str]:
    """evapi connection index of each pushd, in the order they connected."""
    return [e["conidx"] for e in stack.events("pushd_connected")]


def sleeping_phones(stack: Stack, n: int, prefix: str = "user") -> list[Phone]:
    phones = [stack.phone(f"{prefix}{i:02d}") for i in range(n)]
    for phone in phones:
        stack.register_and_sleep(phone)
    return phones


def call_all(stack: Stack, phones: list[Phone]) -> list[sipp.SippRun]:
    return [stack.call(p.user, expect_answer=True, label=f"c-{p.user}") for p in phones]


def voip_pushes(stack: Stack, phone: Phone) -> int:
    assert stack.apns is not None
    return sum(1 for p in stack.apns.pushes_for(phone.token) if p.push_type == "voip")


def answered(callers: list[sipp.SippRun]) -> None:
    for caller in callers:
        assert caller.wait(40) == 0, caller.output()[-2000:]


def no_tracebacks(stack: Stack) -> None:
    assert "Traceback" not in stack.kamailio.log.read_text(errors="replace")


def test_two_pushd_send_every_push_once_and_share_them(
    two_pushd: tuple[Stack, SecondPushd],
) -> None:
    stack, _ = two_pushd
    phones: list[Phone] = []
    woken: list[list[sipp.SippRun]] = []
    # Both take a share: the push id's hash picks (10 pushes on one alone: 2 in 1024,
    # then 10 more).
    for batch in range(2):
        more = sleeping_phones(stack, N, prefix=f"user{batch}-")
        woken += [stack.wake_on_push(p) for p in more]
        answered(call_all(stack, more))
        phones += more
        used = {e["to"] for e in stack.events("push_request")}
        if len(used) == 2:
            break
    assert all(len(w) == 1 for w in woken)
    assert {p.user: voip_pushes(stack, p) for p in phones} == {p.user: 1 for p in phones}
    assert used == set(connections(stack)), used
    assert stack.count_events("push_result_late") == 0
    no_tracebacks(stack)


@on_kamailio("5.6", "6.0")
def test_a_pushd_killed_mid_load_loses_no_call(two_pushd: tuple[Stack, SecondPushd]) -> None:
    stack, second = two_pushd
    assert stack.apns is not None and stack.pushd_proc is not None
    phones = sleeping_phones(stack, N)
    # APNs sits 2 s on each first push: the killed pushd dies with its pushes sent and
    # unanswered, the case where a push may go out twice (counted, documented).
    for phone in phones:
        stack.apns.script(phone.token, 200, times=1, delay=2.0)
    woken = [stack.wake_on_push(p) for p in phones]
    half = N // 2
    callers = call_all(stack, phones[:half])
    stack.apns.wait_for_pushes(half, timeout=10)  # sent, answers 2 s away
    # Kill the one holding more of them (at least 3 of 5).
    holder = Counter(e["to"] for e in stack.events("push_request")).most_common(1)[0][0]
    held = [e["id"] for e in stack.events("push_request") if e["to"] == holder]
    killed = time.monotonic()
    if holder == connections(stack)[0]:
        stack.kill_pushd()
    else:
        second.kill()
    callers += call_all(stack, phones[half:])  # mid-load: more calls after the kill
    answered(callers)
    assert all(len(w) >= 1 for w in woken)
    resent = sum(int(e["count"]) for e in stack.events("push_resent"))
    assert resent == len(held)
    # Every call pushed once, but for the pushes the dead one had already sent: twice.
    per_phone = {p.user: voip_pushes(stack, p) for p in phones}
    twice = [p for p in phones if per_phone[p.user] == 2]
    assert len(held) >= 3 and len(twice) == len(held), per_phone
    assert sorted(per_phone.values()) == sorted([2] * len(held) + [1] * (N - len(held)))
    # Failover: the dead pushd's pushes reached APNs again right after the kill.
    again = max(stack.apns.pushes_for(p.token)[1].time for p in twice) - killed
    print(f"failover after SIGKILL: {len(twice)} pushes re-sent within {again:.3f} s")
    assert again < 1.0, again
    no_tracebacks(stack)


@on_kamailio("5.6", "6.0")
@pytest.mark.parametrize("two_pushd", ["allinone", "default"], indirect=True)
def test_a_frozen_pushd_is_passed_over_within_a_second(
    two_pushd: tuple[Stack, SecondPushd],
) -> None:
    stack, _ = two_pushd
    assert stack.apns is not None
    frozen = connections(stack)[0]
    phones = sleeping_phones(stack, N)
    woken = [stack.wake_on_push(p) for p in phones]
    stack.pause_pushd()  # SIGSTOP: its TCP connection stays open, it reads nothing
    started = time.monotonic()
    callers = call_all(stack, phones)
    answered(callers)
    # The push id's hash picks the pushd: none of 10 to the frozen one happens once in
    # 512 runs; then another 10 (the test needs at least one).
    if not [e for e in stack.events("push_request") if e["to"] == frozen]:
        extra = sleeping_phones(stack, N, prefix="more")
        woken += [stack.wake_on_push(p) for p in extra]
        answered(call_all(stack, extra))
        phones += extra
    assert all(len(w) == 1 for w in woken)
    # Each push once while it is frozen: those it got went to the other after 0.5 s.
    assert {p.user: voip_pushes(stack, p) for p in phones} == {p.user: 1 for p in phones}
    to_frozen = [e["id"] for e in stack.events("push_request") if e["to"] == frozen]
    assert to_frozen, "the frozen pushd got no push (hash spread): nothing tested"
    taken = {e["id"] for e in stack.events("push_taken_over")}
    assert taken == set(to_frozen)
    assert stack.count_events("pushd_hung") == 1
    # How long a push sent to the frozen one waited: request -> taken over (Kamailio's
    # clock), and the slowest push's arrival at APNs since the first call started.
    sent_at = {e["id"]: float(e["t"]) for e in stack.events("push_request")}
    waits = [float(e["t"]) - sent_at[e["id"]] for e in stack.events("push_taken_over")]
    slowest = max(r.time for r in stack.apns.pushes) - started
    print(f"takeover after SIGSTOP: {max(waits):.3f} s (of {len(waits)}); all out {slowest:.2f} s")
    assert max(waits) < 1.0, waits

    # SIGCONT: it reads its stale pushes, acks them and sends them (the documented
    # at-most-twice); its results come second and are counted, not acted on.
    assert stack.pushd_proc is not None
    os.killpg(stack.pushd_proc.pid, signal.SIGCONT)
    wait_until(lambda: stack.count_events("pushd_resumed") == 1, 10, "the pushd back")
    wait_until(
        lambda: stack.count_events("push_result_late") == len(to_frozen), 10, "its late results"
    )
    assert sum(voip_pushes(stack, p) for p in phones) == len(phones) + len(to_frozen)
    # Back in the pool: new calls use it again (6 calls, then 6 more while none did:
    # all 6 to the other pushd happens once in 32 batches).
    before = len(stack.events("push_request"))
    for batch in range(4):
        more = sleeping_phones(stack, 6, prefix=f"late{batch}-")
        for phone in more:
            stack.wake_on_push(phone)
        answered(call_all(stack, more))
        later = {e["to"] for e in stack.events("push_request")[before:]}
        if frozen in later:
            break
    assert frozen in later, later
    no_tracebacks(stack)


# -- cancel notices -------------------------------------------------------------------------

CANCEL_AFTER_MS = 4000


def cancelled_calls(stack: Stack, phones: list[Phone]) -> list[sipp.SippRun]:
    """Each phone called and, CANCEL_AFTER_MS later, cancelled while it still sleeps."""
    callers = [
        sipp.start(
            "caller_cancel",
            target_port=stack.kamailio.sip_port,
            logdir=stack.logs,
            keys={"domain": "pushgate.test", "callee": p.user, "caller_domain": "caller.example"},
            pause_ms=CANCEL_AFTER_MS,
            label=f"x-{p.user}",
        )
        for p in phones
    ]
    # Every call push answered (before any CANCEL): only the notices are left in flight.
    wait_until(lambda: stack.count_events("push_result") == len(phones), 10, "the call pushes")
    return callers


def cancel_notices(stack: Stack, phone: Phone) -> list[float]:
    """When each cancel notice (an alert push) for ``phone`` reached the fake APNs."""
    assert stack.apns is not None
    return [p.time for p in stack.apns.pushes_for(phone.token) if p.push_type == "alert"]


def notices_to(stack: Stack, conidx: str) -> list[str]:
    return [
        e["id"] for e in stack.events("push_request") if e["kind"] == "cancel" and e["to"] == conidx
    ]


def notice_holders(stack: Stack) -> Counter[str]:
    """Which pushd each call's cancel notice will go to, by kemi/pushing.py's rule:
    crc32(push id) mod the live pushd in the order they connected; a call to one device
    pushes ``<tx>:0`` and notifies ``<tx>:1``."""
    live = connections(stack)
    holders: Counter[str] = Counter()
    for e in stack.events("push_request"):
        tx, _, n = e["id"].rpartition(":")
        notice = f"{tx}:{1 + int(n)}"
        holders[live[zlib.crc32(notice.encode()) % len(live)]] += 1
    return holders


def test_cancel_notices_a_frozen_pushd_got_are_taken_over_and_sent_once(
    two_pushd: tuple[Stack, SecondPushd],
) -> None:
    stack, second = two_pushd
    phones = sleeping_phones(stack, N)
    callers = cancelled_calls(stack, phones)
    # Freeze the pushd that will get more of the notices (at least 5 of 10): the spread
    # by hash could leave one without any.
    frozen = notice_holders(stack).most_common(1)[0][0]
    first = frozen == connections(stack)[0]
    assert stack.pushd_proc is not None and second.proc is not None
    # SIGSTOP: reads nothing, acks nothing, its connection open
    os.killpg((stack.pushd_proc if first else second.proc).pid, signal.SIGSTOP)
    assert stack.count_events("cancel_held") == 0, "a CANCEL came before the freeze"
    answered(callers)  # 200 to the CANCEL, 487 to the INVITE
    wait_until(lambda: all(cancel_notices(stack, p) for p in phones), 10, "the notices")
    to_frozen = notices_to(stack, frozen)
    assert to_frozen, "no notice went to the frozen pushd (hash spread): nothing tested"
    assert {e["id"] for e in stack.events("push_taken_over")} == set(to_frozen)
    sent_at = {e["id"]: float(e["t"]) for e in stack.events("push_request")}
    waits = [float(e["t"]) - sent_at[e["id"]] for e in stack.events("push_taken_over")]
    print(f"cancel notices taken over after SIGSTOP: {max(waits):.3f} s (of {len(waits)})")
    assert max(waits) < 1.0, waits
    # Killed while frozen, it never sent them: each device got its notice exactly once,
    # and nothing is left to re-send (their holder is the other pushd now).
    if first:
        stack.kill_pushd()
    else:
        second.kill()
    wait_until(lambda: stack.count_events("pushd_disconnected") == 1, 10, "the closed link")
    wait_until(lambda: stack.count_events("push_result") == 2 * N, 10, "every notice's verdict")
    assert {p.user: len(cancel_notices(stack, p)) for p in phones} == {p.user: 1 for p in phones}
    assert stack.count_events("push_resent") == 0
    no_tracebacks(stack)


@on_kamailio("5.6", "6.0")
def test_cancel_notices_a_killed_pushd_was_sending_are_sent_again_at_once(
    two_pushd: tuple[Stack, SecondPushd],
) -> None:
    stack, second = two_pushd
    assert stack.apns is not None
    phones = sleeping_phones(stack, N)
    callers = cancelled_calls(stack, phones)
    # APNs sits 2 s on each notice: the killed pushd dies with them sent and unanswered.
    for phone in phones:
        stack.apns.script(phone.token, 200, times=1, delay=2.0)
    answered(callers)
    wait_until(lambda: all(cancel_notices(stack, p) for p in phones), 10, "the notices")
    holder = Counter(
        e["to"] for e in stack.events("push_request") if e["kind"] == "cancel"
    ).most_common(1)[0][0]
    held = notices_to(stack, holder)
    killed = time.monotonic()
    if holder == connections(stack)[0]:
        stack.kill_pushd()
    else:
        second.kill()
    wait_until(lambda: stack.count_events("push_resent") == 1, 10, "the notices re-sent")
    assert int(stack.events("push_resent")[0]["count"]) == len(held)
    wait_until(
        lambda: sum(len(cancel_notices(stack, p)) for p in phones) == N + len(held),
        10,
        "the notices at APNs again",
    )
    # Sent, then the pushd died before the verdict: those go out twice (counted); the
    # others once. None is lost.
    per_phone = sorted(len(cancel_notices(stack, p)) for p in phones)
    assert per_phone == sorted([2] * len(held) + [1] * (N - len(held)))
    again = max(cancel_notices(stack, p)[1] for p in phones if len(cancel_notices(stack, p)) > 1)
    print(f"cancel notices re-sent after SIGKILL: {len(held)} within {again - killed:.3f} s")
    assert again - killed < 1.0
    assert stack.count_events("push_taken_over") == 0  # acked: the closed link moved them
    no_tracebacks(stack)
