"""Wake path timings on each way in: our all-in-one config vs Kamailio's stock configs with
Pushgate's patches (default native cfg, KEMI Python example), and edge mode (our edge.cfg
in front of Kamailio's stock default config as the registrar, docs/edge.md).

    python -m bench.wake_path [--calls 10] [--flavours allinone,default,kemi,edge]
                              [--kamailio 5.6,6.0] [--json FILE]

For each flavour: start the stack on loopback (throwaway PostgreSQL, Kamailio, pushd,
fake APNs), register one SIPp iPhone and let it sleep, then play ``--calls`` calls, one
at a time; each call's push wakes the phone (digest re-REGISTER), which answers. From
Kamailio's timeline and the fake APNs' receive times:

- INVITE in -> push at APNs: ``request_in`` to the fake's receipt of the VoIP push;
- REGISTER in -> INVITE relayed: ``register_in`` (after ``save()``) to ``invite_relayed``
  (the held transaction continued into the host's delivery).

``--kamailio``: the Kamailio releases to run each flavour on (5.6: the host's; 6.0: the
Debian 13 root of scripts/kamailio-root.sh, with that release's stock configs and patches).

Edge mode: the caller's INVITE goes to the upstream, which relays it to the edge, so
"INVITE in" is the edge's ``request_in``. The woken phone's REGISTER makes a round trip
to the upstream first: ``register_to_relay_ms`` is the edge's receipt of the REGISTER
the upstream accepted (``edge_register_in``) to ``invite_relayed``, and
``upstream_2xx_to_relay_ms`` the upstream's 2xx in (``register_in``) to
``invite_relayed``.

Bounded: ``--calls`` calls per flavour, each waited for at most 45 s.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

from testkit import sipp
from testkit.certs import make_test_pki
from testkit.postgres import start_cluster
from testkit.stack import Phone, Stack, is_call_push, world_readable_tempdir

REPO = Path(__file__).resolve().parent.parent
PATCH_NAMES = {"default": "default", "kemi": "kemi-python"}


def patches(flavour: str, kamailio: str) -> list[Path]:
    if flavour not in PATCH_NAMES:
        return []
    return [REPO / "patches" / f"kamailio-{kamailio}-{PATCH_NAMES[flavour]}.patch"]


FOREIGN = "caller.example"


def one_call(stack: Stack, phone: Phone, n: int) -> dict[str, float]:
    since = time.time()
    woken = stack.wake_on_push(phone)
    caller = stack.call(
        "alice", expect_answer=True, talk_ms=100, label=f"caller{n}", caller_domain=FOREIGN
    )
    if caller.wait(45) != 0 or not woken or woken[0].wait(15) != 97:
        raise RuntimeError(f"call {n} failed:\n{caller.output()[-2000:]}")
    events = [e for e in stack.events() if float(e["t"]) >= since]
    t0 = next(float(e["t"]) for e in events if e.get("event") == "request_in")
    pushed = next(w for w, r in stack.push_log if w >= since and is_call_push(r))
    registered = next(e for e in events if e.get("event") == "register_in")
    relayed = next(float(e["t"]) for e in events if e.get("event") == "invite_relayed")
    out = {
        "push": 1000 * (pushed - t0),
        "caller_push": 1000 * (pushed - first_sent(caller)),
        "relay": 1000 * (relayed - float(registered["t"])),
    }
    if stack.upstream is not None:
        # The REGISTER the upstream accepted, as it reached the edge.
        sent = next(
            float(e["t"])
            for e in events
            if e.get("event") == "edge_register_in"
            and (e.get("callid"), e.get("cseq")) == (registered["callid"], registered["cseq"])
        )
        out["upstream_2xx"] = out["relay"]
        out["relay"] = 1000 * (relayed - sent)
    return out


def first_sent(run: sipp.SippRun) -> float:
    """When SIPp sent its first message (its -trace_msg time stamp, local time)."""
    stamp = re.search(r"^-+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$", run.messages(), re.M)
    if stamp is None:
        raise RuntimeError(f"no time stamp in {run.name}'s message trace")
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


def run_flavour(flavour: str, calls: int, root: Path, kamailio: str = "5.6") -> dict[str, object]:
    name = f"{flavour}-{kamailio}"
    pg = start_cluster(root / f"pg-{name}")
    stack = Stack(
        root / f"stack-{name}",
        pg,
        make_test_pki(root / f"pki-{name}"),
        flavour=flavour,
        patches=patches(flavour, kamailio),
        kamailio=kamailio,
    )
    try:
        stack.start()
        phone = stack.phone("alice")
        stack.register_and_sleep(phone)
        timings = [one_call(stack, phone, n) for n in range(calls)]
    finally:
        stack.stop()
        pg.stop()
    push_ms = [t["push"] for t in timings]
    out: dict[str, object] = {
        "calls": calls,
        "invite_to_push_ms": summary(push_ms[1:] or push_ms),  # call 1 pays the TLS handshake
        "first_invite_to_push_ms": round(push_ms[0], 2),
        # From the caller's INVITE out (edge: through the upstream first).
        "caller_invite_to_push_ms": summary([t["caller_push"] for t in timings][1:]),
        "register_to_relay_ms": summary([t["relay"] for t in timings]),
    }
    if "upstream_2xx" in timings[0]:
        out["upstream_2xx_to_relay_ms"] = summary([t["upstream_2xx"] for t in timings])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--flavours", default="allinone,default,kemi,edge")
    parser.add_argument("--kamailio", default="5.6", help="releases, e.g. 5.6,6.0")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = world_readable_tempdir("pushgate-wake-bench-")
    results = {}
    try:
        for kamailio in args.kamailio.split(","):
            for flavour in args.flavours.split(","):
                key = flavour if kamailio == "5.6" else f"{flavour}@{kamailio}"
                calls = max(2, min(args.calls, 100))
                results[key] = run_flavour(flavour, calls, root, kamailio)
                print(key, json.dumps(results[key]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
