"""Mass re-registration: 10,000 phones re-registering within a minute (PostgreSQL usrloc).

    python -m bench.mass_register [--phones 10000] [--seconds 60] [--burst-rate 1000]
        [--json FILE]

The all-in-one as it ships: kamailio.cfg with usrloc db_mode 1 (write-through to
PostgreSQL), digest authentication (REG_AUTH 1, auth_db reading the subscriber table),
on a throwaway PostgreSQL 15 cluster on loopback. ``--phones`` subscribers are added in
one INSERT. Each phone registers like ours do: a TCP connection of its own, REGISTER,
401, REGISTER with credentials, 200, connection closed (RFC 5626 + RFC 8599 Contact;
bench/simsip.py, asyncio in this process: SIPp 3.6 cannot take per-call credentials
from an injection file). Three passes:

``initial``   every phone's first REGISTER since Kamailio started (new bindings: INSERTs;
              msilo's one look per AoR), at ``--phones / --seconds`` per second
``refresh``   all of them again within ``--seconds`` (the figure asked for: 10,000 in a
              minute), bindings updated
``burst``     all of them again at ``--burst-rate`` per second: how fast it can go

Per pass: completion time, failed registrations (must be 0), each phone's registration
time (connect -> 200, both round trips) p50/p99, the ``location`` table's written rows
per second (PostgreSQL's ``pg_stat_user_tables``: inserts + updates + deletes, read
after the statistics are flushed) and transactions, and the CPU of Kamailio and of PostgreSQL.

Bounded: three passes of at most ``--phones`` (<= 20,000) REGISTERs, each with a time
limit. Everything started is stopped in ``finally``, also on SIGTERM/SIGINT.
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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import core_busy_seconds, summarize_ms
from bench import harness as h
from bench.simsip import Phone, WakeResult
from testkit.certs import make_test_pki
from testkit.postgres import PostgresCluster, start_cluster
from testkit.stack import world_readable_tempdir

MAX_PHONES = 20_000
STATS_FLUSH_WAIT = 11.0
"""PostgreSQL backends flush their table statistics at the latest 10 s after going idle."""


@dataclass
class Pass:
    name: str
    phones: int
    offered_rate: float
    seconds: float = 0.0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    register_ms: dict[str, float] = field(default_factory=dict)
    location_writes: int = 0
    location_writes_per_s: float = 0.0
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    db_transactions: int = 0
    kamailio_cpu_s: float = 0.0
    kamailio_us_per_register: float = 0.0
    postgres_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    """This process: the phones (asyncio, digest)."""
    other_cores: float = 0.0


def table_stats(pg: PostgresCluster) -> tuple[int, int, int, int]:
    rows = pg.query(
        "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = 'location'"
    )
    xact = pg.query("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    ins, upd, dele = rows[0] if rows else (0, 0, 0)
    return int(ins), int(upd), int(dele), int(xact[0][0]) if xact else 0


async def register_all(phones: list[Phone], rate: float, limit: float) -> list[WakeResult | str]:
    """Each phone registers once (its own connection), started ``rate`` per second."""
    results: list[WakeResult | str] = []
    started = time.monotonic()

    async def one(phone: Phone) -> None:
        try:
            results.append(await phone.register(timeout=30))
        except (OSError, TimeoutError, RuntimeError, ConnectionError, ValueError) as exc:
            results.append(f"{type(exc).__name__}: {exc}")

    tasks = []
    for i, phone in enumerate(phones):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() - started > limit:
            break
        tasks.append(asyncio.ensure_future(one(phone)))
    if tasks:
        await asyncio.wait(tasks, timeout=max(1.0, limit - (time.monotonic() - started)))
    return results


def one_pass(
    name: str,
    stack: h.BenchStack,
    pg: PostgresCluster,
    phones: list[Phone],
    rate: float,
) -> Pass:
    n = len(phones)
    out = Pass(name=name, phones=n, offered_rate=rate)
    kam_pids = h.process_tree(stack.kamailio.pid or 0)
    pg_pids = h.process_tree(pg._proc.pid) if pg._proc else []
    cores = os.sched_getaffinity(0)
    stats0 = table_stats(pg)
    busy0, kam0, pg0 = core_busy_seconds(cores), h.cpu_ns(kam_pids), h.cpu_ns(pg_pids)
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    with asyncio.Runner(loop_factory=h.fast_loop()) as runner:
        results = runner.run(register_all(phones, rate, n / rate + 120))
    seconds = time.monotonic() - t0
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    pg_pids = h.process_tree(pg._proc.pid) if pg._proc else pg_pids
    kam = (h.cpu_ns(kam_pids) - kam0) / 1e9
    pgc = (h.cpu_ns(pg_pids) - pg0) / 1e9
    busy = core_busy_seconds(cores) - busy0
    me = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
    done = [r for r in results if isinstance(r, WakeResult)]
    errors = Counter(r.split(":")[0] for r in results if isinstance(r, str))
    out.seconds = round(seconds, 2)
    out.ok = len(done)
    out.failed = n - len(done)
    out.errors = dict(errors)
    out.register_ms = summarize_ms([r.registered - r.register_sent for r in done])
    out.kamailio_cpu_s = round(kam, 3)
    out.kamailio_us_per_register = round(kam * 1e6 / max(out.ok, 1), 1)
    out.postgres_cpu_s = round(pgc, 3)
    out.client_cpu_s = round(me, 3)
    out.other_cores = round(max(busy - kam - pgc - me, 0.0) / max(seconds, 1e-9), 3)
    time.sleep(STATS_FLUSH_WAIT)
    ins, upd, dele, xact = (b - a for a, b in zip(stats0, table_stats(pg), strict=True))
    out.inserts, out.updates, out.deletes, out.db_transactions = ins, upd, dele, xact
    out.location_writes = ins + upd + dele
    out.location_writes_per_s = round(out.location_writes / max(seconds, 1e-9), 1)
    return out


def report(p: Pass) -> None:
    r = p.register_ms
    print(
        f"  {p.name:<8} {p.ok}/{p.phones} registered in {p.seconds:6.1f} s"
        f" (offered {p.offered_rate:.0f}/s), {p.failed} failed {p.errors or ''}\n"
        f"           registration time p50 {r.get('p50', 0):.1f} p99 {r.get('p99', 0):.1f}"
        f" max {r.get('max', 0):.1f} ms; location rows written {p.location_writes}"
        f" ({p.inserts} ins, {p.updates} upd, {p.deletes} del) = {p.location_writes_per_s}/s,"
        f" {p.db_transactions} DB transactions\n"
        f"           CPU: Kamailio {p.kamailio_cpu_s} s ({p.kamailio_us_per_register} us per"
        f" phone), PostgreSQL {p.postgres_cpu_s} s, phones {p.client_cpu_s} s;"
        f" other {p.other_cores:.2f} cores",
        flush=True,
    )


def run(args: argparse.Namespace, root: Path, passes: list[Pass]) -> None:
    pg = start_cluster(root / "pg")
    stack = h.BenchStack(root / "stack", pg, make_test_pki(root / "pki"))
    try:
        stack.start(pushd=False)
        population = h.phones("mass", args.phones)
        h.add_subscribers(pg, population)
        port = stack.kamailio.sip_port
        phones = [Phone(p.user, p.token, p.instance, port, password=p.password) for p in population]
        rate = args.phones / args.seconds
        for name, r in (("initial", rate), ("refresh", rate), ("burst", args.burst_rate)):
            p = one_pass(name, stack, pg, phones, r)
            passes.append(p)
            report(p)
        rows = pg.query("SELECT count(*) FROM location")
        print(f"  location table: {rows[0][0]} rows (one per phone expected)", flush=True)
    finally:
        stack.stop()
        pg.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.mass_register",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--phones", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=60.0, help="refresh all phones within S s")
    p.add_argument("--burst-rate", type=float, default=1000.0)
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.phones <= MAX_PHONES:
        p.error(f"--phones in [1, {MAX_PHONES}]")
    if not 1 <= args.seconds <= 600 or not 1 <= args.burst_rate <= 5000:
        p.error("--seconds in [1, 600], --burst-rate in [1, 5000]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = world_readable_tempdir("pushgate-bench-mass-")
    passes: list[Pass] = []
    try:
        with h.stop_on_signals():
            run(args, root, passes)
    finally:
        if args.keep:
            print(f"work dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json is not None:
        doc = {
            "benchmark": "mass_register",
            "host": h.machine(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "passes": [asdict(p) for p in passes],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0 if len(passes) == 3 and all(p.failed == 0 for p in passes) else 1


if __name__ == "__main__":
    sys.exit(main())
