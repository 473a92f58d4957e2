"""Soak: about 1,000 held calls cycling for ``--minutes``, steady registrations, injected
provider errors; nothing lost, memory flat, wake latency over time, and a plot.

    python -m bench.soak [--minutes 10] [--rate 50] [--phones 2500] [--json FILE]
        [--plot docs/soak.png]

The stack on loopback (throwaway PostgreSQL, Kamailio with our kamailio.cfg as it ships:
digest authentication, usrloc write-through to PostgreSQL; pushd; fake APNs), with
``--hold-timeout`` 60 s so that phones may take their time. ``--phones`` iPhones
register (digest) and sleep. Then, for ``--minutes``:

* calls arrive at ``--rate`` per second, round robin over the phones (each phone's next
  call comes long after its last one ended; every push stays within Pushgate's flood
  limits); a pushed phone wakes after ``--wake-min``..``--wake-max`` s (uniform; 10-30 s
  by default: with 50 calls/s about 1,000 calls are held at any time), re-REGISTERs on a
  new flow with the push's wake token, answers, talks ``--talk`` s, BYE, sleeps again;
* ``--register-rate`` idle phones per second refresh their registration (digest);
* ``--error-share`` of the calls get a provider error scripted for their push (fake
  APNs, one answer): 503 or 429 with Retry-After (pushd retries: the call must still be
  answered), 413 PayloadTooLarge (give_up: the caller must get 480 "Push notification
  failed" at once), 410 Unregistered (delete_token: 480, the binding is removed and the
  phone registers again, as an app with a fresh token would), or the phone ignores its
  push (480 "Device did not wake up" at the hold timeout).

A call is *lost* when it does not end the way its kind requires. Every ``--sample`` s
the benchmark records Kamailio's shm (``core.shmmem``) and pkg (``pkg.stats``, largest
process), pushd's RSS, the calls held (``pushgate_hold`` htable), and the wake-up
latencies of the calls answered in that window (REGISTER sent -> INVITE received on the
new flow; INVITE sent -> push at the fake APNs), p50/p99. At the end no new calls are
placed, the calls in progress finish, and the figures and (with ``--plot``) a PNG are
written (matplotlib; bench/plot_soak.py, run with the system Python if the venv lacks it).

Bounded: ``--minutes`` <= 120 of calls at ``--rate`` <= 500/s, then at most the hold
timeout plus a minute to drain. Everything started is stopped in ``finally``, also on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import core_busy_seconds, percentile
from bench import harness as h
from bench.farm import Farm
from bench.simsip import Call, Caller, Phone, WakeResult
from testkit.certs import make_test_pki
from testkit.postgres import start_cluster
from testkit.stack import world_readable_tempdir

ERROR_KINDS = {
    # kind: (fake APNs answer or None, expected caller status, Reason text expected)
    "retry503": ((503, "ServiceUnavailable", None), 200, ""),
    "retry429": ((429, "TooManyRequests", 1.0), 200, ""),
    "give_up": ((413, "PayloadTooLarge", None), 480, "Push notification failed"),
    "dead_token": ((410, "Unregistered", None), 480, "Push notification failed"),
    "no_wake": (None, 480, "Device did not wake up"),
}


@dataclass
class Sample:
    t: float
    """Seconds since the load started."""
    held: int
    shm_real_used_mb: float
    shm_fragments: int
    pkg_max_kb: float
    pkg_sum_mb: float
    pushd_rss_mb: float
    kamailio_cpu: float
    """Kamailio's CPU in the window, cores."""
    other_cores: float
    placed: int
    answered: int
    wake_p50_ms: float = float("nan")
    wake_p99_ms: float = float("nan")
    push_p50_ms: float = float("nan")
    push_p99_ms: float = float("nan")
    wakes: int = 0
    kam_p50_ms: float = float("nan")
    """Kamailio's own REGISTER in -> INVITE relayed (its log, 1 ms resolution)."""
    kam_p99_ms: float = float("nan")


@dataclass
class Summary:
    minutes: float
    placed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    failed_as_expected: int = 0
    lost: int = 0
    lost_detail: dict[str, int] = field(default_factory=dict)
    registrations: int = 0
    registration_errors: int = 0
    wake_ms: dict[str, float] = field(default_factory=dict)
    kamailio_wake_ms: dict[str, float] = field(default_factory=dict)
    """REGISTER in -> INVITE relayed in Kamailio's own timeline (1 ms resolution)."""
    push_ms: dict[str, float] = field(default_factory=dict)
    memory_start: dict[str, float] = field(default_factory=dict)
    memory_end: dict[str, float] = field(default_factory=dict)
    held_mean: float = 0.0
    kamailio_alive: bool = True


