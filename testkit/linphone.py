"""A real Linphone phone for the end-to-end tests: Debian's ``linphonec`` (liblinphone).

:class:`Linphone` writes a linphonerc into a private directory (which is also the
process's ``$HOME``, so liblinphone's databases and caches stay there) and starts
``linphonec -c <rc> -a`` (auto-answer) with a debug log (``-d 6 -l``) that carries every
SIP message it sends and receives. The config makes linphonec talk to the registrar at
127.0.0.1 over TCP and to nothing else: no UDP/TLS listener, no IPv6, no STUN/ICE/TURN/UPnP,
no video, files instead of a sound card. (Its SIP and RTP sockets still listen on 0.0.0.0:
liblinphone has no bind-address setting.)

The phone "sleeps" by :meth:`Linphone.kill` (SIGKILL: no un-REGISTER, the kernel closes
its TCP connection) and is "woken" by :meth:`Linphone.start` again with the same
linphonerc, hence the same ``+sip.instance``. linphonec rewrites its rc file as it runs
(as a real phone keeps its state); the instance id stays in ``[misc] uuid``.

Push parameters come in two styles (:class:`PushStyle`):

* ``CONTACT_URI``: ``[proxy_0] contact_uri_parameters=pn-provider=...;pn-prid=...;pn-param=...``
  copied verbatim into the Contact URI;
* ``NATIVE``: liblinphone's own push support, ``[net] push_notification=1`` and
  ``[proxy_0] push_notification_allowed=1`` + ``push_parameters=...``; liblinphone then
  adds its defaults (pn-silent, pn-timeout, pn-msg-str, pn-call-snd, ...) itself.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from testkit.procs import free_port, wait_until

LINPHONEC = "/usr/bin/linphonec"

_SENT = re.compile(r"message sent to \[(?P<peer>[^\]]*)\], size: \[\d+\] bytes$")
_RECEIVED = re.compile(r"received \[\d+\] new bytes from \[(?P<peer>[^\]]*)\]:$")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d:\d{3} ")
_START_LINE = re.compile(r"^(SIP/2\.0 \d{3} |[A-Z]+ sips?:)")
_REGISTERED = "to [LinphoneRegistrationOk]"


class PushStyle(enum.Enum):
    CONTACT_URI = "contact_uri_parameters"
    NATIVE = "native"


@dataclass(frozen=True)
class SipMessage:
    """One SIP message from linphonec's log: ``out`` = sent by linphonec."""

    out: bool
    peer: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def cseq_method(self) -> str:
        m = re.search(r"^CSeq:\s*\d+\s+(\S+)", self.text, re.MULTILINE | re.IGNORECASE)
        return m.group(1).upper() if m else ""

    @property
    def status(self) -> int | None:
        """Status code of a response, None for a request."""
        m = re.match(r"SIP/2\.0 (\d{3}) ", self.first_line)
        return int(m.group(1)) if m else None

    @property
    def method(self) -> str | None:
        """Method of a request, None for a response."""
        if self.first_line.startswith("SIP/2.0 "):
            return None
        return self.first_line.split(" ", 1)[0]

    def header(self, name: str) -> str | None:
        m = re.search(rf"^{re.escape(name)}:\s*(.*)$", self.text, re.MULTILINE | re.IGNORECASE)
        return m.group(1).strip() if m else None


