"""CPU per REGISTER: Pushgate's all-in-one path against a minimal registrar, native and KEMI.

    python -m bench.register_cost [--registers 4000] [--rate 400] [--rounds 5]
        [--variants native,kemi,ours] [--usrloc memory|db] [--profile DIR] [--json FILE]

Every variant is a real Kamailio 5.6 on loopback, all started side by side (own ports,
one throwaway PostgreSQL), each answering the same REGISTER: an RFC 5626 phone with
RFC 8599 pn params, ``+sip.instance`` and ``reg-id`` (bench/scenarios/register_inf.xml),
over one TCP connection (SIPp ``-t t1``), no authentication:

``native``      bench/configs/register_min.cfg: ``save("location")`` and nothing else
``kemi``        the same cfg with ``cfgengine "python"``: bench/configs/register_min.py
``ours``        kamailio.cfg (our KEMI routing, kemi/pushgate_kemi.py) with REG_AUTH 0

A variant is a base with ``/``-separated modifiers, e.g. ``ours/tlsf``:

``/qm`` ``/fm`` ``/tlsf``  Kamailio's memory manager (``-x``); none: the default (qm)
``/m256``                  shared memory in MB (``-m``; default 64)
``/nolog``                 ours with LOG_LEVEL 1: its timeline lines (INFO) not written
``/stub=a+b``              ours with steps replaced by no-ops (bench/configs/variant_kemi.py:
                           ``register``, ``registered``, ``reqinit``, ``log``): the cost of
                           each step by difference
``/rev=REV``               ours from commit REV (``git archive``): A/B of two commits

Each variant first registers its own ``--registers`` phones twice (warm-up: new bindings,
Python imports and caches, msilo's first look per AoR), first over a TCP connection per
REGISTER so that every TCP worker is warm (a worker's first requests cost up to half as
much again: lazy imports, caches), then over one connection; then Kamailio's idle CPU is
measured for a few seconds. A measured run is SIPp sending ``--registers`` refreshes of
those bindings at ``--rate`` per second; the CPU of every Kamailio process (all threads,
the scheduler's exact nanoseconds from /proc/<pid>/task/*/schedstat) before and after,
minus its idle CPU over the run, divided by the REGISTERs answered 200. Runs alternate
between the variants (the order rotates each round), ``--rounds`` times, so the ratios
come from runs minutes apart at most. Each run also reports how busy the machine's cores
were with work other than Kamailio, SIPp and PostgreSQL ("other").

``--profile DIR``: afterwards one more run of ``ours`` with every request route under
cProfile (bench/configs/variant_kemi.py); the profiles are merged and the top entries
printed (DIR/ours.prof, DIR/ours.txt).

Bounded: at most ``--rounds`` x variants runs of ``--registers`` REGISTERs, each stopped
after a time limit; everything started is stopped in ``finally``, also on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import core_busy_seconds, wait_for_quiet
from bench import harness as h
from testkit.kamailio import Kamailio
from testkit.postgres import PostgresCluster, start_cluster
from testkit.stack import world_readable_tempdir

BASES = ("native", "kemi", "ours")
MANAGERS = ("qm", "fm", "tlsf")
MAX_REGISTERS = 50_000
MAX_ROUNDS = 20
IDLE_SECONDS = 5.0


@dataclass
class Variant:
    name: str
    kam: Kamailio
    phones: list[h.BenchPhone]
    inf: Path
    pids: list[int] = field(default_factory=list)
    idle_ns_per_s: float = 0.0


@dataclass
class Run:
    variant: str
    round: int
    registers: int
    ok: int
    failed: int
    seconds: float
    kamailio_cpu_s: float
    us_per_register: float
    postgres_us_per_register: float
    sipp_cpu_s: float
    other_cores: float
    """Mean busy cores of the machine during the run not explained by Kamailio, SIPp or
    PostgreSQL (neighbours, the kernel's own work, this script)."""


def make_kamailio(name: str, root: Path, pg: PostgresCluster, db: bool) -> Kamailio:
    """A Kamailio for variant ``name``: ``<base>[/<modifier>...]`` (see the module doc)."""
    base, *mods = name.split("/")
    work = root / slug(name)
    work.mkdir(parents=True, exist_ok=True)
    if base in ("native", "kemi"):
        kam = Kamailio(workdir=work, db_url=pg.url, cfg=h.CONFIGS / "register_min.cfg", evapi=False)
        defines = {
            "SIP_PORT": str(kam.sip_port),
            "RUNDIR": f'"{kam.rundir}"',
            "CTL_SOCKET": f'"{kam.ctl}"',
            "DBURL": f'"{pg.url}"',
            "UL_DB_MODE": "1" if db else "0",
        }
        if db:
            defines["WITH_DB"] = ""
        if base == "kemi":
            defines["WITH_KEMI"] = ""
            defines["KEMI_SCRIPT"] = f'"{h.CONFIGS / "register_min.py"}"'
        kam.cfg_defines = defines
    else:
        extra = {"REG_AUTH": "0", "UL_DB_MODE": "1" if db else "0"}
        if not db:
            extra["PUSHGATE_USRLOC_MEMORY"] = ""
        kam = Kamailio(workdir=work, db_url=pg.url, extra=extra)
    for mod in mods:
        key, _, value = mod.partition("=")
        if key in MANAGERS:
            kam.mem_manager = key
        elif key.startswith("m") and key[1:].isdigit():
            kam.shm_mb = int(key[1:])
        elif base != "ours":
            raise ValueError(f"{name}: modifier {mod!r} is for ours only")
        elif key == "nolog":
            kam.extra["LOG_LEVEL"] = "1"
        elif key == "stub":
            kam.extra["KEMI_SCRIPT"] = f'"{h.CONFIGS / "variant_kemi.py"}"'
            kam.environ["PUSHGATE_BENCH_STUB"] = value
        elif key == "rev":
            kam.repo = export_tree(value, root)
            if "KEMI_SCRIPT" not in kam.extra:
                kam.extra["KEMI_SCRIPT"] = f'"{kam.repo / "kemi" / "pushgate_kemi.py"}"'
        else:
            raise ValueError(f"{name}: unknown modifier {mod!r}")
    return kam


def slug(name: str) -> str:
    """A variant's name as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def export_tree(rev: str, root: Path) -> Path:
    """The repository at ``rev`` (git archive), for A/B runs of two commits in one sitting."""
    out = root / f"src-{rev.replace('/', '_')}"
    if not out.exists():
        out.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(h.REPO), "archive", rev], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def idle_rates(variants: list[Variant], seconds: float) -> None:
    """Kamailio's own CPU with nothing to do (timers), per variant, measured together."""
    for v in variants:
        v.pids = h.process_tree(v.kam.pid or 0)
    before = {v.name: h.cpu_ns(v.pids) for v in variants}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    for v in variants:
        v.idle_ns_per_s = (h.cpu_ns(v.pids) - before[v.name]) / elapsed


def register_all(
    v: Variant, root: Path, label: str, rate: float, pg_pids: list[int], transport: str = "t1"
) -> Run:
    """``len(v.phones)`` REGISTERs, one per phone; over one TCP connection (``t1``) or a
    connection each (``tn``: Kamailio spreads them over its TCP workers)."""
    n = len(v.phones)
    argv = h.sipp_argv(
        "register_inf",
        target_port=v.kam.sip_port,
        workdir=root / "sipp",
        name=f"{slug(v.name)}-{label}",
        calls=n,
        rate=rate,
        inf=v.inf,
        transport=transport,
        limit=200,
    )
    cores = os.sched_getaffinity(0)
    v.pids = h.process_tree(v.kam.pid or 0)
    busy0 = core_busy_seconds(cores)
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    kam0, pg0 = h.cpu_ns(v.pids), h.cpu_ns(pg_pids)
    load = h.run_sipp(argv, root / "sipp", f"{slug(v.name)}-{label}", n, timeout=n / rate + 60)
    kam_ns = h.cpu_ns(v.pids) - kam0 - v.idle_ns_per_s * load.seconds
    pg_ns = h.cpu_ns(pg_pids) - pg0
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sipp_s = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    busy = core_busy_seconds(cores) - busy0
    other = busy - kam_ns / 1e9 - pg_ns / 1e9 - sipp_s
    ok = max(load.successful, 1)
    return Run(
        variant=v.name,
        round=-1,
        registers=n,
        ok=load.successful,
        failed=load.failed + (n - load.successful - load.failed),
        seconds=round(load.seconds, 2),
        kamailio_cpu_s=round(kam_ns / 1e9, 4),
        us_per_register=round(kam_ns / 1e3 / ok, 1),
        postgres_us_per_register=round(pg_ns / 1e3 / ok, 1),
        sipp_cpu_s=round(sipp_s, 3),
        other_cores=round(max(other, 0.0) / max(load.seconds, 1e-9), 3),
    )


def summarize(runs: list[Run], names: list[str]) -> dict[str, object]:
    per: dict[str, list[float]] = {
        n: [r.us_per_register for r in runs if r.variant == n] for n in names
    }
    out: dict[str, object] = {
        "us_per_register": {
            n: {"median": round(statistics.median(v), 1), "min": min(v), "max": max(v)}
            for n, v in per.items()
            if v
        }
    }
    # Ratios within each round (runs of one round are seconds apart).
    rounds = sorted({r.round for r in runs})
    ratios: dict[str, list[float]] = {}
    for i, a in enumerate(names):
        for b in names[:i]:
            key = f"{a}/{b}"
            vals = []
            for rd in rounds:
                ra = [r.us_per_register for r in runs if r.variant == a and r.round == rd]
                rb = [r.us_per_register for r in runs if r.variant == b and r.round == rd]
                if ra and rb and rb[0] > 0:
                    vals.append(ra[0] / rb[0])
            if vals:
                ratios[key] = vals
    out["ratios"] = {
        k: {
            "median": round(statistics.median(v), 3),
            "min": round(min(v), 3),
            "max": round(max(v), 3),
            "per_round": [round(x, 3) for x in v],
        }
        for k, v in ratios.items()
    }
    return out


def profile_run(
    root: Path, pg: PostgresCluster, args: argparse.Namespace, pg_pids: list[int]
) -> None:
    out = Path(args.profile).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.prof"):
        old.unlink()
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    for old in raw.glob("*.prof"):
        old.unlink()
    # The first "ours" variant asked for, under cProfile (bench/configs/variant_kemi.py).
    name = next((v for v in args.variants if v.startswith("ours")), "ours")
    kam = make_kamailio(name, root / "profile", pg, args.usrloc == "db")
    kam.extra["KEMI_SCRIPT"] = f'"{h.CONFIGS / "variant_kemi.py"}"'
    kam.environ["PUSHGATE_BENCH_PROFILE"] = str(raw)
    pop = h.phones("prof", args.registers)
    v = Variant(name, kam, pop, h.write_injection(root / "prof.csv", pop))
    try:
        kam.start()
        v.pids = h.process_tree(kam.pid or 0)
        register_all(v, root, "warm", args.rate * 2, pg_pids, "tn")
        register_all(v, root, "warm2", args.rate * 2, pg_pids)
        for old in raw.glob("*.prof"):
            old.unlink()
        run = register_all(v, root, "profiled", args.rate, pg_pids)
        time.sleep(0.5)
    finally:
        kam.stop()
    files = sorted(raw.glob("*.prof"))
    if not files:
        print("no profile written", flush=True)
        return
    stats = pstats.Stats(str(files[0]))
    for f in files[1:]:
        stats.add(str(f))
    stats.dump_stats(str(out / "ours.prof"))
    with (out / "ours.txt").open("w") as text:
        text.write(
            f"{run.ok} REGISTERs profiled, {run.us_per_register} us CPU each under cProfile\n"
        )
        s = pstats.Stats(str(out / "ours.prof"), stream=text)
        s.sort_stats("tottime").print_stats(40)
        s.sort_stats("cumulative").print_stats(40)
    print(f"profile: {out / 'ours.txt'} ({run.ok} REGISTERs, {run.us_per_register} us each)")


def run(args: argparse.Namespace, root: Path, runs: list[Run], meta: dict[str, object]) -> None:
    pg: PostgresCluster | None = None
    variants: list[Variant] = []
    try:
        print("starting PostgreSQL and the Kamailio variants ...", flush=True)
        pg = start_cluster(root / "pg")
        pg_pids = h.process_tree(pg._proc.pid) if pg._proc else []
        for i, name in enumerate(args.variants):
            kam = make_kamailio(name, root, pg, args.usrloc == "db")
            pop = h.phones(f"r{i}x", args.registers)
            variants.append(
                Variant(name, kam, pop, h.write_injection(root / f"{slug(name)}.csv", pop))
            )
        for v in variants:
            v.kam.start()
            v.pids = h.process_tree(v.kam.pid or 0)
        for v in variants:
            warm = register_all(v, root, "warm", min(args.rate * 2, 1000), pg_pids, "tn")
            if warm.ok != args.registers:
                raise RuntimeError(f"{v.name}: warm-up registered {warm.ok} of {args.registers}")
            print(
                f"  {v.name:<12} warm-up: first REGISTER of each phone"
                f" {warm.us_per_register:7.1f} us",
                flush=True,
            )
        # The first pass (a connection per REGISTER) warmed every TCP worker's Python and
        # caches; a second unmeasured pass over one connection, as the measured ones.
        for v in variants:
            register_all(v, root, "warm2", min(args.rate * 2, 1000), pg_pids)
        idle_rates(variants, IDLE_SECONDS)
        meta["idle_ms_per_s"] = {v.name: round(v.idle_ns_per_s / 1e6, 3) for v in variants}
        print(
            "  idle CPU (ms/s): "
            + ", ".join(f"{v.name} {v.idle_ns_per_s / 1e6:.2f}" for v in variants)
        )
        cores = os.sched_getaffinity(0)
        for rd in range(args.rounds):
            order = variants[rd % len(variants) :] + variants[: rd % len(variants)]
            for v in order:
                if args.quiet_wait > 0:
                    wait_for_quiet(cores, args.quiet_wait, sys.stdout)
                r = register_all(v, root, f"r{rd}", args.rate, pg_pids)
                r.round = rd
                runs.append(r)
                print(
                    f"  round {rd} {r.variant:<12} {r.us_per_register:7.1f} us/REGISTER"
                    f" (pg {r.postgres_us_per_register:5.1f} us)  {r.ok}/{r.registers} ok"
                    f"  {r.seconds:5.1f} s  other {r.other_cores:.2f} cores",
                    flush=True,
                )
                if r.ok != r.registers:
                    print(f"    {r.registers - r.ok} REGISTERs not answered 200!", flush=True)
        shm_after: dict[str, dict[str, int]] = {}
        for v in variants:
            with contextlib.suppress(RuntimeError):
                shm_after[v.name] = h.shm_stats(v.kam)
        meta["shm_after"] = shm_after
        for v in variants:
            v.kam.stop()
        if args.profile:
            try:
                profile_run(root, pg, args, pg_pids)
            except (RuntimeError, OSError, ValueError) as exc:
                print(f"profile run failed: {exc}", flush=True)
    finally:
        for v in variants:
            v.kam.stop()
        if pg is not None:
            pg.stop()


# ----- instruction counts (valgrind) -----
VALGRIND = (
    "valgrind",
    "--tool=callgrind",
    "--trace-children=yes",
    "--dump-instr=no",
    "--collect-systime=no",
)
_SUMMARY = re.compile(r"^(?:summary|totals):\s*(\d+)", re.M)


def callgrind(command: str, pids: list[int]) -> None:
    subprocess.run(
        ["callgrind_control", command, *map(str, pids)],
        capture_output=True,
        timeout=120,
        check=True,
    )


def dumped_instructions(out: Path, before: set[Path]) -> int:
    """Instructions in the dump files written since ``before`` (one per process)."""
    total = 0
    for f in set(out.glob("cg.*.*")) - before:
        m = _SUMMARY.search(f.read_text(errors="replace"))
        total += int(m.group(1)) if m else 0
    return total


def count_instructions(
    name: str, root: Path, pg: PostgresCluster, args: argparse.Namespace
) -> dict[str, float]:
    """User-space instructions per REGISTER of variant ``name``, all Kamailio processes.

    Kamailio runs under callgrind (children traced). After two unmeasured passes, the
    counters of every process are zeroed, ``n`` REGISTERs are sent, the counters dumped;
    then the same for as long with no load (timers), which is subtracted.
    """
    n = args.instructions
    rate = args.instruction_rate
    out = root / f"callgrind-{slug(name)}"
    out.mkdir(parents=True, exist_ok=True)
    kam = make_kamailio(name, root, pg, args.usrloc == "db")
    kam.wrapper = (*VALGRIND, f"--callgrind-out-file={out}/cg.%p")
    kam.start_timeout = 300.0
    pop = h.phones(f"i{slug(name)}x", n)
    v = Variant(name, kam, pop, h.write_injection(root / f"instr-{slug(name)}.csv", pop))
    try:
        kam.start()
        for label, transport in (("iwarm", "tn"), ("iwarm2", "t1")):
            warm = register_all(v, root, label, rate, [], transport)
            if warm.ok != n:
                raise RuntimeError(f"{name} under valgrind: {warm.ok} of {n} registered")
        time.sleep(2)
        pids = h.process_tree(kam.pid or 0)
        before = set(out.glob("cg.*.*"))
        callgrind("-z", pids)
        load = register_all(v, root, "imeasured", rate, [])
        callgrind("-d", pids)
        loaded = dumped_instructions(out, before)
        before = set(out.glob("cg.*.*"))
        callgrind("-z", pids)
        time.sleep(load.seconds)
        callgrind("-d", pids)
        idle = dumped_instructions(out, before)
    finally:
        kam.stop()
    per = (loaded - idle) / max(load.ok, 1)
    print(
        f"  {name:<14} {per / 1e3:9.1f} k instructions/REGISTER"
        f"  ({load.ok}/{n} ok, idle {idle / 1e6:.1f} M over {load.seconds:.0f} s)",
        flush=True,
    )
    return {
        "instructions_per_register": round(per),
        "ok": load.ok,
        "idle_instructions": idle,
        "seconds": round(load.seconds, 1),
    }


def run_instructions(args: argparse.Namespace, root: Path, meta: dict[str, object]) -> None:
    pg: PostgresCluster | None = None
    counts: dict[str, dict[str, float]] = {}
    meta["instructions"] = counts
    try:
        print("instruction counts under valgrind (one variant at a time) ...", flush=True)
        pg = start_cluster(root / "pg")
        for name in args.variants:
            counts[name] = count_instructions(name, root, pg, args)
    finally:
        if pg is not None:
            pg.stop()
    names = list(counts)
    print("instruction ratios:")
    for i, a in enumerate(names):
        for b in names[:i]:
            ia = counts[a]["instructions_per_register"]
            ib = counts[b]["instructions_per_register"]
            print(f"  {a}/{b:<20} x{ia / ib:.3f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.register_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--registers", type=int, default=4000, help="REGISTERs per run (phones per variant)"
    )
    p.add_argument("--rate", type=float, default=400.0, help="REGISTERs per second")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", default="native,kemi,ours")
    p.add_argument("--usrloc", choices=("memory", "db"), default="memory")
    p.add_argument("--profile", default="", metavar="DIR")
    p.add_argument(
        "--instructions",
        type=int,
        default=0,
        metavar="N",
        help="instead of CPU time: count instructions of N REGISTERs per variant (valgrind)",
    )
    p.add_argument("--instruction-rate", type=float, default=20.0, metavar="R")
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        metavar="S",
        help="before each run, wait up to S s for idle cores (0: never)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = p.parse_args(argv)
    if not 1 <= args.registers <= MAX_REGISTERS or not 1 <= args.rounds <= MAX_ROUNDS:
        p.error(f"--registers in [1, {MAX_REGISTERS}], --rounds in [1, {MAX_ROUNDS}]")
    if not 1 <= args.rate <= 5000:
        p.error("--rate in [1, 5000]")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in args.variants:
        if name.split("/")[0] not in BASES:
            p.error(f"unknown variant {name!r}: the base must be one of {BASES}")
    return args


def report(summary: dict[str, object]) -> None:
    us = summary["us_per_register"]
    assert isinstance(us, dict)
    print("\nCPU per REGISTER (Kamailio, all processes), median over rounds [min-max]:")
    for name, s in us.items():
        print(f"  {name:<12} {s['median']:7.1f} us  [{s['min']:.1f}-{s['max']:.1f}]")
    ratios = summary["ratios"]
    assert isinstance(ratios, dict)
    print("ratios per round, median [min-max]:")
    for key, s in ratios.items():
        print(f"  {key:<24} x{s['median']:.2f}  [{s['min']:.2f}-{s['max']:.2f}]")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = world_readable_tempdir("pushgate-bench-reg-")
    runs: list[Run] = []
    meta: dict[str, object] = {"host": h.machine()}
    try:
        with h.stop_on_signals():
            if args.instructions:
                run_instructions(args, root, meta)
            else:
                run(args, root, runs, meta)
    finally:
        if args.keep:
            print(f"work dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.instructions:
        if args.json is not None:
            doc = {"benchmark": "register_cost", **meta, "args": vars(args)}
            args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        return 0
    if not runs:
        return 1
    summary = summarize(runs, args.variants)
    report(summary)
    if args.json is not None:
        doc = {
            "benchmark": "register_cost",
            **meta,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": [asdict(r) for r in runs],
            "summary": summary,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0 if all(r.ok == r.registers for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
