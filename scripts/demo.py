"""Live demo: a sleeping SIPp "iPhone" is woken by a push and answers a SIPp call.

Starts a throwaway PostgreSQL, Kamailio (kamailio.cfg + kemi/), pushd and a local
stand-in for APNs; plays two calls to a sleeping phone (the second one woken with the
one-time wake token instead of a digest round trip); prints each call's timeline;
stops everything; exits 0 when both calls were answered.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit.certs import make_test_pki  # noqa: E402
from testkit.fake_apns import PushRecord  # noqa: E402
from testkit.fake_fcm import FcmRecord  # noqa: E402
from testkit.postgres import start_cluster  # noqa: E402
from testkit.stack import Phone, Stack, is_call_push, world_readable_tempdir  # noqa: E402


def main() -> int:
    root = world_readable_tempdir("pushgate-demo-")
    pg = start_cluster(root / "pg")
    stack = Stack(root / "stack", pg, make_test_pki(root / "pki"), hold_timeout=30)
    results = []
    try:
        print("starting PostgreSQL, Kamailio, pushd and the fake APNs ...")
        stack.start()
        phone = stack.phone("alice")
        print(
            f"phone alice registers over TCP (pn-provider=apns, token {phone.token[:8]}…), "
            "then closes its connection: asleep"
        )
        stack.register_and_sleep(phone)
        for n, fast in enumerate((False, True), start=1):
            how = "one-time wake token" if fast else "digest authentication"
            print(f"\ncall {n}: bob calls alice (the woken phone re-registers with {how}) ...")
            results.append(play_call(stack, phone, fast, label=f"caller{n}"))
    finally:
        stack.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    ok = len(results) == 2 and all(results)
    print("\nRESULT:", "both calls answered after push wake-up" if ok else "FAILED")
    return 0 if ok else 1


def play_call(stack: Stack, phone: Phone, fast: bool, label: str) -> bool:
    since = time.time()
    woken = stack.wake_on_push(phone, fast=fast)
    caller = stack.call("alice", expect_answer=True, talk_ms=500, label=label)
    ok = caller.wait(45) == 0 and bool(woken) and woken[0].wait(15) == 97
    if ok:
        print_timeline(stack, since)
    else:
        print(caller.output()[-2000:])
    # The woken phone's SIPp has ended: its flow is closed, it sleeps again.
    return ok


def describe(rec: PushRecord | FcmRecord) -> str:
    if isinstance(rec, FcmRecord):
        return f"FCM, priority {rec.priority}, ttl {rec.ttl}"
    return f"APNs topic {rec.topic}, type {rec.push_type}, priority {rec.priority}"


def print_timeline(stack: Stack, since: float) -> None:
    events = [e for e in stack.events() if float(e["t"]) >= since]
    invite = next(e for e in events if e.get("event") == "request_in")
    t0 = float(invite["t"])
    rows: list[tuple[float, str]] = []
    for e in events:
        t, name = float(e["t"]), e.get("event")
        text = {
            "request_in": f"INVITE in from caller, all bindings asleep -> {e.get('action')}",
            "push_request": f"{e.get('kind')} push requested from pushd (evapi)",
            "push_result": f"pushd verdict {e.get('verdict')} (APNs {e.get('status')}, "
            f"{e.get('ms')} ms in pushd)",
            "register_challenged": "401 challenge to the woken phone's first REGISTER",
            "wake_token": f"wake token presented, accepted={e.get('accepted')}",
            "register_in": f"REGISTER accepted from woken phone ({e.get('src')})",
            "invite_relayed": "held INVITE relayed to the new flow",
            "reply": f"{e.get('status')} from phone",
            "in_dialog": f"{e.get('method')} in-dialog",
        }.get(str(name))
        if text:
            rows.append((t, text))
    calls = [(w, r) for w, r in stack.push_log if w >= since and is_call_push(r)]
    for wall, rec in calls:
        rows.append((wall, f"call push received by the push stand-in ({describe(rec)})"))
    print("  timeline (ms after INVITE in):")
    for t, text in sorted(rows):
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
        print(f"  {1000 * (t - t0):8.1f}  {stamp}  {text}")
    registered = next(float(e["t"]) for e in events if e.get("event") == "register_in")
    relayed = next(float(e["t"]) for e in events if e.get("event") == "invite_relayed")
    pushed = calls[0][0] if calls else None
    print("  wake path:")
    if pushed is not None:
        print(f"    INVITE in -> push at APNs       {1000 * (pushed - t0):7.1f} ms")
    challenged = [float(e["t"]) for e in events if e.get("event") == "register_challenged"]
    if challenged:
        print(
            f"    401 challenge -> REGISTER again {1000 * (registered - challenged[0]):7.1f} ms"
            "  (the round trip a wake token saves; one network RTT on a phone)"
        )
    print(f"    REGISTER in -> INVITE relayed   {1000 * (relayed - registered):7.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
