"""Sustained push throughput of ONE pushd process against the local fake APNs / fake FCM.

    python -m bench.push_throughput [--seconds 10] [--max-pushes 150000] [--concurrency 100]
        [--provider apns|fcm|both] [--apns-fake python|nginx] [--rate N] [--json FILE]
        [--profile DIR]

This process plays pushd: one asyncio loop, the real :class:`~pushd.apns.ApnsProvider` /
:class:`~pushd.fcm.FcmProvider` behind the real :class:`~pushd.dispatch.Dispatcher`
(validation, retries, metrics, result messages), logging set up as ``pushd`` sets it up
(level ``info`` by default, one line per push, with the redaction filter), push messages
decoded from evapi netstrings and every result encoded back into one, exactly the work
the Kamailio link does per push apart from its socket reads and writes.

The fake server runs as a separate process (``python -m testkit.fake_apns`` /
``python -m testkit.fake_fcm``) pinned to another core, so the CPU time measured here
(``resource.getrusage``, all threads of this process: FCM's worker threads included) is
pushd's alone. The load is a closed loop of ``--concurrency`` pushes in flight (or, with
``--rate``, an open loop paced at that many pushes per second, still capped at
``--concurrency`` in flight). Each provider gets a short warm-up (connections, provider
token, OAuth token) that is not measured, then ``--seconds`` of load capped at
``--max-pushes``. Everything stays on 127.0.0.1 and stops by itself.

``--apns-fake nginx`` replaces the APNs fake, which checks every JWT and header in Python
(0.2-0.4 ms of CPU per request: it caps the measurement at roughly 3,000-4,500 pushes/s),
with nginx answering 200 to every push and checking nothing (:mod:`testkit.nginx_apns`):
for the ceiling of pushd itself, not for checking what it sends. The fake's CPU is then nginx's
master plus its worker.

Goals (one core): 5,000 APNs pushes/s and 1,000 FCM pushes/s. Two ratios are printed:
achieved pushes/s over the goal, and pushes per CPU-second over the goal (what pushd could
do with its core to itself: the better figure when the fake, not pushd, is the limit).

``--profile DIR`` adds one cProfile'd run per provider after the measured one (cProfile
slows everything down, so it never touches the measured figures) and writes
``DIR/<provider>.prof`` plus a text summary (own time per package, top functions). APNs
is profiled with the wall clock; FCM, worker threads included, with each thread's CPU
clock, so that waits for the GIL or the network do not look like work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import io
import json
import logging
import os
import platform
import pstats
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from bench import core_busy_seconds, summarize_ms, wait_for_quiet
from pushd import logs, netstring
from pushd.apns import ApnsProvider
from pushd.app import run_loop
from pushd.dispatch import Dispatcher
from pushd.fcm import FcmProvider
from pushd.model import Provider, ProviderName, PushRequest, PushResult
from pushd.provider_settings import ApnsSettings, FcmSettings
from testkit.certs import TestPki, make_test_pki
from testkit.fake_apns import client_settings
from testkit.nginx_apns import NginxApns, nginx_binary, nginx_version

REPO = Path(__file__).resolve().parent.parent
GOALS: dict[str, float] = {"apns": 5000.0, "fcm": 1000.0}
"""Pushes per second from one pushd process on one core."""

DEFAULT_SECONDS = 10.0
DEFAULT_MAX_PUSHES = 150_000
DEFAULT_CONCURRENCY = 100
MAX_SECONDS = 300.0
MAX_PUSHES = 1_000_000
WARMUP_PUSHES = 500
WARMUP_SECONDS = 5.0
DRAIN_SECONDS = 15.0
"""After the load stops: how long in-flight pushes may take before they are cancelled."""
FAKE_READY_SECONDS = 30.0
PROFILE_SECONDS = 5.0
SATURATED = 0.9
DEFAULT_QUIET_WAIT = 60.0
DISTURBED = 0.15
"""Busy share of the two cores used by neither process above which a warning is printed."""
"""CPU use (share of one core) from which a process counts as the bottleneck."""

BUNDLE = "com.example.app"
FCM_PROJECT = "pushgate-test"
LOG_SECRET = "bench-kamailio-secret"
"""pushd always redacts at least the Kamailio secret; keeping one here keeps that cost."""


# -- cores ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    pushd: int
    fake: int | None
    """None when only one core is available: the fake then shares pushd's core."""

    def both(self) -> set[int]:
        return {self.pushd} if self.fake is None else {self.pushd, self.fake}


