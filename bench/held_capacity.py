"""Held-call capacity: how many INVITEs Kamailio can hold, and what happens at the limit.

    python -m bench.held_capacity [--mode wake,limit] [--calls 10000] [--shm 512]
        [--limit-phones 8000] [--json FILE]

Two experiments, each on a fresh stack on loopback (throwaway PostgreSQL, Kamailio with
our kamailio.cfg, pushd, fake APNs; REG_AUTH 0, Pushgate's limits at their defaults):

``wake``   with ``--shm`` MB of shared memory (default 512, what docs/performance.md
           recommends for 10,000): ``--calls`` phones register and sleep (SIPp, one TCP
           connection each), ``--calls`` calls are placed, one per phone, and held
           (bench/simsip.py's UDP caller; the pushes are held back by the phones), then
           every phone wakes (``--wake-rate`` per second: REGISTER on a new flow, answer,
           BYE). Every call must end answered by its phone: zero lost. Reports shm per
           held call, and the wake-up latency under that load.
``limit``  with Kamailio's default ``-m 64`` (``--limit-shm``): ``--limit-phones`` phones
           register, then calls are placed (``--limit-rate`` per second) until Kamailio
           refuses new ones (or every phone has one). What the new callers get is
           recorded (status, Reason), whether Kamailio is still up (all its processes,
           an OPTIONS answered), what its log says, and finally every call it did hold
           is woken: those must all be delivered.

Bounded: at most ``--calls`` (<= 20,000) / ``--limit-phones`` calls, each wait limited;
the hold timeout (170 s, below tm's 180 s) ends any call left. Everything started is
stopped in ``finally``, also on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import harness as h
from bench import summarize_ms
from bench.farm import Farm
from bench.simsip import Call, Caller, Phone
from testkit.certs import make_test_pki
from testkit.postgres import start_cluster
from testkit.stack import world_readable_tempdir

MAX_CALLS = 20_000
REGISTER_RATE = 500
HOLD_TIMEOUT = 170


@dataclass
class Outcome:
    mode: str
    shm_mb: int
    phones: int
    placed: int = 0
    held_peak: int = 0
    rejected: int = 0
    rejected_codes: dict[str, int] = field(default_factory=dict)
    first_rejected_at: int = 0
    """Calls held when the first new call was refused."""
    woken: int = 0
    delivered: int = 0
    lost: int = 0
    lost_detail: dict[str, int] = field(default_factory=dict)
    shm_baseline_mb: float = 0.0
    shm_at_peak_mb: float = 0.0
    shm_after_mb: float = 0.0
    shm_max_used_mb: float = 0.0
    """Kamailio's high-water mark of shm use over the whole run (core.shmmem max_used)."""
    shm_per_held_kb: float = 0.0
    shm_fragments_at_peak: int = 0
    held_after: int = 0
    kamailio_alive: bool = True
    processes_before: int = 0
    processes_after: int = 0
    options_after_ms: float = -1.0
    log_errors: dict[str, int] = field(default_factory=dict)
    register_to_invite_ms: dict[str, float] = field(default_factory=dict)
    hold_seconds: float = 0.0
    wake_seconds: float = 0.0
    error: str = ""