@dataclass
class Linphone:
    """One linphonec phone: AoR ``user@domain``, registering over TCP to ``registrar_port``."""

    workdir: Path
    user: str
    password: str
    domain: str
    registrar_port: int
    instance: str
    """The UUID of ``+sip.instance`` (without ``urn:uuid:``)."""
    push_style: PushStyle
    push_parameters: str
    """``pn-provider=...;pn-prid=...;pn-param=...[;pn-...]`` as the style's key takes it."""
    expires: int = 600
    rtp_port: int = field(default_factory=free_port)
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.rc.write_text(self.config())

    # ----- configuration -----
    @property
    def rc(self) -> Path:
        return self.workdir / "linphonerc"

    def config(self) -> str:
        """The linphonerc. linphonec rewrites it at run time; this is its first version."""
        native = self.push_style is PushStyle.NATIVE
        if native:
            push = (
                "push_notification_allowed=1\n"
                "remote_push_notification_allowed=1\n"
                f"push_parameters={self.push_parameters}\n"
            )
        else:
            push = f"push_notification_allowed=0\ncontact_uri_parameters={self.push_parameters}\n"
        return (
            "[sip]\n"
            "sip_port=0\n"  # no UDP listener
            "sip_tcp_port=-1\n"  # TCP on a random port
            "sip_tls_port=0\n"
            "sip_dtls_port=0\n"
            "use_ipv6=0\n"
            "ipv6_migration_done=1\n"  # else liblinphone 5 turns IPv6 back on
            "default_proxy=0\n"
            "register_only_when_network_is_up=0\n"
            "register_only_when_upnp_is_ok=0\n"
            "auto_send_ringing=1\n"
            "inc_timeout=30\n"
            "\n[net]\n"
            f"push_notification={int(native)}\n"
            "firewall_policy=0\n"
            "nat_policy_ref=loopback\n"
            "mtu=0\n"
            "\n[nat_policy_0]\n"
            "ref=loopback\n"
            "stun_server=\n"
            "protocols=\n"
            "\n[rtp]\n"
            f"audio_rtp_port={self.rtp_port}\n"
            "\n[video]\n"
            "enabled=0\ncapture=0\ndisplay=0\nautomatically_initiate=0\nautomatically_accept=0\n"
            "\n[misc]\n"
            f"uuid={self.instance}\n"
            "\n[proxy_0]\n"
            f"reg_proxy=<sip:127.0.0.1:{self.registrar_port};transport=tcp>\n"
            f"reg_identity=sip:{self.user}@{self.domain}\n"
            f"reg_expires={self.expires}\n"
            "reg_sendregister=1\n"
            "publish=0\n"
            "avpf=0\n"
            f"{push}"
            "\n[auth_info_0]\n"
            f"username={self.user}\n"
            f"passwd={self.password}\n"
            f"realm={self.domain}\n"
            f"domain={self.domain}\n"
        )

    # ----- process -----
    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.runs[-1] if self.runs else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_file(self, run: int = -1) -> Path:
        """linphonec's debug log of run ``run`` (0 = first start, -1 = the latest)."""
        n = run if run >= 0 else len(self.runs) + run
        return self.workdir / f"linphonec-{n}.log"

    def out_file(self, run: int = -1) -> Path:
        n = run if run >= 0 else len(self.runs) + run
        return self.workdir / f"linphonec-{n}.out"

    def start(self) -> None:
        """Start linphonec (again) with the same linphonerc; returns at once.

        Its stdin stays an open pipe: linphonec quits on end of input.
        """
        with self._lock:
            if self.running() or self._closed:
                return
            n = len(self.runs)
            env = {
                **os.environ,
                "HOME": str(self.workdir),
                "XDG_CONFIG_HOME": str(self.workdir / ".config"),
                "XDG_DATA_HOME": str(self.workdir / ".local" / "share"),
                "XDG_CACHE_HOME": str(self.workdir / ".cache"),
                "PULSE_SERVER": "unix:/nonexistent",  # no sound server: don't look for one
            }
            with self.workdir.joinpath(f"linphonec-{n}.out").open("wb") as out:
                proc = subprocess.Popen(
                    [
                        LINPHONEC,
                        "-c",
                        str(self.rc),
                        "-a",
                        "-d",
                        "6",
                        "-l",
                        str(self.workdir / f"linphonec-{n}.log"),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=env,
                    start_new_session=True,
                )
            self.runs.append(proc)
            # No sound card, even where one exists: linphonec plays and records files.
            # (Should linphonec die at once, wait_registered() tells why.)
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(b"soundcard use files\n")
                proc.stdin.flush()

    def command(self, line: str) -> None:
        """Type a linphonec command (``terminate``, ``quit``, ``soundcard use files``, ...)."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.poll() is None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    def kill(self) -> None:
        """Put the phone to sleep: SIGKILL, no un-REGISTER; the kernel closes its TCP flow."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

    def stop(self) -> None:
        """Clean-up: kill every run still alive; no later start() (a late push) starts one."""
        with self._lock:
            self._closed = True
        for proc in self.runs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

    def __enter__(self) -> Linphone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- observations (from the debug log of a run) -----
    def log_text(self, run: int = -1) -> str:
        path = self.log_file(run)
        return path.read_text(errors="replace") if path.exists() else ""

    def registered(self, run: int = -1) -> bool:
        """linphonec itself saw its REGISTER answered 200 in this run."""
        return _REGISTERED in self.log_text(run)

    def messages(self, run: int = -1) -> list[SipMessage]:
        """Every SIP message linphonec sent or received in this run, in order."""
        out: list[SipMessage] = []
        lines = self.log_text(run).splitlines()
        i = 0
        while i < len(lines):
            m = _SENT.search(lines[i]) or _RECEIVED.search(lines[i])
            i += 1
            if m is None:
                continue
            body: list[str] = []
            while i < len(lines) and not _LOG_LINE.match(lines[i]):
                body.append(lines[i])
                i += 1
            sent = m.re is _SENT
            out += [SipMessage(sent, m.group("peer"), text) for text in _split_messages(body)]
        return out

    def contacts_sent(self, run: int = -1) -> list[str]:
        """The Contact header of every REGISTER linphonec sent in this run."""
        return [
            c
            for msg in self.messages(run)
            if msg.out and msg.method == "REGISTER" and (c := msg.header("Contact")) is not None
        ]

    def contact_uri(self, run: int = -1) -> str:
        """The Contact URI (without ``<>`` and header params) of this run's last REGISTER."""
        contacts = self.contacts_sent(run)
        if not contacts:
            raise AssertionError(f"linphonec {self.user} sent no REGISTER in run {run}")
        return contacts[-1].split("<", 1)[1].split(">", 1)[0]

    def wait_registered(self, timeout: float = 10) -> None:
        """Until this run's REGISTER got its 200 (or the process died)."""

        def done() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"linphonec exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            return self.registered()

        wait_until(done, timeout, f"linphonec {self.user} to register", step=0.05)


def _split_messages(lines: list[str]) -> list[str]:
    """The SIP messages of one logged read or write: one read may carry several
    (Kamailio's 200 to the wake-up REGISTER and the held INVITE right behind it)."""
    messages: list[list[str]] = []
    for line in lines:
        if _START_LINE.match(line):
            messages.append([])
        if messages:
            messages[-1].append(line)
    return ["\n".join(m).strip() for m in messages]