def pick_cores() -> Cores:
    available = sorted(os.sched_getaffinity(0))
    return Cores(pushd=available[0], fake=available[1] if len(available) > 1 else None)


@contextlib.contextmanager
def affinity(cores: set[int]) -> Iterator[None]:
    """Run the calling thread on ``cores`` for a while (children forked meanwhile inherit it)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_seconds_self() -> float:
    """User + system CPU time of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds_of(pid: int) -> float | None:
    """User + system CPU time of another live process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
"""cgroup v1's cpu controller (``--cpu-quota``)."""


@contextlib.contextmanager
def cpu_quota(share: float) -> Iterator[None]:
    """Cap this process (every thread) at ``share`` of one core for a while, with a cgroup
    of its own (cfs quota). Started after the fake server, which stays outside the cap:
    N capped processes then fit on a machine with fewer than N free cores."""
    group = CGROUP_CPU / f"pushgate-bench-{os.getpid()}"
    group.mkdir()
    try:
        period = int((group / "cpu.cfs_period_us").read_text())
        (group / "cpu.cfs_quota_us").write_text(str(int(share * period)))
        (group / "cgroup.procs").write_text(str(os.getpid()))
        try:
            yield
        finally:
            (CGROUP_CPU / "cgroup.procs").write_text(str(os.getpid()))
    finally:
        group.rmdir()


# -- the fake server process ---------------------------------------------------------------


class Fake(Protocol):
    """A started fake provider server, as the benchmark sees it."""

    port: int

    def pids(self) -> list[int]:
        """Its processes: the CPU counted for the fake is theirs."""
        ...

    def stop(self) -> None: ...


def fake_cpu_seconds(fake: Fake) -> float | None:
    """User + system CPU time of all the fake's processes (nginx: master and worker)."""
    times = [cpu_seconds_of(pid) for pid in fake.pids()]
    if not times or None in times:
        return None
    return sum(t for t in times if t is not None)


