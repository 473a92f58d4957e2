"""Wake path while many calls are held: 10 / 100 / 1,000 (/ 10,000) calls held for others.

    python -m bench.held_scale [--sizes 10,100,1000] [--probes 200] [--json FILE]

For each size N, a fresh stack on loopback (throwaway PostgreSQL, Kamailio with our
kamailio.cfg, pushd, fake APNs; ``testkit.stack``), REG_AUTH 0, Pushgate's limits at
their defaults (PUSHGATE_MAX_HELD 4: one held call per AoR here):

1. N background phones register over TCP (SIPp, one connection each, closed after the
   200: the phones sleep) from an injection file (bench/scenarios/register_inf.xml);
2. N calls, one to each of them, are held (SIPp, bench/scenarios/caller_held_inf.xml):
   N pushes go out, nobody wakes; Kamailio's ``pushgate_hold`` htable is checked to hold
   N calls;
3. ``--probes`` wake-ups are measured one after the other, each of a probe phone of its
   own (registered and asleep; bench/simsip.py): a caller's INVITE (UDP), the push
   arriving at the fake APNs, the woken phone's REGISTER on a new TCP flow, the INVITE
   relayed to it, answered, BYE.

Two latencies per wake-up, from ``time.perf_counter`` in this process (the fake APNs
runs in it too):

``INVITE -> push``        the caller sends the INVITE -> the fake APNs has the push request
                          (Kamailio's routing, evapi to pushd, pushd, HTTP/2 over TLS)
``REGISTER -> INVITE``    the woken phone sends its REGISTER -> the held INVITE arrives on
                          its new flow (save, the resume, t_continue, relay), as the phone
                          sees it: the 200 for the REGISTER comes first on that flow

A size the machine cannot hold (registration or holding fails) is reported and ends the
run; Pushgate holds a call only while the free shm covers its base reserve and every held
call's wake-up (``PUSHGATE_WAKE_SHM``), so larger sizes need more than the default 64 MB:
``--shm`` (default: 64; 128 for N > 500; 512 for N > 3,000).

Bounded: at most the sizes given (N <= 20,000), ``--probes`` <= 2,000 per size, each
wait limited; Kamailio's hold timeout (--hold-timeout, default 170 s, below tm's
180 s transaction lifetime) ends every held call on its own. Everything started is
stopped in ``finally``, also on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import core_busy_seconds, summarize_ms, wait_for_quiet
from bench import harness as h
from bench.farm import Farm
from bench.simsip import Caller, Phone
from testkit.certs import make_test_pki
from testkit.postgres import start_cluster
from testkit.procs import stop, wait_until
from testkit.stack import world_readable_tempdir

MAX_SIZE = 20_000
MAX_PROBES = 2_000
REGISTER_RATE = 500
HOLD_RATE = 300


@dataclass
class SizeResult:
    held: int
    shm_mb: int
    probes: int = 0
    ok: int = 0
    lost: int = 0
    invite_to_push_ms: dict[str, float] = field(default_factory=dict)
    register_to_invite_ms: dict[str, float] = field(default_factory=dict)
    held_before: int = 0
    held_after: int = 0
    register_seconds: float = 0.0
    hold_seconds: float = 0.0
    shm_used_mb: float = 0.0
    shm_per_held_kb: float = 0.0
    other_cores: float = 0.0
    kamailio_cores: float = 0.0
    error: str = ""


async def probe_all(stack: h.BenchStack, farm: Farm, probes: list[Phone], out: SizeResult) -> None:
    farm.attach()
    caller = await Caller(stack.kamailio.sip_port).start()
    push_ms: list[float] = []
    relay_ms: list[float] = []
    try:
        for phone in probes:
            await phone.register()
        await asyncio.sleep(0.5)
        for phone in probes:
            pushed = farm.expect(phone.token)
            before = len(farm.results)
            call = caller.place(phone.user, talk=0.02)
            try:
                t_push = await asyncio.wait_for(pushed, 10)
                assert call.done is not None
                await asyncio.wait_for(asyncio.shield(call.done), 20)
                deadline = time.monotonic() + 10
                while len(farm.results) == before and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
            except TimeoutError:
                out.lost += 1
                continue
            out.probes += 1
            res = farm.results[-1] if len(farm.results) > before else None
            if call.status != 200 or res is None or res.error or not res.invite:
                out.lost += 1
                continue
            out.ok += 1
            push_ms.append(t_push - call.sent)
            relay_ms.append(res.invite - res.register_sent)
    finally:
        caller.close()
        await farm.drain(5)
        farm.detach()
    out.invite_to_push_ms = summarize_ms(push_ms)
    out.register_to_invite_ms = summarize_ms(relay_ms)


def run_size(n: int, args: argparse.Namespace, root: Path) -> SizeResult:
    shm = args.shm or (512 if n > 3000 else 128 if n > 500 else 64)
    out = SizeResult(held=n, shm_mb=shm)
    work = root / f"n{n}"
    pg = start_cluster(work / "pg")
    stack = h.BenchStack(
        work / "stack",
        pg,
        make_test_pki(work / "pki"),
        hold_timeout=args.hold_timeout,
        defines={"REG_AUTH": "0"},
    )
    stack.kamailio.shm_mb = shm
    stack.kamailio.mem_manager = args.mem_manager or None
    held_sipp = None
    try:
        stack.start()
        port = stack.kamailio.sip_port
        sipp_dir = work / "sipp"
        background = h.phones("bg", n)
        inf = h.write_injection(work / "bg.csv", background)
        t0 = time.monotonic()
        load = h.run_sipp(
            h.sipp_argv(
                "register_inf",
                target_port=port,
                workdir=sipp_dir,
                name="register",
                calls=n,
                rate=REGISTER_RATE,
                inf=inf,
                transport="tn",
                limit=200,
            ),
            sipp_dir,
            "register",
            n,
            timeout=n / REGISTER_RATE + 60,
        )
        out.register_seconds = round(time.monotonic() - t0, 1)
        if not load.ok:
            raise RuntimeError(f"{load.successful} of {n} background phones registered")
        shm0 = h.shm_stats(stack.kamailio)["real_used"]
        callees = h.write_callees(work / "callees.csv", [p.user for p in background])
        argv = h.sipp_argv(
            "caller_held_inf",
            target_port=port,
            workdir=sipp_dir,
            name="held",
            calls=n,
            rate=HOLD_RATE,
            inf=callees,
            transport="u1",
            limit=n + 10,
        )
        t0 = time.monotonic()
        held_sipp = h.start_sipp(argv, sipp_dir, "held")
        try:
            wait_until(
                lambda: h.htable_items(stack.kamailio, "pushgate_hold") >= n,
                n / HOLD_RATE + 60,
                f"{n} held calls",
                step=0.5,
            )
        except TimeoutError:
            out.held_before = h.htable_items(stack.kamailio, "pushgate_hold")
            raise RuntimeError(f"only {out.held_before} of {n} calls held") from None
        out.hold_seconds = round(time.monotonic() - t0, 1)
        time.sleep(1.0)  # the last pushes' results
        out.held_before = h.htable_items(stack.kamailio, "pushgate_hold")
        shm = h.shm_stats(stack.kamailio)
        out.shm_used_mb = round(shm["real_used"] / 2**20, 1)
        out.shm_per_held_kb = round((shm["real_used"] - shm0) / max(n, 1) / 1024, 1)
        probes = [
            Phone(p.user, p.token, p.instance, port, answer="answer", linger=0.05)
            for p in h.phones(f"probe{n}x", args.probes)
        ]
        farm = Farm(probes)
        stack.push_hook = farm.hook
        if args.quiet_wait > 0:
            wait_for_quiet(os.sched_getaffinity(0), args.quiet_wait, sys.stdout)
        cores = os.sched_getaffinity(0)
        pids = h.process_tree(stack.kamailio.pid or 0)
        busy0, kam0, t0 = core_busy_seconds(cores), h.cpu_ns(pids), time.monotonic()
        child0 = resource.getrusage(resource.RUSAGE_SELF)
        asyncio.run(probe_all(stack, farm, probes, out))
        elapsed = time.monotonic() - t0
        child1 = resource.getrusage(resource.RUSAGE_SELF)
        kam = (h.cpu_ns(pids) - kam0) / 1e9
        me = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
        busy = core_busy_seconds(cores) - busy0
        out.kamailio_cores = round(kam / elapsed, 3)
        pushd_note = 0.0  # pushd and the fake: in "other" (small at one call at a time)
        out.other_cores = round(max(busy - kam - me - pushd_note, 0.0) / elapsed, 3)
        out.held_after = h.htable_items(stack.kamailio, "pushgate_hold")
    except (RuntimeError, TimeoutError) as exc:
        out.error = str(exc)
    finally:
        stack.push_hook = None
        if held_sipp is not None:
            stop(held_sipp)
        stack.stop()
        pg.stop()
    return out


def report(r: SizeResult) -> None:
    if r.error:
        print(f"  N={r.held:>6}: FAILED: {r.error}", flush=True)
        return
    a, b = r.invite_to_push_ms, r.register_to_invite_ms
    print(
        f"  N={r.held:>6} held ({r.held_before}->{r.held_after}), shm {r.shm_used_mb} MB of"
        f" {r.shm_mb} ({r.shm_per_held_kb} KB/held call); {r.ok}/{r.probes} probes ok\n"
        f"      INVITE -> push      p50 {a['p50']:.2f}  p90 {a['p90']:.2f}  p99 {a['p99']:.2f}"
        f"  max {a['max']:.2f} ms\n"
        f"      REGISTER -> INVITE  p50 {b['p50']:.2f}  p90 {b['p90']:.2f}  p99 {b['p99']:.2f}"
        f"  max {b['max']:.2f} ms\n"
        f"      (register {r.register_seconds} s, hold {r.hold_seconds} s;"
        f" during probes Kamailio {r.kamailio_cores:.2f} cores, other {r.other_cores:.2f})",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.held_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--probes", type=int, default=200)
    p.add_argument("--hold-timeout", type=int, default=170)
    p.add_argument("--shm", type=int, default=0, help="Kamailio -m in MB (0: by size)")
    p.add_argument("--mem-manager", default="", help="Kamailio -x (qm, fm, tlsf); default qm")
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.add_argument("--quiet-wait", type=float, default=20.0, metavar="S")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not all(1 <= s <= MAX_SIZE for s in args.sizes) or not 1 <= args.probes <= MAX_PROBES:
        p.error(f"sizes in [1, {MAX_SIZE}], --probes in [1, {MAX_PROBES}]")
    if not 30 <= args.hold_timeout <= 175:
        p.error("--hold-timeout in [30, 175] (tm ends any INVITE transaction after 180 s)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = world_readable_tempdir("pushgate-bench-held-")
    results: list[SizeResult] = []
    meta = {"host": h.machine()}
    try:
        with h.stop_on_signals():
            for n in args.sizes:
                print(f"N = {n}: registering, holding, probing ...", flush=True)
                r = run_size(n, args, root)
                results.append(r)
                report(r)
                if r.error:
                    break
    finally:
        if args.keep:
            print(f"work dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    ok = [r for r in results if not r.error]
    if len(ok) >= 2:
        first, last = ok[0], ok[-1]
        for key in ("invite_to_push_ms", "register_to_invite_ms"):
            a, b = getattr(first, key)["p99"], getattr(last, key)["p99"]
            print(f"  {key}: p99 at N={last.held} / at N={first.held}: x{b / a:.2f}")
    if args.json is not None:
        doc = {
            "benchmark": "held_scale",
            **meta,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "sizes": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0 if results and all(not r.error and r.lost == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