class Soak:
    def __init__(self, stack: h.BenchStack, users: list[h.BenchPhone], args: argparse.Namespace):
        self.stack = stack
        self.args = args
        port = stack.kamailio.sip_port
        self.phones = [
            Phone(
                p.user,
                p.token,
                p.instance,
                port,
                password=p.password,
                answer="answer",
                linger=0.3,
            )
            for p in users
        ]
        self.farm = Farm(self.phones, delay=self._delay, use_wake_token=True)
        self.tokens = {p.user: p.token.lower() for p in self.phones}
        self.kinds: dict[str, str] = {}
        self.no_wake: set[str] = set()
        self.busy: set[str] = set()
        self.calls: list[tuple[Call, str, float]] = []
        """(call, kind, placed at perf_counter)"""
        self.outcomes: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.samples: list[Sample] = []
        self.registrations = 0
        self.registration_errors = 0
        self.results_seen = 0
        self.push_ms: list[tuple[float, float]] = []
        """(time answered, INVITE -> push ms) of the answered calls"""
        self.wake_ms: list[tuple[float, float]] = []
        self.t0 = 0.0
        self.t0_wall = 0.0
        self.kam_ms: dict[str, float] = {}
        self.pending_reregister: set[str] = set()
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()

    def _delay(self) -> float:
        return random.uniform(self.args.wake_min, self.args.wake_max)

    # ----- calls -----
    async def place_calls(self, caller: Caller) -> None:
        rate, n = self.args.rate, len(self.phones)
        started = time.monotonic()
        end = started + self.args.minutes * 60
        i = 0
        while not self.stopping and time.monotonic() < end:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            phone = self.phones[i % n]
            i += 1
            if phone.user in self.busy or phone.user in self.pending_reregister:
                self.outcomes["skipped_busy"] += 1
                continue
            kind = self._kind()
            self._script(phone, kind)
            self.busy.add(phone.user)
            call = caller.place(phone.user, talk=self.args.talk)
            self.calls.append((call, kind, time.perf_counter()))
            self.kinds[call.call_id] = kind
            assert call.done is not None
            call.done.add_done_callback(lambda f, p=phone, k=kind: self._ended(f.result(), p, k))

    def _kind(self) -> str:
        if random.random() >= self.args.error_share:
            return "normal"
        return random.choice(list(ERROR_KINDS))

    def _script(self, phone: Phone, kind: str) -> None:
        if kind == "normal":
            return
        answer = ERROR_KINDS[kind][0]
        if answer is None:
            self.no_wake.add(phone.token.lower())
            return
        status, reason, retry_after = answer
        assert self.stack.apns is not None
        self.stack.apns.script(phone.token, status, reason, times=1, retry_after=retry_after)

    def _ended(self, call: Call, phone: Phone, kind: str) -> None:
        expected = 200 if kind == "normal" else ERROR_KINDS[kind][1]
        text = "" if kind == "normal" else ERROR_KINDS[kind][2]
        ok = call.status == expected and (not text or text in call.reason_header)
        if ok and expected == 200 and call.bye_final != 200:
            ok = False
        self.outcomes[kind] += 1
        if ok:
            self.outcomes["answered" if expected == 200 else "failed_as_expected"] += 1
        else:
            why = f" ({call.reason_header})" if call.reason_header else ""
            self.lost[f"{kind}: caller {call.status}{why} bye {call.bye_final}"] += 1
        self.no_wake.discard(phone.token.lower())
        if kind == "dead_token":
            # The binding is gone: the app registers again (its token is fine again).
            self.pending_reregister.add(phone.user)
            task = asyncio.ensure_future(self._reregister(phone))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.busy.discard(phone.user)

    async def _reregister(self, phone: Phone) -> None:
        try:
            await asyncio.sleep(0.5)
            await phone.register()
            self.registrations += 1
        except (OSError, TimeoutError, RuntimeError, ConnectionError) as exc:
            self.registration_errors += 1
            self.lost[f"re-register after 410: {type(exc).__name__}"] += 1
        finally:
            self.pending_reregister.discard(phone.user)
            self.busy.discard(phone.user)

    # ----- steady registrations -----
    async def refresh_registrations(self) -> None:
        rate = self.args.register_rate
        if rate <= 0:
            return
        started = time.monotonic()
        end = started + self.args.minutes * 60
        i = 0
        tasks: set[asyncio.Task[None]] = set()
        while not self.stopping and time.monotonic() < end:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            phone = random.choice(self.phones)
            if phone.user in self.busy or phone.user in self.pending_reregister:
                continue
            task = asyncio.ensure_future(self._refresh(phone))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def _refresh(self, phone: Phone) -> None:
        self.busy.add(phone.user)
        try:
            await phone.register()
            self.registrations += 1
        except (OSError, TimeoutError, RuntimeError, ConnectionError) as exc:
            self.registration_errors += 1
            self.lost[f"refresh REGISTER: {type(exc).__name__}"] += 1
        finally:
            self.busy.discard(phone.user)

    # ----- wake-ups: the farm skips phones told not to wake -----
    def farm_hook(self, record: object, at: float) -> None:
        token = getattr(record, "token", None)
        if token is not None and token.lower() in self.no_wake:
            return
        self.farm.hook(record, at)  # type: ignore[arg-type]

    def on_wake(self, result: WakeResult) -> None:
        if result.invite:
            now = time.perf_counter() - self.t0
            self.wake_ms.append((now, (result.invite - result.register_sent) * 1000))

    # ----- sampling -----
    async def sample_loop(self) -> None:
        cores = os.sched_getaffinity(0)
        pids = h.process_tree(self.stack.kamailio.pid or 0)
        last_t, last_busy, last_kam = time.monotonic(), core_busy_seconds(cores), h.cpu_ns(pids)
        last_me = _self_cpu()
        last_placed = last_answered = 0
        last_wake = last_push = 0
        while True:
            await asyncio.sleep(self.args.sample)
            now = time.monotonic()
            busy, kam, me = core_busy_seconds(cores), h.cpu_ns(pids), _self_cpu()
            dt = now - last_t
            s = await asyncio.to_thread(self._memory)
            placed, answered = len(self.calls), self.outcomes["answered"]
            wake = [ms for _, ms in self.wake_ms[last_wake:]]
            push = [ms for _, ms in self.push_ms[last_push:]]
            wake.sort()
            push.sort()
            sample = Sample(
                t=round(time.perf_counter() - self.t0, 1),
                held=s["held"],
                shm_real_used_mb=s["shm"],
                shm_fragments=int(s["frag"]),
                pkg_max_kb=s["pkg_max"],
                pkg_sum_mb=s["pkg_sum"],
                pushd_rss_mb=s["pushd"],
                kamailio_cpu=round((kam - last_kam) / 1e9 / dt, 3),
                other_cores=round(
                    max((busy - last_busy) - (kam - last_kam) / 1e9 - (me - last_me), 0) / dt, 3
                ),
                placed=placed - last_placed,
                answered=answered - last_answered,
                wakes=len(wake),
            )
            if wake:
                sample.wake_p50_ms = round(percentile(wake, 50), 2)
                sample.wake_p99_ms = round(percentile(wake, 99), 2)
            if push:
                sample.push_p50_ms = round(percentile(push, 50), 2)
                sample.push_p99_ms = round(percentile(push, 99), 2)
            self.samples.append(sample)
            print(
                f"  t={sample.t:6.0f}s held {sample.held:5d}  calls {sample.placed:4d}"
                f" answered {sample.answered:4d}  wake p50/p99 {sample.wake_p50_ms:6.2f}/"
                f"{sample.wake_p99_ms:6.2f} ms  push p99 {sample.push_p99_ms:6.2f} ms"
                f"  shm {sample.shm_real_used_mb:6.1f} MB pkg max {sample.pkg_max_kb:6.0f} KB"
                f"  pushd {sample.pushd_rss_mb:5.1f} MB  kam {sample.kamailio_cpu:.2f}"
                f" other {sample.other_cores:.2f} cores  lost {sum(self.lost.values())}",
                flush=True,
            )
            # This process keeps every call's record: freeze what exists, so that a full
            # garbage collection (a pause in the phones' and the fake APNs' timing) only
            # scans the last window's objects.
            gc.freeze()
            last_t, last_busy, last_kam, last_me = now, busy, kam, me
            last_placed, last_answered = placed, answered
            last_wake, last_push = len(self.wake_ms), len(self.push_ms)

    def _memory(self) -> dict[str, float]:
        kam = self.stack.kamailio
        shm = h.shm_stats(kam)
        pkg = h.pkg_stats(kam)
        pushd = self.stack.pushd_proc.pid if self.stack.pushd_proc else 0
        return {
            "held": h.htable_items(kam, "pushgate_hold"),
            "shm": round(shm["real_used"] / 2**20, 2),
            "frag": shm.get("fragments", 0),
            "pkg_max": round(pkg["real_used_max"] / 1024, 1),
            "pkg_sum": round(pkg["real_used_sum"] / 2**20, 2),
            "pushd": round(h.rss_kb(pushd) / 1024, 1),
        }

    # ----- the run -----
    async def run(self) -> Summary:
        self.farm.attach()
        self.farm.on_result = self.on_wake
        self.stack.push_hook = self.farm_hook
        caller = await Caller(self.stack.kamailio.sip_port).start()
        caller.on_final = self._final
        print(f"registering {len(self.phones)} phones (digest) ...", flush=True)
        for chunk in range(0, len(self.phones), 200):
            await asyncio.gather(*(p.register() for p in self.phones[chunk : chunk + 200]))
        self.t0 = time.perf_counter()
        self.t0_wall = time.time()
        gc.collect()
        gc.freeze()  # the phones and their records: not scanned by every collection
        sampler = asyncio.ensure_future(self.sample_loop())
        print(f"load for {self.args.minutes} min ...", flush=True)
        try:
            await asyncio.gather(self.place_calls(caller), self.refresh_registrations())
            print("draining: no new calls; waiting for the calls in progress ...", flush=True)
            pending = [c.done for c, _, _ in self.calls if c.done and not c.done.done()]
            if pending:
                await asyncio.wait(pending, timeout=self.args.hold_timeout + 60)
            await self.farm.drain(30)
            await asyncio.sleep(self.args.sample)
        finally:
            sampler.cancel()
            caller.close()
            self.farm.detach()
            self.stack.push_hook = None
        self.kamailio_latency()
        return self.summary()

    def kamailio_latency(self) -> None:
        """REGISTER in -> INVITE relayed from Kamailio's timeline (``register_in`` and the
        ``invite_relayed`` the same worker logs next), per sample window."""
        registered: dict[str, float] = {}
        per_window: dict[int, list[float]] = {}
        starts = [x.t for x in self.samples]
        with self.stack.kamailio.log.open(errors="replace") as log:
            for line in log:
                if "event=register_in" not in line and "event=invite_relayed" not in line:
                    continue
                pid = line.split("(", 1)[1].split(")", 1)[0] if "(" in line else ""
                t = float(line.split(" t=", 1)[1].split()[0])
                if "event=register_in" in line:
                    registered[pid] = t
                elif pid in registered:
                    since = t - self.t0_wall
                    i = next((k for k, start in enumerate(starts) if since <= start), -1)
                    per_window.setdefault(i, []).append((t - registered.pop(pid)) * 1000)
        for i, values in per_window.items():
            if 0 <= i < len(self.samples):
                values.sort()
                self.samples[i].kam_p50_ms = round(percentile(values, 50), 2)
                self.samples[i].kam_p99_ms = round(percentile(values, 99), 2)
        everything = sorted(v for values in per_window.values() for v in values)
        self.kam_ms = {f"p{p}": round(percentile(everything, p), 2) for p in (50, 90, 99)}

    def _final(self, call: Call) -> None:
        """INVITE -> push of the calls without a scripted error, when they are answered."""
        if call.status == 200 and self.kinds.get(call.call_id) == "normal":
            at = self.farm.push_times.get(self.tokens.get(call.callee, ""), 0.0)
            if at and at > call.sent:
                now = time.perf_counter() - self.t0
                self.push_ms.append((now, (at - call.sent) * 1000))

    def summary(self) -> Summary:
        s = Summary(minutes=self.args.minutes)
        s.placed = len(self.calls)
        s.by_kind = {k: v for k, v in self.outcomes.items() if k in ERROR_KINDS or k == "normal"}
        s.answered = self.outcomes["answered"]
        s.failed_as_expected = self.outcomes["failed_as_expected"]
        unfinished = sum(1 for c, _, _ in self.calls if c.done is not None and not c.done.done())
        if unfinished:
            self.lost[f"unfinished after drain: {unfinished}"] += unfinished
        s.lost = sum(self.lost.values())
        s.lost_detail = dict(self.lost)
        s.registrations = self.registrations
        s.registration_errors = self.registration_errors
        steady = [x for x in self.samples if x.t >= self.args.wake_max]
        wake = sorted(ms for t, ms in self.wake_ms)
        push = sorted(ms for t, ms in self.push_ms)
        s.wake_ms = {f"p{p}": round(percentile(wake, p), 2) for p in (50, 90, 99)}
        s.push_ms = {f"p{p}": round(percentile(push, p), 2) for p in (50, 90, 99)}
        s.kamailio_wake_ms = dict(self.kam_ms)
        if steady:
            first, last = steady[0], [x for x in steady if x.placed > 0][-1:] or steady[-1:]
            s.memory_start = _mem(first)
            s.memory_end = _mem(last[0])
            s.held_mean = round(sum(x.held for x in steady if x.placed) / max(1, len(steady)), 0)
        return s


