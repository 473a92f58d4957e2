"""Helpers the Kamailio-side benchmarks share (register_cost, held_scale, held_capacity,
mass_register, soak): phone populations as SIPp injection files, bounded SIPp load runs,
CPU time of a process tree, Kamailio's memory figures, and clean stops on signals.
"""

from __future__ import annotations

import asyncio
import csv
import datetime
import hashlib
import os
import platform
import re
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psycopg2
import psycopg2.extras

from testkit.fake_apns import PushRecord
from testkit.fake_fcm import FcmRecord
from testkit.kamailio import Kamailio
from testkit.postgres import PostgresCluster
from testkit.procs import free_port, free_udp_block, stop
from testkit.stack import DOMAIN, TEAM_PARAM_PREFIX, Stack

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
SCENARIOS = BENCH / "scenarios"
CONFIGS = BENCH / "configs"
SIPP = "/usr/bin/sipp"
APNS_PARAM = f"{TEAM_PARAM_PREFIX}.com.example.app.voip"
PASSWORD = "secret1"


# ----- phones -----
@dataclass(frozen=True)
class BenchPhone:
    user: str
    token: str
    instance: str
    password: str = PASSWORD

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{DOMAIN}"


def phones(prefix: str, count: int, start: int = 0) -> list[BenchPhone]:
    """``count`` iPhones ``<prefix><n>``: APNs token (64 hex digits) and instance per user."""
    out = []
    for n in range(start, start + count):
        user = f"{prefix}{n:05d}"
        token = hashlib.sha256(user.encode()).hexdigest()
        digest = hashlib.md5(user.encode()).hexdigest()
        instance = f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"
        out.append(BenchPhone(user=user, token=token, instance=instance))
    return out


def write_injection(
    path: Path, population: Sequence[BenchPhone], order: str = "SEQUENTIAL"
) -> Path:
    """SIPp ``-inf`` file: field0 user, field1 token, field2 instance, field3 password."""
    with path.open("w", newline="") as out:
        out.write(order + "\n")
        writer = csv.writer(out, delimiter=";", lineterminator="\n")
        for p in population:
            writer.writerow([p.user, p.token, p.instance, p.password])
    return path


def write_callees(path: Path, users: Sequence[str]) -> Path:
    """SIPp ``-inf`` file of callees (field0)."""
    path.write_text("SEQUENTIAL\n" + "".join(f"{u};\n" for u in users))
    return path


def add_subscribers(pg: PostgresCluster, population: Sequence[BenchPhone]) -> None:
    """One INSERT for every phone's subscriber row (ha1 as kamailio.cfg expects)."""
    rows = [
        (
            p.user,
            DOMAIN,
            p.password,
            hashlib.md5(f"{p.user}:{DOMAIN}:{p.password}".encode()).hexdigest(),
            "",
        )
        for p in population
    ]
    with psycopg2.connect(pg.dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES %s",
            rows,
            page_size=len(rows) or 1,
        )


# ----- SIPp load -----
@dataclass
class SippLoad:
    name: str
    calls: int
    rc: int
    seconds: float
    successful: int
    failed: int
    retransmissions: int
    stat_file: Path
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.failed == 0 and self.successful == self.calls


