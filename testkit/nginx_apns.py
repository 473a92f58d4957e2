"""nginx as a fast, minimal APNs stand-in, for throughput measurements only.

The real fake (:mod:`testkit.fake_apns`) checks every JWT, header and payload in pure
Python and costs 0.2-0.4 ms of CPU per request, so a benchmark against it measures the
fake rather than the client once the client goes beyond ~3,000-4,500 pushes/s.
:class:`NginxApns` runs nginx (Debian ``nginx-light``: it has ``http_v2``) instead,
speaking real HTTP/2 over TLS with the test PKI's server certificate:

* ``POST /3/device/<token>``: ``200``, ``apns-id`` echoed from the request, no body (one
  HEADERS frame with END_STREAM, as Apple answers), the request body is discarded;
* another method on that path: ``405``; any other path: ``404``.

nginx answers once it has the HEADERS frame, before the body, and then ends each stream
with ``RST_STREAM`` (``NO_ERROR``); its answers also carry ``server``, ``date`` and
``content-length``. Both cost the client a little more per push than Apple's answers do.

It checks nothing: no JWT, topic, push type or payload. Use it to measure how fast a
client can send, and :mod:`testkit.fake_apns` to check that what it sends is right.

nginx 1.22 speaks HTTP/2 over TLS only to clients that ask for ``h2`` with ALPN (pushd
does); it advertises ``MAX_CONCURRENT_STREAMS`` 1000 (Apple's value) from the start.

Everything lives in one work directory (configuration, pid file, error log, temp dirs),
so nginx runs as root without touching ``/var``. It listens on 127.0.0.1 only, on a port
picked here (retried if another process takes it first). nginx runs a master process and
one worker; :meth:`NginxApns.pids` names both (the worker does the work), and with
``cpus`` both are pinned: the master with ``sched_setaffinity``, the worker with
``worker_cpu_affinity`` (so it is pinned from its first instruction), checked once it runs.

    with NginxApns(pki, work / "nginx-apns", cpus={1}) as apns:
        settings = client_settings(pki, apns.port, host="127.0.0.1")
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.certs import TestPki
from testkit.procs import free_port, port_open, stop, tail

HOST = "127.0.0.1"
READY_SECONDS = 15.0
STOP_SECONDS = 10.0
PORT_TRIES = 3
"""Starts on a fresh port when the one picked was taken meanwhile (bind race)."""
MAX_CONCURRENT_STREAMS = 1000
"""What APNs advertises once a connection is authenticated."""
KEEPALIVE_REQUESTS = 10_000_000
"""Requests per connection before nginx closes it (its default, 1000, would cut a busy
HTTP/2 connection every fraction of a second; since nginx 1.19.7 this also covers HTTP/2,
``http2_max_requests`` is obsolete)."""
KEEPALIVE_TIMEOUT_S = 3600
"""Idle HTTP/2 connections are kept an hour (APNs keeps them for a long time too)."""


class NginxError(RuntimeError):
    """nginx is missing, lacks HTTP/2, or did not start."""


def nginx_binary() -> str:
    """Path of the nginx executable (``/usr/sbin`` is not on every user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise NginxError("nginx not found: apt-get install -y nginx-light")
    return found


def nginx_version(binary: str) -> str:
    """``nginx/1.22.1``, from ``nginx -V``; raises if the build has no HTTP/2 module."""
    out = subprocess.run(
        [binary, "-V"], capture_output=True, text=True, timeout=10, check=False
    ).stderr
    if "--with-http_v2_module" not in out:
        raise NginxError(f"{binary} was built without http_v2_module:\n{out}")
    first = out.splitlines()[0] if out else ""
    return first.rsplit(" ", 1)[-1] if first.startswith("nginx version:") else "nginx"


def cpu_mask(cpus: set[int]) -> str:
    """``worker_cpu_affinity`` bit mask (rightmost digit: CPU 0) for ``cpus``."""
    return "".join("1" if cpu in cpus else "0" for cpu in range(max(cpus), -1, -1))


def render_config(
    directory: Path,
    port: int,
    cert: Path,
    key: Path,
    cpus: set[int] | None = None,
) -> str:
    """nginx.conf for the stand-in; every path it names is inside ``directory``."""
    d = directory.resolve()
    lines = [
        "# Written by testkit.nginx_apns: a minimal APNs stand-in on loopback.",
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
    ]
    if os.geteuid() == 0:
        # Workers would drop to "nobody", which cannot enter a private temp directory.
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        lines.append(f"user {user} {group};")
    if cpus:
        lines.append(f"worker_cpu_affinity {cpu_mask(cpus)};")
    lines += [
        f"pid {d / 'nginx.pid'};",
        f"lock_file {d / 'nginx.lock'};",
        f"error_log {d / 'error.log'} notice;",
        "events {",
        "    worker_connections 4096;",
        "}",
        "http {",
        "    access_log off;",
        "    server_tokens off;",
        '    default_type "";  # no content-type header on the empty 200',
        f"    client_body_temp_path {d / 'tmp' / 'body'};",
        f"    proxy_temp_path {d / 'tmp' / 'proxy'};",
        f"    fastcgi_temp_path {d / 'tmp' / 'fastcgi'};",
        f"    uwsgi_temp_path {d / 'tmp' / 'uwsgi'};",
        f"    scgi_temp_path {d / 'tmp' / 'scgi'};",
        f"    keepalive_requests {KEEPALIVE_REQUESTS};",
        f"    keepalive_timeout {KEEPALIVE_TIMEOUT_S}s;",
        f"    http2_max_concurrent_streams {MAX_CONCURRENT_STREAMS};",
        "    server {",
        f"        listen {HOST}:{port} ssl http2;",
        f"        ssl_certificate {cert.resolve()};",
        f"        ssl_certificate_key {key.resolve()};",
        "        ssl_protocols TLSv1.2 TLSv1.3;",
        "        location ~ ^/3/device/[^/]+$ {",
        "            if ($request_method != POST) {",
        "                return 405;",
        "            }",
        "            add_header apns-id $http_apns_id always;",
        '            return 200 "";  # discards the request body',
        "        }",
        "        location / {",
        "            return 404;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (nginx's workers), from ``/proc``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


class NginxApns:
    """nginx answering ``POST /3/device/<token>`` with 200 on 127.0.0.1 (see module doc)."""

    def __init__(
        self,
        pki: TestPki,
        directory: Path,
        *,
        cpus: set[int] | None = None,
        binary: str | None = None,
    ) -> None:
        self.pki = pki
        self.directory = directory
        self.cpus = set(cpus) if cpus else None
        self.binary = binary or nginx_binary()
        self.version = nginx_version(self.binary)
        self.conf_path = directory / "nginx.conf"
        self.error_log = directory / "error.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start nginx and wait until its port accepts connections and its worker runs."""
        if self.proc is not None:
            raise NginxError("already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "tmp").mkdir(exist_ok=True)
        for attempt in range(1, PORT_TRIES + 1):
            self.port = free_port(host=HOST)
            self.conf_path.write_text(
                render_config(
                    self.directory, self.port, self.pki.server_cert, self.pki.server_key, self.cpus
                )
            )
            log_start = self._log_size()
            self._spawn()
            try:
                self._wait_ready()
                return self
            except NginxError:
                taken = "Address already in use" in self._log_since(log_start)
                self.stop()
                if not taken or attempt == PORT_TRIES:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        with self.error_log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-c",
                    str(self.conf_path.resolve()),
                    "-p",
                    str(self.directory.resolve()) + "/",
                    "-e",  # errors before the configuration is read (nginx >= 1.19.5)
                    str(self.error_log.resolve()),
                ],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # one process group: stop() can end the workers too
            )
        if self.cpus is not None:
            # The master, as early as possible; the worker is pinned by the configuration.
            os.sched_setaffinity(self.proc.pid, self.cpus)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NginxError(
                    f"nginx exited with status {self.proc.returncode} before it was ready; "
                    f"{self.error_log}:\n{tail(self.error_log)}"
                )
            # The master binds the port before it forks the worker: wait for both.
            workers = self.workers()
            if workers and port_open(self.port, HOST):
                if self.cpus is not None:
                    for pid in workers:
                        if os.sched_getaffinity(pid) != self.cpus:
                            os.sched_setaffinity(pid, self.cpus)
                return
            time.sleep(0.02)
        raise NginxError(
            f"nginx not ready on {HOST}:{self.port} after {READY_SECONDS:g} s; "
            f"{self.error_log}:\n{tail(self.error_log)}"
        )

    def workers(self) -> list[int]:
        """The worker process ids (children of the master)."""
        return children_of(self.proc.pid) if self.proc is not None else []

    def pids(self) -> list[int]:
        """Master and workers, for CPU accounting (the worker does the work)."""
        return [self.proc.pid, *self.workers()] if self.proc is not None else []

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown) to the process group, SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        stop(proc, STOP_SECONDS)

    def _log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.error_log.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