def _mem(x: Sample) -> dict[str, float]:
    return {
        "t": x.t,
        "shm_real_used_mb": x.shm_real_used_mb,
        "shm_fragments": x.shm_fragments,
        "pkg_max_kb": x.pkg_max_kb,
        "pkg_sum_mb": x.pkg_sum_mb,
        "pushd_rss_mb": x.pushd_rss_mb,
        "held": x.held,
    }


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(args: argparse.Namespace, root: Path) -> tuple[Summary, list[Sample]]:
    pg = start_cluster(root / "pg")
    stack = h.BenchStack(
        root / "stack",
        pg,
        make_test_pki(root / "pki"),
        hold_timeout=args.hold_timeout,
    )
    stack.kamailio.shm_mb = args.shm
    stack.kamailio.mem_manager = args.mem_manager or None
    try:
        stack.start()
        users = h.phones("soak", args.phones)
        h.add_subscribers(pg, users)
        soak = Soak(stack, users, args)
        with asyncio.Runner(loop_factory=h.fast_loop()) as runner:
            summary = runner.run(soak.run())
        summary.kamailio_alive = stack.kamailio.running()
        return summary, soak.samples
    finally:
        stack.stop()
        pg.stop()


def plot(json_file: Path, png: Path) -> None:
    """bench/plot_soak.py with a Python that has matplotlib (the venv's, else the system's)."""
    script = h.BENCH / "plot_soak.py"
    for python in (sys.executable, "/usr/bin/python3"):
        check = subprocess.run([python, "-c", "import matplotlib"], capture_output=True)
        if check.returncode == 0:
            subprocess.run([python, str(script), str(json_file), str(png)], check=True)
            print(f"plot written to {png}")
            return
    print("no matplotlib (apt-get install python3-matplotlib): no plot", flush=True)


