"""Run SIPp scenarios from tests/scenarios/<name>/ against our Kamailio."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from testkit.procs import free_port, free_udp_block, stop

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "tests" / "scenarios"
SIPP = "/usr/bin/sipp"
SETUP_FAILED = 254
"""SIPp's exit code when it cannot set up, e.g. a port taken between our check and its bind."""
SETUP_WINDOW = 2.0
"""Seconds after its start within which a SIPp that failed to bind a port is started again."""
SETUP_TRIES = 3
LOCAL_PORT = "{local_port}"
"""In ``keys`` values: replaced by the SIP port SIPp gets (e.g. a Contact's host:port),
also when it is started again on another port."""
MEDIA_PORT = "{media_port}"


def scenario(name: str) -> Path:
    """The one XML file of a scenario directory."""
    files = sorted((SCENARIOS / name).glob("*.xml"))
    if len(files) != 1:
        raise FileNotFoundError(f"scenario {name}: expected one .xml, found {files}")
    return files[0]


@dataclass
class SippRun:
    argv: list[str]
    proc: subprocess.Popen[bytes]
    logdir: Path
    name: str
    started: float
    template: list[str] = field(default_factory=list)
    """``argv`` with the ports still to fill in (``fill``)."""
    settled: threading.Event = field(default_factory=threading.Event)
    """Set once this run is past its set-up (started again if it could not bind a port)."""
    stopped: bool = False

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        self.settled.wait(timeout)
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"sipp {self.name} still running after {timeout}s") from None

    def alive(self) -> bool:
        return not self.settled.is_set() or self.proc.poll() is None

    def _watch_setup(self) -> None:
        """A SIPp that could not bind its SIP or media port (another process took it after
        free_port / free_udp_block looked) exits at once with 254: start it again on other
        ports. Under load this happened about once per full test run."""
        try:
            for _ in range(SETUP_TRIES - 1):
                try:
                    rc = self.proc.wait(SETUP_WINDOW)
                except subprocess.TimeoutExpired:
                    return
                if rc != SETUP_FAILED or self.stopped or "bind" not in self.output().lower():
                    return
                self.argv = fill(self.template)
                self.proc = spawn(self.argv, self.logdir, self.name)
        finally:
            self.settled.set()

    @property
    def log_file(self) -> Path:
        return self.logdir / f"{self.name}.log"

    def output(self) -> str:
        """SIPp's screen, then its error file (why a call failed)."""
        text = ""
        for suffix in ("out", "err"):
            path = self.logdir / f"{self.name}.{suffix}"
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def messages(self) -> str:
        path = self.logdir / f"{self.name}.msg"
        return path.read_text(errors="replace") if path.exists() else ""

    def received(self) -> list[str]:
        """Messages SIPp received, in order (from its -trace_msg file)."""
        out = []
        for block in self.messages().split("-----------------------------------------------"):
            _, _, body = block.partition("message received")
            if body:
                out.append(body.split("\n", 2)[-1].strip().replace("\r", ""))
        return out

    def final_response(self) -> tuple[int, str]:
        """(status, Reason header value or "") of the last final response received."""
        for message in reversed(self.received()):
            first = message.splitlines()[0] if message else ""
            if first.startswith("SIP/2.0 ") and not first.startswith("SIP/2.0 1"):
                reason = ""
                for line in message.splitlines()[1:]:
                    if line.lower().startswith("reason:"):
                        reason = line.split(":", 1)[1].strip()
                return int(first.split()[1]), reason
        raise AssertionError(f"sipp {self.name}: no final response in the trace")

    def logged(self) -> list[str]:
        return self.log_file.read_text().splitlines() if self.log_file.exists() else []

    def stop(self) -> None:
        self.stopped = True
        stop(self.proc)
        # The watcher may have started it again just before it saw ``stopped``.
        self.settled.wait(SETUP_WINDOW * SETUP_TRIES)
        stop(self.proc)


def fill(template: list[str], local_port: int | None = None) -> list[str]:
    """``template`` with fresh ports: SIPp's SIP port where the caller left it to us (and
    wherever ``LOCAL_PORT`` stands in a key), and its media ports."""
    port = str(local_port or free_port())
    media = str(free_udp_block())
    return [a.replace(LOCAL_PORT, port).replace(MEDIA_PORT, media) for a in template]


def spawn(argv: list[str], logdir: Path, label: str) -> subprocess.Popen[bytes]:
    with (logdir / f"{label}.out").open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def start(
    name: str,
    *,
    target_port: int,
    logdir: Path,
    target_host: str = "127.0.0.1",
    transport: str = "u1",
    keys: dict[str, str] | None = None,
    ooc: str | None = None,
    auth: tuple[str, str] | None = None,
    label: str | None = None,
    calls: int = 1,
    local_port: int | None = None,
    pause_ms: int = 0,
    rate: int = 10,
    inf: Path | None = None,
) -> SippRun:
    """Start SIPp in the background; ``wait()`` returns its exit code (0 = all calls passed).

    ``inf``: SIPp's injection file (``[field0]``... per call)."""
    logdir.mkdir(parents=True, exist_ok=True)
    label = label or name
    argv = [
        SIPP,
        f"{target_host}:{target_port}",
        "-sf",
        str(scenario(name)),
        "-t",
        transport,
        "-i",
        "127.0.0.1",
        "-p",
        str(local_port) if local_port else LOCAL_PORT,
        # Each SIPp its own media port: phones started together must not all bind 6000.
        "-mp",
        MEDIA_PORT,
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-nostdin",
        "-trace_msg",
        "-message_file",
        str(logdir / f"{label}.msg"),
        "-trace_logs",
        "-log_file",
        str(logdir / f"{label}.log"),
        "-trace_err",
        "-error_file",
        str(logdir / f"{label}.err"),
        "-max_recv_loops",
        "100",
        "-timeout_error",
        "-d",
        str(pause_ms),
    ]
    if ooc:
        argv += ["-oocsf", str(scenario(ooc))]
    if inf is not None:
        argv += ["-inf", str(inf)]
    if auth:
        argv += ["-au", auth[0], "-ap", auth[1]]
    for k, v in (keys or {}).items():
        argv += ["-key", k, v]
    filled = fill(argv, local_port)
    run = SippRun(
        argv=filled,
        proc=spawn(filled, logdir, label),
        logdir=logdir,
        name=label,
        started=time.monotonic(),
        template=argv,
    )
    threading.Thread(target=run._watch_setup, name=f"sipp-{label}", daemon=True).start()
    return run