def sipp_argv(
    scenario: str,
    *,
    target_port: int,
    workdir: Path,
    name: str,
    calls: int,
    rate: float,
    inf: Path | None = None,
    transport: str = "t1",
    keys: dict[str, str] | None = None,
    limit: int | None = None,
    local_port: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    # SIPp's -r is per -rp milliseconds: a fractional rate as calls per 10 s.
    rate_arg, period = (
        (str(int(rate)), "1000")
        if rate >= 1 and rate == int(rate)
        else (
            str(max(1, round(rate * 10))),
            "10000",
        )
    )
    argv = [
        SIPP,
        f"127.0.0.1:{target_port}",
        "-sf",
        str(SCENARIOS / f"{scenario}.xml"),
        "-t",
        transport,
        "-i",
        "127.0.0.1",
        "-p",
        str(local_port or free_port()),
        "-mp",
        str(free_udp_block()),
        "-m",
        str(calls),
        "-r",
        rate_arg,
        "-rp",
        period,
        "-l",
        str(limit or max(calls, 1)),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(workdir / f"{name}.stat.csv"),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(workdir / f"{name}.err"),
        "-max_recv_loops",
        "1000",
        "-max_sched_loops",
        "1000",
        "-key",
        "domain",
        DOMAIN,
        "-key",
        "param",
        APNS_PARAM,
        "-key",
        "expires",
        "3600",
    ]
    if inf is not None:
        argv += ["-inf", str(inf)]
    if transport == "tn":
        # SIPp refuses to start when its socket cap (default 50,000) exceeds the fd limit.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        argv += ["-max_socket", str(max(100, min(soft - 200, 60_000)))]
    for k, v in (keys or {}).items():
        argv += ["-key", k, v]
    return [*argv, *extra]


def start_sipp(argv: list[str], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    out = (workdir / f"{name}.out").open("wb")
    return subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=workdir,  # where -trace_rtt writes <scenario>_<pid>_rtt.csv
    )


def sipp_rtts_ms(workdir: Path, scenario: str) -> list[float]:
    """Response times (ms) of every call from SIPp's ``-trace_rtt -rtt_freq 1`` files."""
    out: list[float] = []
    for f in workdir.glob(f"{scenario}_*_rtt.csv"):
        for line in f.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                try:
                    out.append(float(parts[1]))
                except ValueError:
                    continue
    return out


def sipp_stats(stat_file: Path) -> dict[str, str]:
    """The last row of SIPp's ``-trace_stat`` file (cumulative counters: ``(C)`` columns)."""
    if not stat_file.exists():
        return {}
    lines = [ln for ln in stat_file.read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    head = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    return dict(zip(head, last, strict=False))


def _int(stats: dict[str, str], key: str) -> int:
    try:
        return int(stats.get(key, "0") or 0)
    except ValueError:
        return 0


def finish_sipp(
    proc: subprocess.Popen[bytes],
    argv: list[str],
    name: str,
    calls: int,
    started: float,
    timeout: float,
) -> SippLoad:
    timed_out = False
    try:
        rc = proc.wait(max(0.1, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        timed_out = True
        stop(proc)
        rc = -1
    seconds = time.monotonic() - started
    stat_file = Path(argv[argv.index("-stf") + 1])
    stats = sipp_stats(stat_file)
    return SippLoad(
        name=name,
        calls=calls,
        rc=rc,
        seconds=seconds,
        successful=_int(stats, "SuccessfulCall(C)"),
        failed=_int(stats, "FailedCall(C)"),
        retransmissions=_int(stats, "Retransmissions(C)"),
        stat_file=stat_file,
        timed_out=timed_out,
    )


def run_sipp(argv: list[str], workdir: Path, name: str, calls: int, timeout: float) -> SippLoad:
    """Run SIPp to its end (``-m`` calls), at most ``timeout`` s; its statistics."""
    started = time.monotonic()
    proc = start_sipp(argv, workdir, name)
    try:
        return finish_sipp(proc, argv, name, calls, started, timeout)
    finally:
        stop(proc)


# ----- CPU time of Kamailio (or any process tree) -----
def process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_ns(pids: Sequence[int]) -> int:
    """CPU time (ns, the scheduler's exact sum) of all threads of ``pids``."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pids_named(name: str) -> list[int]:
    """Processes whose command is ``name`` (e.g. the PostgreSQL cluster's ``postgres``)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    out.append(int(entry))
            except OSError:
                continue
    return out


# ----- Kamailio memory -----
_NUM = re.compile(r"^\s*([a-z_]+):\s*(\d+)\s*$", re.M)


def shm_stats(kam: Kamailio) -> dict[str, int]:
    """``kamcmd core.shmmem``: total, free, used, real_used, max_used, fragments (bytes)."""
    return {k: int(v) for k, v in _NUM.findall(kam.kamcmd("core.shmmem"))}


def pkg_stats(kam: Kamailio) -> dict[str, int]:
    """``kamcmd pkg.stats``: the largest ``real_used`` and its sum over processes (bytes)."""
    text = kam.kamcmd("pkg.stats")
    used = [int(v) for v in re.findall(r"real_used:\s*(\d+)", text)]
    return {"processes": len(used), "real_used_max": max(used or [0]), "real_used_sum": sum(used)}


# ----- runs -----
def machine() -> dict[str, object]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
        "kamailio": subprocess.run(
            ["/usr/sbin/kamailio", "-v"], capture_output=True, text=True
        ).stdout.splitlines()[0],
    }


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM / SIGINT / SIGHUP unwind through the caller's ``finally`` blocks."""
    old = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def fmt_ms(d: dict[str, float]) -> str:
    return " ".join(f"{k} {d[k]:.2f}" for k in ("p50", "p90", "p99", "max") if k in d) + " ms"


# ----- the stack, with the fake providers' pushes handed to the benchmark -----
class BenchStack(Stack):
    """testkit's Stack; every push the fakes answer also goes to ``push_hook`` (with the
    ``time.perf_counter()`` of its arrival), from the fake's thread."""

    push_hook: Callable[[PushRecord | FcmRecord, float], None] | None = None

    def _record(self, record: PushRecord | FcmRecord) -> None:
        now = time.perf_counter()
        hook = self.push_hook
        if hook is not None and record.token is not None:
            hook(record, now)
        super()._record(record)


def htable_items(kam: Kamailio, table: str) -> int:
    """Entries of one of Kamailio's htables now (``kamcmd htable.stats``)."""
    text = kam.kamcmd("htable.stats")
    block = text.split(f"name: {table}", 1)
    if len(block) < 2:
        return -1
    m = re.search(r"\ball:\s*(\d+)", block[1])
    return int(m.group(1)) if m else -1


def fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory when installed (pushd depends on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]