class FakeServer:
    """A fake provider run as ``python -m <module> ...``, pinned to one core."""

    def __init__(self, name: str, argv: list[str], core: int | None, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.core = core
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> FakeServer:
        cores = {self.core} if self.core is not None else os.sched_getaffinity(0)
        with self.log_path.open("ab") as log, affinity(cores):
            self.proc = subprocess.Popen(
                [sys.executable, *self.argv],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        if self.core is not None:
            # Inherited already; set again so a mistake here cannot go unnoticed.
            os.sched_setaffinity(self.proc.pid, {self.core})
        self.port = self._wait_ready()
        return self

    def _wait_ready(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + FAKE_READY_SECONDS
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    break
                line = self.proc.stdout.readline()
                if not line:
                    break  # exited
                if line.startswith("READY "):
                    return int(line.split()[1])
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not become ready:\n{tail}")

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- push messages as Kamailio sends them ----------------------------------------------------


def push_frames(
    count: int, deadline: float, provider: str, prid: Callable[[int], str], param: str
) -> list[bytes]:
    """Netstring-framed ``push`` call messages as Kamailio sends them, ids unique."""
    return [
        netstring.encode(
            {
                "type": "push",
                "id": f"{provider}{i}",
                "kind": "call",
                "provider": provider,
                "prid": prid(i),
                "param": param,
                "aor": f"sip:user{i % 1000}@pushgate.test",
                "ruid": f"uloc-{i:x}",
                "deadline": deadline,
                "data": {
                    "call_id": f"bench-{i}@pushgate.test",
                    "caller": "sip:bob@pushgate.test",
                    "aor": f"sip:user{i % 1000}@pushgate.test",
                },
            }
        )
        for i in range(count)
    ]


def apns_frames(count: int, deadline: float, pki: TestPki) -> list[bytes]:
    """iPhones (VoIP call pushes)."""
    param = f"{pki.team_id}.{pki.bundle}.voip"
    return push_frames(count, deadline, "apns", lambda i: f"{i:064x}", param)


def fcm_frames(count: int, deadline: float) -> list[bytes]:
    """Android phones."""
    return push_frames(count, deadline, "fcm", lambda i: f"fcm-{i:040x}:APA91b", FCM_PROJECT)


# -- the load ------------------------------------------------------------------------------


@dataclass
class RunStats:
    """What one load run saw."""

    submitted: int = 0
    completed: int = 0
    stopped_by: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    fake_cpu_s: float | None = None
    pushd_core_busy_s: float = 0.0
    """Busy time of pushd's core over the run, whoever used it."""
    fake_core_busy_s: float | None = None
    """Same for the fake's core (None when it shares pushd's)."""
    latencies: list[float] = field(default_factory=list)
    verdicts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    result_bytes: int = 0
    cancelled: int = 0


class Load:
    """Feeds push frames to a Dispatcher and takes its results, as the Kamailio link would."""

    def __init__(self, concurrency: int, rate: float | None, cores: Cores | None) -> None:
        self.concurrency = concurrency
        self.cores = cores
        self.rate = rate
        self._slots = asyncio.Semaphore(concurrency)
        self._started: dict[Any, float] = {}
        self.stats = RunStats()

    def on_result(self, msg: dict[str, Any]) -> None:
        """The dispatcher's ResultSink: framed for Kamailio as the link does, then counted."""
        now = time.perf_counter()
        self.stats.result_bytes += len(netstring.encode(msg))
        started = self._started.pop(msg.get("id"), None)
        if started is not None:
            self.stats.latencies.append(now - started)
        verdict = str(msg.get("verdict"))
        self.stats.verdicts[verdict] += 1
        if verdict != "delivered":
            self.stats.reasons[str(msg.get("reason"))[:80]] += 1
        self.stats.completed += 1
        self._slots.release()

    async def run(
        self,
        dispatcher: Dispatcher,
        frames: list[bytes],
        seconds: float,
        fake: Fake | None,
    ) -> RunStats:
        """Offer ``frames`` for at most ``seconds``, then wait (bounded) for the answers."""
        decoder = netstring.Decoder()
        fake_cpu0 = fake_cpu_seconds(fake) if fake is not None else None
        busy0 = self._busy()
        cpu0 = cpu_seconds_self()
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(seconds + 1.0):
                self.stats.stopped_by = await self._offer(dispatcher, decoder, frames, t0, seconds)
        except TimeoutError:
            self.stats.stopped_by = "time (producer blocked)"
        if not await dispatcher.drain(DRAIN_SECONDS):
            self.stats.cancelled = dispatcher.in_flight
            await dispatcher.cancel_all()
        self.stats.wall_s = time.perf_counter() - t0
        self.stats.cpu_s = cpu_seconds_self() - cpu0
        busy1 = self._busy()
        self.stats.pushd_core_busy_s = busy1[0] - busy0[0]
        if busy0[1] is not None and busy1[1] is not None:
            self.stats.fake_core_busy_s = busy1[1] - busy0[1]
        fake_cpu1 = fake_cpu_seconds(fake) if fake is not None else None
        if fake_cpu0 is not None and fake_cpu1 is not None:
            self.stats.fake_cpu_s = fake_cpu1 - fake_cpu0
        return self.stats

    def _busy(self) -> tuple[float, float | None]:
        if self.cores is None:
            return 0.0, None
        fake = self.cores.fake
        return (
            core_busy_seconds({self.cores.pushd}),
            core_busy_seconds({fake}) if fake is not None else None,
        )

    async def _offer(
        self,
        dispatcher: Dispatcher,
        decoder: netstring.Decoder,
        frames: list[bytes],
        t0: float,
        seconds: float,
    ) -> str:
        end = t0 + seconds
        n = 0
        while n < len(frames):
            if self.rate is not None:
                due = int((time.perf_counter() - t0) * self.rate) + 1
                if n >= due:
                    await asyncio.sleep(n / self.rate - (time.perf_counter() - t0))
                    if time.perf_counter() >= end:
                        return "time"
                    continue
            await self._slots.acquire()
            now = time.perf_counter()
            if now >= end:
                self._slots.release()
                return "time"
            for msg in decoder.feed(frames[n]):
                self._started[msg["id"]] = now
                dispatcher.submit(msg)
                self.stats.submitted += 1
            n += 1
        return "max-pushes"


# -- one provider --------------------------------------------------------------------------


@dataclass
class PhaseResult:
    """The figures of one provider's measured run (what --json writes)."""

    provider: str
    fake_server: str
    """``python`` (the full fake of testkit) or ``nginx`` (testkit.nginx_apns)."""
    fake_detail: str
    goal_per_s: float
    mode: str
    concurrency: int
    offered_rate: float | None
    seconds_asked: float
    max_pushes: int
    stopped_by: str
    submitted: int
    completed: int
    delivered: int
    verdicts: dict[str, int]
    failure_reasons: dict[str, int]
    cancelled: int
    wall_s: float
    pushes_per_s: float
    goal_ratio: float
    cpu_s: float
    pushd_cpu_share: float
    """CPU seconds per wall second of this process: 1.0 = its core was fully busy."""
    pushes_per_cpu_s: float
    cpu_goal_ratio: float
    fake_cpu_s: float | None
    fake_cpu_share: float | None
    pushd_core_busy_share: float
    """How busy pushd's core was, whoever used it."""
    fake_core_busy_share: float | None
    other_cpu_share: float
    """CPU time on the two cores used by neither pushd nor the fake, per wall second (1.0 =
    a whole core): other processes, kernel softirq work for the loopback traffic, VM
    steal. Well above 0.1: the figures are disturbed."""
    bottleneck: str
    latency_ms: dict[str, float]
    pushd_core: int
    fake_core: int | None
    log_level: str
    log_bytes: int
    quiet_wait_s: float = 0.0
    """How long the run waited for the cores to be idle before it started."""


def _bottleneck(
    pushd_core: float, pushd_share: float, fake_core: float | None, fake_share: float | None
) -> str:
    for who, core, own in (("pushd", pushd_core, pushd_share), ("the fake", fake_core, fake_share)):
        if core is None or own is None or core < SATURATED:
            continue
        if core - own > 0.1:
            return f"{who}'s core, shared: {own:.0%} for {who}, {core - own:.0%} for others"
        return f"{who}'s core (CPU)"
    return "neither core saturated (latency/concurrency bound)"


def phase_result(
    target: Target, stats: RunStats, args: argparse.Namespace, cores: Cores, log_bytes: int
) -> PhaseResult:
    provider = target.name
    delivered = stats.verdicts.get("delivered", 0)
    wall = max(stats.wall_s, 1e-9)
    per_s = delivered / wall
    per_cpu = delivered / stats.cpu_s if stats.cpu_s > 0 else 0.0
    pushd_share = stats.cpu_s / wall
    fake_share = stats.fake_cpu_s / wall if stats.fake_cpu_s is not None else None
    pushd_core = stats.pushd_core_busy_s / wall
    fake_core = stats.fake_core_busy_s / wall if stats.fake_core_busy_s is not None else None
    busy = stats.pushd_core_busy_s + (stats.fake_core_busy_s or 0.0)
    other = (busy - stats.cpu_s - (stats.fake_cpu_s or 0.0)) / wall
    goal = GOALS[provider]
    return PhaseResult(
        provider=provider,
        fake_server=target.fake_server,
        fake_detail=target.fake_detail,
        goal_per_s=goal,
        mode="open loop" if args.rate else "closed loop",
        concurrency=args.concurrency,
        offered_rate=args.rate,
        seconds_asked=args.seconds,
        max_pushes=args.max_pushes,
        stopped_by=stats.stopped_by,
        submitted=stats.submitted,
        completed=stats.completed,
        delivered=delivered,
        verdicts=dict(stats.verdicts),
        failure_reasons=dict(stats.reasons.most_common(5)),
        cancelled=stats.cancelled,
        wall_s=round(stats.wall_s, 3),
        pushes_per_s=round(per_s, 1),
        goal_ratio=round(per_s / goal, 3),
        cpu_s=round(stats.cpu_s, 3),
        pushd_cpu_share=round(pushd_share, 3),
        pushes_per_cpu_s=round(per_cpu, 1),
        cpu_goal_ratio=round(per_cpu / goal, 3),
        fake_cpu_s=round(stats.fake_cpu_s, 3) if stats.fake_cpu_s is not None else None,
        fake_cpu_share=round(fake_share, 3) if fake_share is not None else None,
        pushd_core_busy_share=round(pushd_core, 3),
        fake_core_busy_share=round(fake_core, 3) if fake_core is not None else None,
        other_cpu_share=round(max(other, 0.0), 3),
        bottleneck=_bottleneck(pushd_core, pushd_share, fake_core, fake_share),
        latency_ms=summarize_ms(stats.latencies),
        pushd_core=cores.pushd,
        fake_core=cores.fake,
        log_level=args.log_level,
        log_bytes=log_bytes,
    )


@dataclass
class Target:
    """How to start one provider's fake, build the provider, and make its push messages."""

    name: str
    fake_server: str
    """``python`` or ``nginx``."""
    fake_detail: str
    start_fake: Callable[[int | None], Fake]
    """Starts the fake pinned to that core (None: shares pushd's), once it is ready."""
    make_provider: Callable[[int], Provider]
    make_frames: Callable[[int, float], list[bytes]]


def python_fake(name: str, argv: list[str], work: Path) -> Callable[[int | None], Fake]:
    """``python -m <module> ...`` that prints ``READY <port>``."""
    return lambda core: FakeServer(name, argv, core, work / f"fake-{name}.log").start()


def nginx_fake(pki: TestPki, work: Path) -> Callable[[int | None], Fake]:
    """nginx answering 200 to every push (testkit.nginx_apns); its logs in work/nginx-apns."""
    return lambda core: NginxApns(
        pki, work / "nginx-apns", cpus={core} if core is not None else None
    ).start()


def apns_target(work: Path, max_connections: int, fake: str = "python") -> Target:
    pki = make_test_pki(work / "pki", bundle=BUNDLE)

    def provider(port: int) -> Provider:
        return ApnsProvider(
            client_settings(
                pki, port, host="127.0.0.1", max_connections=max_connections, timeout=10.0
            )
        )

    if fake == "nginx":
        version = nginx_version(nginx_binary())  # fails early if missing or without HTTP/2
        detail = f"{version} via testkit.nginx_apns: 200 to every push, checks nothing"
        start_fake = nginx_fake(pki, work)
    else:
        argv = ["-m", "testkit.fake_apns", "--pki-dir", str(pki.directory), "--port", "0"]
        argv += ["--bundle", pki.bundle, "--team", pki.team_id, "--key-id", pki.key_id]
        detail = "testkit.fake_apns: checks JWT, headers and payload like Apple"
        start_fake = python_fake("apns", argv, work)
    return Target(
        name="apns",
        fake_server=fake,
        fake_detail=detail,
        start_fake=start_fake,
        make_provider=provider,
        make_frames=lambda count, deadline: apns_frames(count, deadline, pki),
    )


def fcm_target(work: Path, max_workers: int) -> Target:
    account = work / "fcm-service-account.json"  # written by the fake, token_uri -> it

    def provider(port: int) -> Provider:
        return FcmProvider(
            FcmSettings(
                service_account_file=account,
                base_url=f"http://127.0.0.1:{port}",
                max_workers=max_workers,
            )
        )

    argv = ["-m", "testkit.fake_fcm", "--port", "0", "--service-account", str(account)]
    return Target(
        name="fcm",
        fake_server="python",
        fake_detail="testkit.fake_fcm",
        start_fake=python_fake("fcm", argv, work),
        make_provider=provider,
        make_frames=fcm_frames,
    )


class _ThreadProfiles:
    """cProfile for FCM's worker threads: one profiler per thread, on only inside a send,
    timed by the thread's CPU clock."""

    def __init__(self) -> None:
        self.profilers: list[cProfile.Profile] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(
        self, send: Callable[[PushRequest], PushResult]
    ) -> Callable[[PushRequest], PushResult]:
        def profiled(request: PushRequest) -> PushResult:
            profiler: cProfile.Profile | None = getattr(self._local, "profiler", None)
            if profiler is None:
                profiler = self._local.profiler = cProfile.Profile(time.thread_time)
                with self._lock:
                    self.profilers.append(profiler)
            profiler.enable()
            try:
                return send(request)
            finally:
                profiler.disable()

        return profiled


async def run_provider(
    target: Target,
    args: argparse.Namespace,
    cores: Cores,
    work: Path,
    log_path: Path,
    out: TextIO,
) -> PhaseResult:
    fake = target.start_fake(cores.fake)
    provider: Provider | None = None
    capped = cpu_quota(args.cpu_quota) if args.cpu_quota else contextlib.nullcontext()
    try:
        with capped:
            provider = target.make_provider(fake.port)
            providers = {ProviderName(target.name): provider}
            deadline = time.time() + args.seconds + WARMUP_SECONDS + DRAIN_SECONDS + 60.0
            warm_n = max(WARMUP_PUSHES, 2 * args.concurrency)
            frames = target.make_frames(warm_n + args.max_pushes, deadline)
            # Warm-up: connections, JWT / OAuth token, worker threads. Not measured.
            warm = Load(args.concurrency, None, None)
            await warm.run(
                Dispatcher(providers, warm.on_result, max_in_flight=max(1000, args.concurrency)),
                frames[:warm_n],
                WARMUP_SECONDS,
                None,
            )
            if warm.stats.verdicts.get("delivered", 0) == 0:
                raise RuntimeError(
                    f"{target.name}: no push delivered during warm-up: {dict(warm.stats.reasons)}"
                )
            log_before = log_path.stat().st_size
            load = Load(args.concurrency, args.rate, cores)
            dispatcher = Dispatcher(
                providers, load.on_result, max_in_flight=max(1000, args.concurrency)
            )
            stats = await load.run(dispatcher, frames[warm_n:], args.seconds, fake)
            result = phase_result(target, stats, args, cores, log_path.stat().st_size - log_before)
            if args.profile is not None:
                profile_frames = target.make_frames(args.max_pushes, deadline)
                await profile_run(target.name, providers, profile_frames, args, out)
            return result
    finally:
        if provider is not None:
            await provider.close()
        fake.stop()


async def profile_run(
    name: str,
    providers: dict[ProviderName, Provider],
    frames: list[bytes],
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    """One cProfile'd load run; writes DIR/<name>.prof and DIR/<name>.txt, prints the top."""
    directory: Path = args.profile
    directory.mkdir(parents=True, exist_ok=True)
    threads = _ThreadProfiles()
    provider = providers[ProviderName(name)]
    if isinstance(provider, FcmProvider):
        # The sends run in worker threads that cProfile on the loop thread cannot see.
        provider._send_blocking = threads.wrap(provider._send_blocking)  # type: ignore[method-assign,assignment]
    load = Load(args.concurrency, args.rate, None)
    dispatcher = Dispatcher(providers, load.on_result, max_in_flight=max(1000, args.concurrency))
    # APNs: one CPU-bound thread, and the cheap wall clock attributes its time well (idle
    # waits show up as select/epoll). FCM: threads contend for the GIL, and with a wall
    # clock every wait for it (or the network) would look like work: CPU clock (slower,
    # so the profiled run does fewer pushes; the shares are what counts).
    clock = "CPU" if isinstance(provider, FcmProvider) else "wall"
    profiler = cProfile.Profile(time.thread_time) if clock == "CPU" else cProfile.Profile()
    profiler.enable()
    try:
        stats = await load.run(dispatcher, frames, min(args.seconds, PROFILE_SECONDS), None)
    finally:
        profiler.disable()
        if isinstance(provider, FcmProvider):
            del provider._send_blocking  # back to the class's method
    combined = pstats.Stats(profiler)
    for thread_profiler in threads.profilers:
        combined.add(thread_profiler)
    combined.dump_stats(str(directory / f"{name}.prof"))
    delivered = stats.verdicts.get("delivered", 0)
    header = (
        f"{name}: profiled run, {delivered} pushes delivered in {stats.wall_s:.2f} s wall, "
        f"{stats.cpu_s:.2f} s CPU, {clock} clock ({len(threads.profilers)} worker-thread "
        "profiles merged; cProfile's own overhead included)\n"
    )
    groups = by_package(combined)
    total = sum(seconds for _, seconds in groups) or 1.0
    summary = "own time by package or module (tottime):\n" + "".join(
        f"  {seconds:7.3f} s {seconds / total:6.1%}  {group}\n" for group, seconds in groups[:15]
    )
    text = io.StringIO()
    text.write(header + "\n" + summary)
    combined.stream = text  # type: ignore[attr-defined]
    for key in ("tottime", "cumulative"):
        text.write(f"\n--- sorted by {key} ---\n")
        combined.sort_stats(key).print_stats(40)
    (directory / f"{name}.txt").write_text(text.getvalue())
    brief = io.StringIO()
    combined.stream = brief  # type: ignore[attr-defined]
    combined.sort_stats("tottime").print_stats(12)
    body = brief.getvalue()
    start = body.find("   ncalls")
    top = body[start:].rstrip() if start >= 0 else body
    print(f"\n{header}{summary}{top}", file=out)
    print(f"full profile: {directory / (name + '.txt')} and {name}.prof", file=out)


def by_package(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own time (tottime) summed per third-party package, stdlib module or repo file."""
    totals: dict[str, float] = {}
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, tottime, *_rest) in entries.items():
        group = _group(filename, function)
        totals[group] = totals.get(group, 0.0) + float(tottime)
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)


def _group(filename: str, function: str) -> str:
    if filename == "~":  # a C function: "{method 'send' of '_socket.socket' objects}"
        owner = function.split(" of '", 1)[1].split("'", 1)[0] if " of '" in function else ""
        return f"C: {owner.split('.')[0] or function.strip('<>{}').split('.')[0]}"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    path = Path(filename)
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    stdlib = Path(os.__file__).parent
    if path.is_relative_to(stdlib):
        return "stdlib: " + path.relative_to(stdlib).parts[0]
    return filename


# -- output --------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[PhaseResult], out: TextIO) -> None:
    cols = (
        ("provider", 8),
        ("server", 6),
        ("pushes", 8),
        ("push/s", 8),
        ("goal", 6),
        ("ratio", 6),
        ("push/cpu-s", 10),
        ("ratio", 6),
        ("pushd", 6),
        ("fake", 6),
        ("other", 6),
        ("p50ms", 7),
        ("p90ms", 7),
        ("p99ms", 7),
        ("maxms", 7),
    )
    print("  ".join(f"{name:>{width}}" for name, width in cols), file=out)
    for r in results:
        lat = r.latency_ms
        row = (
            r.provider,
            r.fake_server,
            str(r.delivered),
            _fmt(r.pushes_per_s),
            _fmt(r.goal_per_s),
            _fmt(r.goal_ratio, ".2f"),
            _fmt(r.pushes_per_cpu_s),
            _fmt(r.cpu_goal_ratio, ".2f"),
            _fmt(r.pushd_cpu_share * 100, ".0f") + "%",
            (_fmt(r.fake_cpu_share * 100, ".0f") + "%") if r.fake_cpu_share is not None else "-",
            _fmt(r.other_cpu_share, ".2f"),
            _fmt(lat["p50"], ".1f"),
            _fmt(lat["p90"], ".1f"),
            _fmt(lat["p99"], ".1f"),
            _fmt(lat["max"], ".1f"),
        )
        print("  ".join(f"{v:>{w}}" for v, (_, w) in zip(row, cols, strict=True)), file=out)
    print(
        "ratio = push/s / goal; second ratio = push/cpu-s / goal (one core to itself); "
        "server = the fake server; pushd/fake = CPU share of their core; "
        "other = CPU on those cores used by neither (in cores)",
        file=out,
    )
    for r in results:
        verdict = "MET" if r.goal_ratio >= 1.0 else "MISSED"
        extra = ""
        if r.delivered != r.completed or r.cancelled:
            extra = f"; not delivered: {r.completed - r.delivered} {r.failure_reasons}"
        if r.other_cpu_share > DISTURBED:
            extra += (
                f"; WARNING: {r.other_cpu_share:.2f} cores went to something else "
                "(another process?): figures disturbed, run again on a quiet machine"
            )
        print(
            f"{r.provider}: goal {r.goal_per_s:.0f}/s {verdict} "
            f"({r.goal_ratio:.2f}x achieved, {r.cpu_goal_ratio:.2f}x per CPU-second); "
            f"limit: {r.bottleneck}; stopped by {r.stopped_by} after {r.wall_s:.1f} s"
            f"{extra}",
            file=out,
        )


# -- main ----------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_SECONDS:g}]")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_PUSHES:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_PUSHES}]")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be in (0, 1000000]")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.01 <= value <= 1:
        raise argparse.ArgumentTypeError("must be in [0.01, 1]")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.push_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=_positive_float, default=DEFAULT_SECONDS, help="per provider")
    p.add_argument("--max-pushes", type=_count, default=DEFAULT_MAX_PUSHES, help="cap per provider")
    p.add_argument("--concurrency", type=_count, default=DEFAULT_CONCURRENCY, help="in flight")
    p.add_argument("--provider", choices=("apns", "fcm", "both"), default="both")
    p.add_argument(
        "--apns-fake",
        choices=("python", "nginx"),
        default="python",
        help="python (default): the full fake, checks JWT and headers, but its own CPU cost "
        "(0.2-0.4 ms per push) caps the run at 3,000-4,500/s; nginx: answers 200 to every "
        "push and checks nothing, for pushd's throughput ceiling",
    )
    p.add_argument("--rate", type=_rate, default=None, help="open loop: offer N pushes/s")
    p.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="pushd's log.level (default info, as pushd's own default)",
    )
    p.add_argument(
        "--apns-connections",
        type=int,
        choices=range(1, 101),
        default=ApnsSettings.max_connections,
        metavar="N",
        help="pushd's apns.max_connections (default %(default)s)",
    )
    p.add_argument(
        "--fcm-workers",
        type=int,
        choices=range(1, 257),
        default=FcmSettings.max_workers,
        metavar="N",
        help="pushd's fcm.max_workers (default %(default)s)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the figures")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR", help="cProfile run")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=DEFAULT_QUIET_WAIT,
        metavar="S",
        help="wait up to S s for idle cores before each provider (0: start at once)",
    )
    p.add_argument(
        "--cpu-quota",
        type=_share,
        default=None,
        metavar="F",
        help="cap pushd (this process, not the fake) at F of one core (cgroup v1 cpu quota, "
        "root): bench.pushd_scaling runs several at once",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, PKI)")
    return p.parse_args(argv)


async def run_all(
    args: argparse.Namespace, cores: Cores, work: Path, log_path: Path, out: TextIO
) -> list[PhaseResult]:
    names = ("apns", "fcm") if args.provider == "both" else (args.provider,)
    results = []
    for name in names:
        target = (
            apns_target(work, args.apns_connections, args.apns_fake)
            if name == "apns"
            else fcm_target(work, args.fcm_workers)
        )
        print(
            f"{name}: fake server {target.fake_server} ({target.fake_detail}); warming up, "
            f"then {args.seconds:g} s of load ...",
            file=out,
            flush=True,
        )
        waited = wait_for_quiet(cores.both(), args.quiet_wait, out) if args.quiet_wait > 0 else 0.0
        result = await run_provider(target, args, cores, work, log_path, out)
        result.quiet_wait_s = round(waited, 1)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stdout
    cores = pick_cores()
    # Before any thread exists, so every thread of "pushd" (FCM workers too) inherits it.
    os.sched_setaffinity(0, {cores.pushd})
    work = Path(tempfile.mkdtemp(prefix="pushgate-bench-"))
    log_path = work / "pushd.log"
    log_file = log_path.open("a", encoding="utf-8")
    logs.setup(args.log_level, "text", secrets=[LOG_SECRET], stream=log_file)
    print(
        f"pushd (this process, pid {os.getpid()}) on core {cores.pushd}; fake server on core "
        f"{cores.fake if cores.fake is not None else str(cores.pushd) + ' (shared!)'}; "
        f"{'rate ' + format(args.rate, 'g') + '/s, ' if args.rate else ''}"
        f"concurrency {args.concurrency}; apns.max_connections {args.apns_connections}, "
        f"fcm.max_workers {args.fcm_workers}; log level {args.log_level} -> {log_path}",
        file=out,
        flush=True,
    )
    try:
        # The same event loop pushd runs on (uvloop when installed).
        results = run_loop(run_all(args, cores, work, log_path, out))
    finally:
        logging.getLogger().handlers.clear()
        log_file.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(file=out)
    print_table(results, out)
    if args.json is not None:
        doc = {
            "benchmark": "push_throughput",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": {
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "python": platform.python_version(),
                "pushd_core": cores.pushd,
                "fake_core": cores.fake,
            },
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "goals_per_s": GOALS,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json}", file=out)
    return 0 if all(r.delivered > 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