def options_rtt(port: int) -> float:
    """One OPTIONS to Kamailio over UDP: round trip in ms, -1 if unanswered within 3 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        lport = sock.getsockname()[1]
        cid = f"cap-opt-{time.time_ns()}"
        msg = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-{cid}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@pushgate.test>;tag=cap\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {cid}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        sock.sendto(msg, ("127.0.0.1", port))
        try:
            while cid.encode() not in sock.recv(65535):
                pass
        except TimeoutError:
            return -1.0
        return (time.perf_counter() - t0) * 1000


LOG_PATTERNS = {
    "shm_alloc_failed": "could not allocate shared memory",
    "out_of_mem": "out of mem",
    "no_more_memory": "no more memory",
    "routing_error": "pushgate: routing error",
    "critical": "CRITICAL",
    "error_lines": "ERROR:",
}


def log_errors(path: Path) -> dict[str, int]:
    """Counts of memory / error lines in Kamailio's log, and each distinct ERROR message
    (digits blanked) with its count."""
    counts: Counter[str] = Counter(dict.fromkeys(LOG_PATTERNS, 0))
    with path.open(errors="replace") as log:
        for line in log:
            for key, needle in LOG_PATTERNS.items():
                if needle in line:
                    counts[key] += 1
            if "ERROR:" in line or "CRITICAL:" in line:
                text = line.split("} ", 1)[-1] if line.lstrip()[:1].isdigit() else line
                text = re.sub(r"^\s*\d+\(\d+\) ", "", text).strip()
                text = text.split("Traceback")[0][:140]
                counts["> " + re.sub(r"\d+", "#", text)] += 1
    return dict(counts)


def register_phones(stack: h.BenchStack, work: Path, phones: list[h.BenchPhone]) -> None:
    n = len(phones)
    inf = h.write_injection(work / "phones.csv", phones)
    load = h.run_sipp(
        h.sipp_argv(
            "register_inf",
            target_port=stack.kamailio.sip_port,
            workdir=work / "sipp",
            name="register",
            calls=n,
            rate=REGISTER_RATE,
            inf=inf,
            transport="tn",
            limit=200,
        ),
        work / "sipp",
        "register",
        n,
        timeout=n / REGISTER_RATE + 120,
    )
    if not load.ok:
        raise RuntimeError(f"{load.successful} of {n} phones registered ({load.failed} failed)")


async def held(stack: h.BenchStack) -> int:
    return await asyncio.to_thread(h.htable_items, stack.kamailio, "pushgate_hold")


async def shm_mb(stack: h.BenchStack) -> tuple[float, int]:
    s = await asyncio.to_thread(h.shm_stats, stack.kamailio)
    return s["real_used"] / 2**20, s.get("fragments", 0)


async def place_calls(
    caller: Caller,
    farm: Farm,
    stack: h.BenchStack,
    phones: list[Phone],
    rate: float,
    out: Outcome,
    stop_after_rejections: int | None,
) -> list[Call]:
    """Place one call per phone at ``rate``; with ``stop_after_rejections``, stop when that
    many were refused. Returns the calls placed."""
    calls: list[Call] = []
    started = time.monotonic()
    for i, phone in enumerate(phones):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        calls.append(caller.place(phone.user, talk=0.1))
        if stop_after_rejections is not None and i % 50 == 49:
            refused = [c for c in calls if c.status >= 300]
            if refused and not out.first_rejected_at:
                out.first_rejected_at = await held(stack)
            if len(refused) >= stop_after_rejections:
                break
    out.placed = len(calls)
    # Until every call is held (its push held back by the farm) or refused.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answered = sum(1 for c in calls if c.status)
        if len(farm.deferred) + answered >= len(calls):
            break
        await asyncio.sleep(0.2)
    return calls


def tally(calls: list[Call], farm: Farm, out: Outcome, rejected_before_wake: set[str]) -> None:
    by_user = {r.user: r for r in farm.results}
    lost: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for call in calls:
        if call.call_id in rejected_before_wake:
            codes[f"{call.status} {call.reason_header}".strip()] += 1
            continue
        res = by_user.get(call.callee)
        if call.status == 200 and res is not None and res.invite and not res.error:
            out.delivered += 1
        else:
            why = f"caller {call.status or 'no answer'}"
            if res is None:
                why += ", phone never woken"
            elif res.error:
                why += f", phone: {res.error.split(':')[0]}"
            lost[why] += 1
    out.rejected = sum(codes.values())
    out.rejected_codes = dict(codes)
    out.lost = sum(lost.values())
    out.lost_detail = dict(lost)
    relay = [r.invite - r.register_sent for r in farm.results if r.invite]
    out.register_to_invite_ms = summarize_ms(relay)


async def experiment(
    stack: h.BenchStack, users: list[h.BenchPhone], args: argparse.Namespace, out: Outcome
) -> None:
    port = stack.kamailio.sip_port
    phones = [Phone(p.user, p.token, p.instance, port, answer="answer", linger=0.2) for p in users]
    farm = Farm(phones)
    farm.defer = True
    farm.attach()
    stack.push_hook = farm.hook
    caller = await Caller(port).start()
    try:
        out.shm_baseline_mb = round((await shm_mb(stack))[0], 1)
        out.processes_before = len(h.process_tree(stack.kamailio.pid or 0))
        t0 = time.monotonic()
        limit = out.mode == "limit"
        rate = args.limit_rate if limit else args.hold_rate
        calls = await place_calls(caller, farm, stack, phones, rate, out, 50 if limit else None)
        out.hold_seconds = round(time.monotonic() - t0, 1)
        await asyncio.sleep(1.0)
        out.held_peak = await held(stack)
        used, frags = await shm_mb(stack)
        out.shm_at_peak_mb = round(used, 1)
        out.shm_fragments_at_peak = frags
        out.shm_per_held_kb = round((used - out.shm_baseline_mb) * 1024 / max(out.held_peak, 1), 1)
        rejected = {c.call_id for c in calls if c.status}
        out.kamailio_alive = stack.kamailio.running()
        out.options_after_ms = round(await asyncio.to_thread(options_rtt, port), 3)
        print(
            f"  {out.placed} calls placed, {out.held_peak} held, {len(rejected)} refused;"
            f" shm {out.shm_baseline_mb} -> {out.shm_at_peak_mb} MB"
            f" ({out.shm_per_held_kb} KB per held call); OPTIONS {out.options_after_ms} ms",
            flush=True,
        )
        t0 = time.monotonic()
        out.woken = await farm.wake_deferred(args.limit_wake_rate if limit else args.wake_rate)
        pending = [c.done for c in calls if c.done is not None and not c.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=60)
        await farm.drain(30)
        out.wake_seconds = round(time.monotonic() - t0, 1)
        await asyncio.sleep(2.0)
        out.held_after = await held(stack)
        out.shm_after_mb = round((await shm_mb(stack))[0], 1)
        stats = await asyncio.to_thread(h.shm_stats, stack.kamailio)
        out.shm_max_used_mb = round(stats.get("max_used", 0) / 2**20, 1)
        tally(calls, farm, out, rejected)
    finally:
        caller.close()
        farm.detach()
        stack.push_hook = None
    out.processes_after = len(h.process_tree(stack.kamailio.pid or 0))
    out.kamailio_alive = out.kamailio_alive and stack.kamailio.running()
    out.log_errors = log_errors(stack.kamailio.log)


def run_mode(mode: str, args: argparse.Namespace, root: Path) -> Outcome:
    shm = args.shm if mode == "wake" else args.limit_shm
    n = args.calls if mode == "wake" else args.limit_phones
    out = Outcome(mode=mode, shm_mb=shm, phones=n)
    work = root / mode
    pg = start_cluster(work / "pg")
    stack = h.BenchStack(
        work / "stack",
        pg,
        make_test_pki(work / "pki"),
        hold_timeout=HOLD_TIMEOUT,
        defines={"REG_AUTH": "0"},
    )
    stack.kamailio.shm_mb = shm
    stack.kamailio.mem_manager = args.mem_manager or None
    try:
        stack.start()
        users = h.phones(f"{mode}x", n)
        print(f"{mode}: {n} phones registering (-m {shm}) ...", flush=True)
        register_phones(stack, work, users)
        asyncio.run(experiment(stack, users, args, out))
    except (RuntimeError, TimeoutError, OSError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        out.kamailio_alive = stack.kamailio.running()
        out.log_errors = log_errors(stack.kamailio.log)
    finally:
        if args.keep_logs:
            dest = Path(args.keep_logs) / f"{mode}-kamailio.log"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stack.kamailio.log, dest)
        stack.stop()
        pg.stop()
    return out


def report(o: Outcome) -> None:
    if o.error:
        print(f"  {o.mode}: FAILED: {o.error} (Kamailio alive: {o.kamailio_alive})", flush=True)
    r = o.register_to_invite_ms
    print(
        f"  {o.mode}: -m {o.shm_mb}: {o.placed} placed, {o.held_peak} held at peak"
        f" ({o.shm_per_held_kb} KB shm each), {o.rejected} refused {o.rejected_codes}"
        f"{f' (first at {o.first_rejected_at} held)' if o.first_rejected_at else ''};"
        f" woken {o.woken}, delivered {o.delivered}, LOST {o.lost} {o.lost_detail or ''}\n"
        f"      Kamailio alive {o.kamailio_alive}, processes {o.processes_before}->"
        f"{o.processes_after}, OPTIONS at the peak {o.options_after_ms} ms;"
        f" held after {o.held_after}; shm {o.shm_baseline_mb} -> {o.shm_at_peak_mb}"
        f" -> {o.shm_after_mb} MB (high-water {o.shm_max_used_mb} MB)\n"
        f"      log: {o.log_errors}\n"
        f"      REGISTER -> INVITE while waking all: p50 {r.get('p50', 0):.2f}"
        f" p99 {r.get('p99', 0):.2f} max {r.get('max', 0):.2f} ms"
        f" (hold {o.hold_seconds} s, wake {o.wake_seconds} s)",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.held_capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mode", default="wake,limit")
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--shm", type=int, default=512)
    p.add_argument("--hold-rate", type=float, default=300.0)
    p.add_argument("--wake-rate", type=float, default=300.0)
    p.add_argument("--limit-phones", type=int, default=8000)
    p.add_argument("--limit-shm", type=int, default=64)
    p.add_argument("--limit-rate", type=float, default=200.0)
    p.add_argument("--limit-wake-rate", type=float, default=300.0)
    p.add_argument("--mem-manager", default="", help="Kamailio -x (qm, fm, tlsf); default qm")
    p.add_argument("--keep-logs", default="", metavar="DIR", help="copy Kamailio's logs here")
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    args = p.parse_args(argv)
    args.mode = [m.strip() for m in args.mode.split(",") if m.strip()]
    if set(args.mode) - {"wake", "limit"}:
        p.error("--mode: wake and/or limit")
    if not 1 <= args.calls <= MAX_CALLS or not 1 <= args.limit_phones <= MAX_CALLS:
        p.error(f"--calls and --limit-phones in [1, {MAX_CALLS}]")
    for rate in (args.hold_rate, args.wake_rate, args.limit_rate):
        if not 1 <= rate <= 2000:
            p.error("rates in [1, 2000] per second")
    if max(args.calls / args.hold_rate, args.limit_phones / args.limit_rate) > 100:
        p.error("placing the calls must take under 100 s (the hold timeout is 170 s)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = world_readable_tempdir("pushgate-bench-cap-")
    outcomes: list[Outcome] = []
    try:
        with h.stop_on_signals():
            for mode in args.mode:
                o = run_mode(mode, args, root)
                outcomes.append(o)
                report(o)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json is not None:
        doc = {
            "benchmark": "held_capacity",
            "host": h.machine(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "outcomes": [asdict(o) for o in outcomes],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0 if outcomes and all(not o.error and o.lost == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