def report(s: Summary) -> None:
    print(
        f"\nsoak {s.minutes} min: {s.placed} calls placed {s.by_kind}\n"
        f"  answered {s.answered}, failed as expected {s.failed_as_expected}, LOST {s.lost}"
        f" {s.lost_detail or ''}\n"
        f"  registrations {s.registrations} ({s.registration_errors} errors);"
        f" mean held {s.held_mean}; Kamailio alive {s.kamailio_alive}\n"
        f"  wake (REGISTER -> INVITE) {s.wake_ms}; INVITE -> push {s.push_ms}\n"
        f"  Kamailio's REGISTER in -> INVITE relayed {s.kamailio_wake_ms}\n"
        f"  memory start {s.memory_start}\n"
        f"  memory end   {s.memory_end}",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=50.0, help="calls per second")
    p.add_argument("--phones", type=int, default=2500)
    p.add_argument("--wake-min", type=float, default=10.0)
    p.add_argument("--wake-max", type=float, default=30.0)
    p.add_argument("--talk", type=float, default=1.0)
    p.add_argument("--hold-timeout", type=int, default=60)
    p.add_argument("--register-rate", type=float, default=10.0)
    p.add_argument("--error-share", type=float, default=0.05)
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--shm", type=int, default=128)
    p.add_argument("--mem-manager", default="", help="Kamailio -x (qm, fm, tlsf)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 120 or not 0 < args.rate <= 500:
        p.error("--minutes in (0, 120], --rate in (0, 500]")
    if not 0 <= args.wake_min <= args.wake_max < args.hold_timeout - 5:
        p.error("need 0 <= --wake-min <= --wake-max < --hold-timeout - 5")
    cycle = args.phones / args.rate
    if cycle < max(args.wake_max + args.talk + 5, 25):
        # Also Pushgate's flood limit: at most 3 call pushes per caller and AoR a minute.
        p.error(f"--phones / --rate ({cycle:.0f} s) must exceed a call's length and 25 s")
    if args.phones > 20_000 or not 0 <= args.error_share <= 0.5:
        p.error("--phones <= 20000, --error-share in [0, 0.5]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = world_readable_tempdir("pushgate-bench-soak-")
    summary: Summary | None = None
    samples: list[Sample] = []
    try:
        with h.stop_on_signals():
            summary, samples = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if summary is None:
        return 1
    report(summary)
    doc = {
        "benchmark": "soak",
        "host": h.machine(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": asdict(summary),
        "samples": [asdict(x) for x in samples],
    }
    json_file = args.json or (root.parent / f"{root.name}.json")
    json_file.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"figures written to {json_file}")
    if args.plot is not None:
        plot(json_file, args.plot)
    return 0 if summary.lost == 0 and summary.kamailio_alive else 1


if __name__ == "__main__":
    sys.exit(main())
