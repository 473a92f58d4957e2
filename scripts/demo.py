"""Live demo: a sleeping SIPp "iPhone" is woken by a push and answers a SIPp call.

Starts a throwaway PostgreSQL, Kamailio (kamailio.cfg + kemi/), pushd and a local
stand-in for APNs; prints the call's timeline; stops everything; exits 0 on success.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit.certs import make_test_pki  # noqa: E402
from testkit.postgres import start_cluster  # noqa: E402
from testkit.stack import Stack, world_readable_tempdir  # noqa: E402


def main() -> int:
    root = world_readable_tempdir("pushgate-demo-")
    pg = start_cluster(root / "pg")
    stack = Stack(root / "stack", pg, make_test_pki(root / "pki"), hold_timeout=30)
    ok = False
    try:
        print("starting PostgreSQL, Kamailio, pushd and the fake APNs ...")
        stack.start()
        phone = stack.phone("alice")
        print(
            f"phone alice registers over TCP (pn-provider=apns, token {phone.token[:8]}…), "
            "then closes its connection: asleep"
        )
        stack.register_and_sleep(phone)
        woken = stack.wake_on_push(phone)
        print("bob calls alice ...")
        caller = stack.call("alice", expect_answer=True, talk_ms=1000)
        ok = caller.wait(45) == 0 and bool(woken) and woken[0].wait(15) == 97
        print_timeline(stack)
        print("RESULT:", "call answered after push wake-up" if ok else "FAILED")
        if not ok:
            print(caller.output()[-2000:])
    finally:
        stack.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def print_timeline(stack: Stack) -> None:
    events = stack.events()
    invite = next(e for e in events if e.get("event") == "request_in")
    t0 = float(invite["t"])
    rows: list[tuple[float, str]] = []
    registers = [e for e in events if e.get("event") == "register_in"]
    for e in events:
        t, name = float(e["t"]), e.get("event")
        if name == "request_in":
            rows.append((t, f"INVITE in from caller, all bindings asleep -> {e['action']}"))
        elif name == "push_request":
            rows.append((t, "push requested from pushd (evapi)"))
        elif name == "push_result":
            rows.append(
                (t, f"pushd verdict {e['verdict']} (APNs {e['status']}, {e['ms']} ms in pushd)")
            )
        elif name == "register_in" and e is registers[-1]:
            rows.append((t, f"REGISTER in from woken phone ({e['src']})"))
        elif name == "invite_relayed":
            rows.append((t, "held INVITE relayed to the new flow"))
        elif name == "reply":
            rows.append((t, f"{e['status']} from phone"))
        elif name == "in_dialog":
            rows.append((t, f"{e['method']} in-dialog"))
    assert stack.apns is not None
    for rec in stack.apns.pushes:
        wall = stack.push_wall_time(rec.token)
        if wall is not None:
            rows.append(
                (
                    wall,
                    f"push received by APNs stand-in (topic {rec.topic}, "
                    f"type {rec.push_type}, priority {rec.priority})",
                )
            )
    print("\ntimeline (ms after INVITE in):")
    for t, text in sorted(rows):
        print(
            f"  {1000 * (t - t0):8.1f}  {time.strftime('%H:%M:%S', time.localtime(t))}"
            f".{int(t * 1000) % 1000:03d}  {text}"
        )
    relayed = next((float(e["t"]) for e in events if e.get("event") == "invite_relayed"), None)
    if registers and relayed is not None:
        print(
            f"\nwake path: REGISTER in -> INVITE relayed "
            f"{1000 * (relayed - float(registers[-1]['t'])):.1f} ms"
        )
    push_at = [stack.push_wall_time(r.token) for r in stack.apns.pushes]
    if push_at and push_at[0] is not None:
        print(f"wake path: INVITE in -> push at APNs {1000 * (push_at[0] - t0):.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
