"""SIP latency of an OPTIONS stream through the real Kamailio: pushd healthy vs pushd frozen.

    python -m bench.sip_latency [--options 1000] [--held 4] [--interval-ms 2] [--json FILE]

Starts the whole stack on loopback (throwaway PostgreSQL, Kamailio with our
kamailio.cfg, pushd, fake APNs and FCM: ``testkit.stack.Stack``), registers sleeping
iPhones, then measures the round-trip time of ``--options`` sequential OPTIONS requests
over UDP in three phases:

1. ``idle``: pushd healthy, no call in progress (reference);
2. ``healthy``: pushd healthy, ``--held`` INVITEs held waiting for their phones (the
   pushes went out; the phones never wake up);
3. ``frozen``: pushd stopped with SIGSTOP (its evapi connection open, nothing read),
   ``--held`` new INVITEs held whose pushes sit unread in the socket.

What it shows: whether a hung pushd makes Kamailio's workers wait (it must not: push
requests go out asynchronously over evapi). The OPTIONS stream goes through the same SIP
workers as the held INVITEs. A lost OPTIONS (no answer within 2 s) is counted, not retried.

Bounded: each phase sends at most ``--options`` requests and stops after
``--phase-seconds``; the held calls end at the hold timeout. Everything started is
stopped in ``finally`` (SIGCONT first for the frozen pushd), including on SIGTERM/Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from bench import core_busy_seconds, summarize_ms, wait_for_quiet
from testkit import sipp
from testkit.certs import make_test_pki
from testkit.postgres import PostgresCluster, start_cluster
from testkit.procs import wait_until
from testkit.stack import Stack, world_readable_tempdir

DEFAULT_OPTIONS = 1000
MAX_OPTIONS = 20_000
DEFAULT_HELD = 4
MAX_HELD = 20
DEFAULT_INTERVAL_MS = 2.0
DEFAULT_PHASE_SECONDS = 10.0
MAX_PHASE_SECONDS = 60.0
OPTIONS_TIMEOUT = 2.0
HOLD_MARGIN = 8
"""Kamailio's hold timeout is a measured phase plus this many seconds, so the INVITEs of a
phase stay held while it is measured (and end soon after)."""
HELD_WAIT = 15.0
"""Seconds to wait for Kamailio to log the push requests of the held INVITEs."""


@dataclass
class Phase:
    name: str
    description: str
    sent: int = 0
    answered: int = 0
    lost: int = 0
    non_200: int = 0
    seconds: float = 0.0
    rtt_ms: dict[str, float] = field(default_factory=dict)
    held_at_start: int = 0
    """INVITEs held by Kamailio when the phase started (from its event log)."""
    held_at_end: int = 0
    cpu_busy_share: float = 0.0
    """Mean busy share of all cores during the phase: the stack's own work (Kamailio,
    PostgreSQL, pushd, the probe) is small; much more means a neighbour disturbed it."""


def options_rtt(
    port: int, count: int, interval: float, limit: float
) -> tuple[list[float], int, int, float]:
    """Send up to ``count`` sequential OPTIONS over UDP, ``interval`` s apart, for at most
    ``limit`` s. Returns (round-trip times in seconds, lost, non-200 answers, elapsed s).

    Adapted from tests/e2e/test_held_calls.py; a timeout counts as lost instead of failing.
    """
    rtts: list[float] = []
    lost = non_200 = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(OPTIONS_TIMEOUT)
        lport = sock.getsockname()[1]
        for i in range(count):
            if time.monotonic() - started >= limit:
                break
            call_id = f"bench-opt-{i}-{time.time_ns()}"
            msg = (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-{call_id}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:probe@pushgate.test>;tag=bench\r\n"
                f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {call_id}\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            sock.sendto(msg, ("127.0.0.1", port))
            reply = _reply_for(sock, call_id.encode())
            if reply is None:
                lost += 1
                continue
            rtts.append(time.perf_counter() - t0)
            if not reply.startswith(b"SIP/2.0 200"):
                non_200 += 1
            if interval > 0:
                time.sleep(interval)
    return rtts, lost, non_200, time.monotonic() - started


def _reply_for(sock: socket.socket, call_id: bytes) -> bytes | None:
    """The answer carrying ``call_id``; late answers to earlier (lost) requests are skipped."""
    deadline = time.monotonic() + OPTIONS_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            reply = sock.recv(65535)
        except TimeoutError:
            return None
        if call_id in reply:
            return reply
    return None


def held_now(stack: Stack) -> int:
    """Held INVITEs according to Kamailio's event log: call pushes (one per sleeping phone)
    minus the holds that ended (resumed, timed out, cancelled)."""
    held = 0
    for event in stack.events():
        name = event.get("event")
        if name == "push_request" and event.get("kind") == "call":
            held += 1
        elif name in ("resume", "hold_timeout", "cancel_held"):
            held -= 1
    return held


def measure(stack: Stack, phase: Phase, args: argparse.Namespace) -> Phase:
    phase.held_at_start = held_now(stack)
    cores = os.sched_getaffinity(0)
    busy0 = core_busy_seconds(cores)
    rtts, lost, non_200, seconds = options_rtt(
        stack.kamailio.sip_port, args.options, args.interval_ms / 1000.0, args.phase_seconds
    )
    busy = core_busy_seconds(cores) - busy0
    phase.cpu_busy_share = round(busy / max(seconds, 1e-9) / len(cores), 3)
    phase.sent = len(rtts) + lost
    phase.answered = len(rtts)
    phase.lost = lost
    phase.non_200 = non_200
    phase.seconds = round(seconds, 2)
    phase.rtt_ms = summarize_ms(rtts)
    phase.held_at_end = held_now(stack)
    return phase


def hold_calls(stack: Stack, users: list[str], label: str, runs: list[sipp.SippRun]) -> None:
    """Call each (sleeping) user; wait until Kamailio has asked for every push."""
    before = stack.count_events("push_request")
    for i, user in enumerate(users):
        runs.append(stack.call(user, expect_answer=False, label=f"{label}{i}"))
    wait_until(
        lambda: stack.count_events("push_request") >= before + len(users),
        HELD_WAIT,
        f"{len(users)} held INVITEs ({label})",
    )


def run(args: argparse.Namespace, root: Path, out_phases: list[Phase]) -> None:
    pg: PostgresCluster | None = None
    stack: Stack | None = None
    runs: list[sipp.SippRun] = []
    try:
        print("starting PostgreSQL, Kamailio, pushd and the fakes ...", flush=True)
        pg = start_cluster(root / "pg")
        pki = make_test_pki(root / "pki")
        hold_timeout = int(args.phase_seconds) + HOLD_MARGIN
        stack = Stack(root / "stack", pg, pki, hold_timeout=hold_timeout)
        stack.start(pushd=True)
        phones = [stack.phone(f"sleeper{i}") for i in range(2 * args.held)]
        for phone in phones:
            stack.register_and_sleep(phone)
        users = [p.user for p in phones]

        phase = Phase("idle", "pushd healthy, no held call")
        out_phases.append(measure(stack, phase, args))
        report(phase)

        hold_calls(stack, users[: args.held], "healthy", runs)
        phase = Phase("healthy", f"pushd healthy, {args.held} INVITEs held (pushes sent)")
        out_phases.append(measure(stack, phase, args))
        report(phase)
        # Let those calls end (hold timeout) so the frozen phase holds as many as this one.
        for r in runs:
            r.wait(hold_timeout + 10)

        stack.pause_pushd()
        hold_calls(stack, users[args.held :], "frozen", runs)
        phase = Phase("frozen", f"pushd SIGSTOPped, {args.held} INVITEs held (pushes unread)")
        out_phases.append(measure(stack, phase, args))
        report(phase)
    finally:
        for r in runs:
            r.stop()
        if stack is not None:
            stack.stop()  # SIGCONT + stop pushd, then Kamailio and the fakes
        if pg is not None:
            pg.stop()


def report(phase: Phase) -> None:
    r = phase.rtt_ms
    print(
        f"  {phase.name:<8} p50 {r['p50']:7.3f} ms  p99 {r['p99']:7.3f} ms  max {r['max']:8.3f} ms"
        f"  ({phase.answered} answered, {phase.lost} lost, "
        f"{phase.held_at_start}->{phase.held_at_end} held, cores {phase.cpu_busy_share:.0%} busy; "
        f"{phase.description})",
        flush=True,
    )


def ratios(phases: list[Phase]) -> dict[str, float]:
    by_name = {p.name: p.rtt_ms for p in phases}
    healthy, frozen = by_name.get("healthy"), by_name.get("frozen")
    if healthy is None or frozen is None:
        return {}
    return {
        key: round(frozen[key] / healthy[key], 2) if healthy[key] else float("nan")
        for key in ("p50", "p99", "max")
    }


def _count(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be in [1, {limit}]")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.sip_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--options", type=_count(MAX_OPTIONS), default=DEFAULT_OPTIONS)
    p.add_argument("--held", type=_count(MAX_HELD), default=DEFAULT_HELD)
    p.add_argument("--interval-ms", type=float, default=DEFAULT_INTERVAL_MS)
    p.add_argument("--phase-seconds", type=float, default=DEFAULT_PHASE_SECONDS)
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        metavar="S",
        help="wait up to S s for idle cores before starting (0: start at once)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = p.parse_args(argv)
    if not 0 <= args.interval_ms <= 1000 or not 0 < args.phase_seconds <= MAX_PHASE_SECONDS:
        p.error(
            f"--interval-ms must be in [0, 1000] and --phase-seconds in (0, {MAX_PHASE_SECONDS:g}]"
        )
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through run()'s finally


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.quiet_wait > 0:
        wait_for_quiet(os.sched_getaffinity(0), args.quiet_wait, sys.stdout)
    root = world_readable_tempdir("pushgate-bench-sip-")
    phases: list[Phase] = []
    try:
        run(args, root, phases)
    finally:
        if args.keep:
            print(f"work dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    rat = ratios(phases)
    print(f"frozen / healthy: p50 x{rat.get('p50')}, p99 x{rat.get('p99')}, max x{rat.get('max')}")
    if args.json is not None:
        doc = {
            "benchmark": "sip_latency",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": {
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "python": platform.python_version(),
                "loadavg": os.getloadavg(),
            },
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "phases": [asdict(p) for p in phases],
            "frozen_over_healthy": rat,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0 if len(phases) == 3 and all(p.answered for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
