"""What dmq_usrloc replication costs per REGISTER: one node against a node of two.

    python -m bench.cluster_register [--registers 2000] [--rate 200] [--rounds 3]

Three real Kamailio 5.6 processes trees started side by side on one throwaway PostgreSQL,
all our kamailio.cfg with REG_AUTH 0 and usrloc writing through (db_mode 1):

``single``   one Kamailio on 127.0.0.1, no cluster
``A``, ``B`` a cluster of two (WITH_CLUSTER, testkit/cluster.py) on 127.0.0.2 / .3; the
             phones register on A only: B's CPU is the pure cost of being a replica

Each side first registers its own ``--registers`` phones twice (warm-up, new bindings),
then ``--rounds`` times, alternately, SIPp sends ``--registers`` refreshes at ``--rate``
per second over one TCP connection (bench/scenarios/register_inf.xml). CPU per REGISTER
is every process's scheduler time over the run minus its idle rate, divided by the
REGISTERs answered 200; PostgreSQL's CPU is counted the same way (in the cluster both
nodes write every binding to the shared table). Shared memory per binding: each node's
``core.shmmem`` real_used before and after its phones' first REGISTERs (the replica holds
the same bindings, without a TCP connection), once tm has no transaction left. Bounded:
every SIPp run has a time limit; everything started is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import harness as h
from testkit.cluster import make_node, node_ips
from testkit.kamailio import Kamailio
from testkit.postgres import start_cluster
from testkit.procs import free_port, wait_until
from testkit.stack import world_readable_tempdir

IDLE_SECONDS = 5.0


@dataclass
class Side:
    name: str
    target: Kamailio
    measured: list[Kamailio]
    inf: Path
    idle_ns_per_s: dict[str, float] = field(default_factory=dict)
    us: dict[str, list[float]] = field(default_factory=dict)


def node(root: Path, name: str, pg_url: str) -> Kamailio:
    kam = Kamailio(workdir=root / name, db_url=pg_url, extra={"REG_AUTH": "0"}, evapi=False)
    kam.extra["PUSHGATE_EVAPI_BIND"] = f'"127.0.0.1:{free_port()}"'
    kam.workdir.mkdir(parents=True, exist_ok=True)
    return kam


def register_pass(
    side: Side, root: Path, label: str, n: int, rate: float, transport: str, pg_pids: list[int]
) -> dict[str, float]:
    argv = h.sipp_argv(
        "register_inf",
        target_port=side.target.sip_port,
        workdir=root / "sipp",
        name=f"{side.name}-{label}",
        calls=n,
        rate=rate,
        inf=side.inf,
        transport=transport,
        limit=200,
    )
    argv[1] = f"{side.target.listen_ip}:{side.target.sip_port}"
    pids = {k.workdir.name: h.process_tree(k.pid or 0) for k in side.measured}
    before = {name: h.cpu_ns(p) for name, p in pids.items()}
    pg0 = h.cpu_ns(pg_pids)
    load = h.run_sipp(argv, root / "sipp", f"{side.name}-{label}", n, timeout=n / rate + 60)
    ok = max(load.successful, 1)
    out = {
        name: (h.cpu_ns(p) - before[name] - side.idle_ns_per_s.get(name, 0) * load.seconds)
        / 1e3
        / ok
        for name, p in pids.items()
    }
    out["postgres"] = (h.cpu_ns(pg_pids) - pg0) / 1e3 / ok
    out["ok"] = load.successful
    return out


def tm_current(kam: Kamailio) -> int:
    """Transactions tm holds right now (``tm.stats`` current)."""
    for line in kam.kamcmd("tm.stats").splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "current":
            return int(value)
    raise RuntimeError("tm.stats has no 'current'")


def idle(side: Side) -> None:
    pids = {k.workdir.name: h.process_tree(k.pid or 0) for k in side.measured}
    before = {name: h.cpu_ns(p) for name, p in pids.items()}
    time.sleep(IDLE_SECONDS)
    side.idle_ns_per_s = {
        name: (h.cpu_ns(p) - before[name]) / IDLE_SECONDS for name, p in pids.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registers", type=int, default=2000)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    root = world_readable_tempdir("pushgate-bench-cluster-")
    kams: list[Kamailio] = []
    pg = None
    try:
        with h.stop_on_signals():
            pg = start_cluster(root / "pg")
            pg_pids = h.process_tree(pg._proc.pid) if pg._proc else []
            single = node(root, "single", pg.url)
            a, b = node(root, "A", pg.url), node(root, "B", pg.url)
            ips, port = node_ips(2), free_port()
            for i, k in enumerate((a, b)):
                make_node(k, ips, i, port)
            kams = [single, a, b]
            for k in kams:
                k.start()
            wait_until(lambda: "127.0.0.3" in a.kamcmd("dmq.list_nodes"), 10, "B to join")
            sides = []
            for name, target, measured in (("single", single, [single]), ("cluster", a, [a, b])):
                pop = h.phones(f"{name[0]}x", args.registers)
                sides.append(
                    Side(name, target, measured, h.write_injection(root / f"{name}.csv", pop))
                )
            shm_per_binding: dict[str, float] = {}
            for s in sides:
                used0 = {k.workdir.name: h.shm_stats(k)["real_used"] for k in s.measured}
                for label, transport in (("warm", "tn"), ("warm2", "t1")):
                    r = register_pass(s, root, label, args.registers, args.rate, transport, pg_pids)
                    if r["ok"] != args.registers:
                        raise RuntimeError(f"{s.name} {label}: {r['ok']} of {args.registers} ok")
                # The KDMQ transactions of the warm-up (tm keeps each ~5 s after its
                # reply) are not the bindings' memory: wait until tm has none left.
                for k in s.measured:
                    wait_until(lambda k=k: tm_current(k) == 0, 60, f"{k.workdir.name}'s tm idle")
                for k in s.measured:
                    grown = h.shm_stats(k)["real_used"] - used0[k.workdir.name]
                    shm_per_binding[k.workdir.name] = round(grown / args.registers)
                idle(s)
            print(f"shared memory per binding (bytes): {shm_per_binding}", flush=True)
            for rd in range(args.rounds):
                for s in sides if rd % 2 == 0 else sides[::-1]:
                    r = register_pass(s, root, f"r{rd}", args.registers, args.rate, "t1", pg_pids)
                    for what, us in r.items():
                        if what != "ok":
                            s.us.setdefault(what, []).append(us)
                    print(
                        f"round {rd} {s.name:<8} "
                        + "  ".join(f"{w} {us:6.1f} us" for w, us in r.items() if w != "ok")
                        + f"  ({int(r['ok'])}/{args.registers} ok)",
                        flush=True,
                    )
            summary: dict[str, object] = {
                s.name: {k: round(statistics.median(v), 1) for k, v in s.us.items()} for s in sides
            }
            summary["shm_bytes_per_binding"] = shm_per_binding
            summary["meta"] = {
                **h.machine(),
                "registers": args.registers,
                "rate": args.rate,
                "rounds": args.rounds,
                "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
            print(json.dumps(summary, indent=2))
            if args.json:
                args.json.write_text(json.dumps(summary, indent=2))
    finally:
        for k in kams:
            k.stop()
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
