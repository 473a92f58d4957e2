"""Process helpers for the harness: free ports, readiness waits, clean shutdown."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that is free for TCP and UDP right now (SIP listens on both).

    Picked below the kernel's ephemeral range (32768+): a port the kernel hands out to
    some process's outgoing connection cannot take it between this check and the bind
    of the server we start on it (seen under load as SIPp exiting with 254).
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, 20000)  # SIPp media blocks take 20000-32000
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port found")


def free_udp_block(size: int = 4, host: str = "127.0.0.1") -> int:
    """The first of ``size`` consecutive UDP ports free right now, below the kernel's
    ephemeral range (so no port another process got from the kernel falls in it):
    SIPp binds its media port and the ones above it for RTCP and video."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - size, 2)
        sockets = []
        try:
            for port in range(base, base + size):
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(udp)
                udp.bind((host, port))
        except OSError:
            continue
        finally:
            for udp in sockets:
                udp.close()
        return base
    raise RuntimeError("no free block of UDP ports found")


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = 5) -> None:
    """SIGTERM the process group, then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"
