"""Does pushd's throughput grow with its processes? N pushd at once, each capped at the same
share of a core, against N times one alone.

    python -m bench.pushd_scaling [--processes 1,2,3] [--share 0.3] [--seconds 10]
        [--rounds 2] [--json FILE]

Each pushd is a ``bench.push_throughput`` process (APNs, the real provider and dispatcher
against the nginx stand-in, 100 pushes in flight) capped with ``--cpu-quota`` at
``--share`` of one core; its nginx is not capped. Capping is what lets a small machine
answer the question: N processes at 0.3 of a core need 0.3 N cores plus the stand-ins', so
three fit on two cores where three uncapped ones could not. If nothing is shared between
pushd processes (no lock, no common connection, no database on the push path), N of
them deliver N times the pushes of one, and the ratio printed is close to N. Every run is
bounded by ``--seconds`` (plus warm-up) and push_throughput's own ``--max-pushes``.

Needs root (cgroup v1 cpu controller at /sys/fs/cgroup/cpu).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 120.0
"""Seconds one round of N processes may take (warm-up, --seconds, drain) before it fails."""


@dataclass(frozen=True)
class Round:
    processes: int
    pushes_per_s: list[float]
    """Each process's delivered pushes per second."""
    cpu_share: list[float]
    """Each process's CPU seconds per second (at most the share it was given)."""
    pushes_per_cpu_s: list[float]

    @property
    def total(self) -> float:
        return sum(self.pushes_per_s)


def run_round(n: int, args: argparse.Namespace, work: Path) -> Round:
    procs = []
    files = []
    for i in range(n):
        out = work / f"n{n}-{i}.json"
        out.unlink(missing_ok=True)
        files.append(out)
        argv = [
            sys.executable,
            "-m",
            "bench.push_throughput",
            "--provider",
            "apns",
            "--apns-fake",
            "nginx",
            "--quiet-wait",
            "0",
            "--seconds",
            str(args.seconds),
            "--cpu-quota",
            str(args.share),
            "--json",
            str(out),
        ]
        log = (work / f"n{n}-{i}.log").open("wb")
        procs.append(subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    for i, proc in enumerate(procs):
        rc = proc.wait(RUN_TIMEOUT)
        if rc != 0:
            log_text = (work / f"n{n}-{i}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"push_throughput {i} of {n} exited {rc}:\n{log_text}")
    results = [json.loads(f.read_text())["results"][0] for f in files]
    return Round(
        processes=n,
        pushes_per_s=[r["pushes_per_s"] for r in results],
        cpu_share=[r["pushd_cpu_share"] for r in results],
        pushes_per_cpu_s=[r["pushes_per_cpu_s"] for r in results],
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pushd_scaling", description=__doc__)
    p.add_argument("--processes", default="1,2,3", help="comma-separated process counts")
    p.add_argument("--share", type=float, default=0.3, help="of one core, per pushd process")
    p.add_argument("--seconds", type=float, default=10.0, help="measured load per run")
    p.add_argument("--rounds", type=int, default=2, help="runs per process count")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    args.counts = [int(x) for x in args.processes.split(",") if x.strip()]
    if not args.counts or min(args.counts) < 1 or max(args.counts) > 8:
        p.error("--processes: counts from 1 to 8")
    if not 0.05 <= args.share <= 1 or not 1 <= args.rounds <= 10 or not 1 <= args.seconds <= 60:
        p.error("--share in [0.05, 1], --rounds in [1, 10], --seconds in [1, 60]")
    if os.geteuid() != 0:
        p.error("needs root: the cpu cgroup caps each pushd")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pushgate-scaling-"))
    rounds: list[Round] = []
    for r in range(args.rounds):
        for n in args.counts:
            rnd = run_round(n, args, work)
            rounds.append(rnd)
            print(
                f"round {r + 1}, {n} process(es) at {args.share:g} core each: "
                f"{rnd.total:,.0f} pushes/s ("
                + " + ".join(f"{x:,.0f}" for x in rnd.pushes_per_s)
                + "), CPU share "
                + ", ".join(f"{x:.2f}" for x in rnd.cpu_share),
                flush=True,
            )
    base = statistics.median(r.total for r in rounds if r.processes == 1) if 1 in args.counts else 0
    print()
    print("| processes | pushes/s, median of rounds (range) | per process | vs one process |")
    print("|---|---|---|---|")
    summary = []
    for n in args.counts:
        totals = [r.total for r in rounds if r.processes == n]
        median = statistics.median(totals)
        ratio = median / base if base else float("nan")
        summary.append({"processes": n, "median_pushes_per_s": median, "ratio": ratio})
        print(
            f"| {n} | {median:,.0f} ({min(totals):,.0f}-{max(totals):,.0f}) "
            f"| {median / n:,.0f} | x{ratio:.2f} |"
        )
    if args.json is not None:
        doc = {
            "benchmark": "pushd_scaling",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "share": args.share,
            "seconds": args.seconds,
            "load_average": os.getloadavg(),
            "rounds": [asdict(r) for r in rounds],
            "summary": summary,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
