"""CPU instructions per APNs push, counted by valgrind: a figure the machine's speed does
not move.

push_throughput's pushes/s on this virtual machine drift by ±20 % over a day, which hides
changes of a few per cent. Instructions per push do not drift: this runs pushd's real path
(netstring ``push`` message → Dispatcher → ApnsProvider → HTTP/2 over TLS → nginx →
``result`` message) for a fixed number of pushes under ``valgrind --tool=callgrind``,
twice with different counts, and reports the difference per push, so start-up (imports,
test PKI, TLS handshakes, JWT) cancels out.

    .venv/bin/python -m bench.push_instructions                # 300 and 1,300 pushes
    .venv/bin/python -m bench.push_instructions --small 500 --large 3000

Needs valgrind and nginx (``apt-get install -y valgrind nginx-light``). Only user-space
instructions are counted (not the kernel's socket work), in this process only (not
nginx's). About a minute per 1,000 pushes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.push_throughput import BUNDLE, Load, apns_frames
from pushd.apns import ApnsProvider
from pushd.app import run_loop
from pushd.dispatch import Dispatcher
from pushd.model import ProviderName
from testkit.certs import make_test_pki
from testkit.fake_apns import client_settings
from testkit.nginx_apns import NginxApns

WARMUP = 200
"""Pushes before the counted ones: connections open, JWT minted, caches warm."""
CONCURRENCY = 100
_COLLECTED = re.compile(r"Collected : (\d+)")


def run_pushes(count: int) -> None:
    """The measured program: WARMUP + ``count`` pushes, closed loop, every one delivered."""
    work = Path(tempfile.mkdtemp(prefix="pushgate-instr-"))
    try:
        pki = make_test_pki(work / "pki", bundle=BUNDLE)
        frames = apns_frames(WARMUP + count, time.time() + 3600, pki)
        with NginxApns(pki, work / "nginx") as nginx:
            settings = client_settings(pki, nginx.port, host="127.0.0.1", timeout=60.0)
            run_loop(_send(ApnsProvider(settings), frames))
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _send(provider: ApnsProvider, frames: list[bytes]) -> None:
    try:
        for chunk in (frames[:WARMUP], frames[WARMUP:]):
            load = Load(CONCURRENCY, None, None)
            dispatcher = Dispatcher({ProviderName.APNS: provider}, load.on_result)
            stats = await load.run(dispatcher, chunk, 3600.0, None)
            delivered = stats.verdicts.get("delivered", 0)
            if delivered != len(chunk):
                raise RuntimeError(f"{delivered} of {len(chunk)} delivered: {dict(stats.reasons)}")
    finally:
        await provider.close()


def count_instructions(pushes: int, timeout: float) -> int:
    """Total user-space instructions of one run of ``pushes`` pushes under callgrind."""
    with tempfile.TemporaryDirectory(prefix="pushgate-callgrind-") as out:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}/callgrind.out",
            sys.executable,
            "-m",
            "bench.push_instructions",
            "--child",
            str(pushes),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=300, help="pushes in the first run")
    parser.add_argument("--large", type=int, default=1300, help="pushes in the second run")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run, at most")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        run_pushes(args.child)
        return 0
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install -y valgrind)")
    counts = {n: count_instructions(n, args.timeout) for n in (args.small, args.large)}
    per_push = (counts[args.large] - counts[args.small]) / (args.large - args.small)
    for n, total in counts.items():
        print(f"{n:6d} pushes: {total:,} instructions")
    print(f"apns: {per_push:,.0f} instructions per push (pushd's process, user space)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
