"""Run the real Kamailio in the foreground, private rundir and ports: our kamailio.cfg, or
another cfg file (a stock config, testkit/stock.py) with its own defines.

Kamailio 5.6 is the host's (Debian 12). Kamailio 6.0 runs from a Debian 13 root that
``scripts/kamailio-root.sh`` builds and caches (``.cache/trixie``): ``chroot ROOT
/usr/sbin/kamailio`` inside a private mount namespace (``unshare -m``) where the repo and
the test's directories are bind-mounted at their own paths, so every path in the argv
and the cfg means the same inside; the mounts vanish with the process.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from testkit.procs import free_port, port_open, stop, tail, wait_until

REPO = Path(__file__).resolve().parent.parent
KAMAILIO = "/usr/sbin/kamailio"

KAMAILIO_VERSIONS = ("5.6", "6.0")
"""The Kamailio releases Pushgate is tested on (Debian 12's and Debian 13's)."""
ROOTS: dict[str, Path | None] = {"5.6": None, "6.0": REPO / ".cache" / "trixie"}
"""Where each release runs from: None is the host, else a root of scripts/kamailio-root.sh."""
ROOT_STAMP = ".pushgate-root"

# Run "$@" chrooted into $1 in this (private) mount namespace, with the directories given
# before "--" bind-mounted at the same paths inside, and /proc and /dev.
_IN_ROOT = """
root=$1; shift
while [ "$1" != -- ]; do
  mkdir -p "$root$1"
  mount --bind "$1" "$root$1"
  shift
done
shift
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
exec chroot "$root" "$@"
"""


def root_of(version: str) -> Path | None:
    """The OS root Kamailio ``version`` runs from (None: the host); it must be built."""
    if version not in ROOTS:
        raise ValueError(f"unknown Kamailio version {version!r} (known: {KAMAILIO_VERSIONS})")
    root = ROOTS[version]
    if root is not None and not (root / ROOT_STAMP).is_file():
        raise RuntimeError(
            f"no Kamailio {version} root at {root}: run `bash scripts/kamailio-root.sh` "
            "(make bootstrap does)"
        )
    return root


def bind_dirs(paths: list[Path]) -> list[Path]:
    """The fewest directories to bind-mount so that ``paths`` exist inside a root: all of
    /tmp for anything under it (test temp dirs come and go), else the path itself."""
    tmp = Path("/tmp")
    wanted = sorted({tmp if p.is_relative_to(tmp) else p for p in paths})
    out: list[Path] = []
    for p in wanted:
        if not any(p.is_relative_to(d) for d in out):
            out.append(p)
    return out


def in_root(root: Path, argv: list[str], binds: list[Path]) -> list[str]:
    """``argv`` run chrooted into ``root`` in a private mount namespace with ``binds``."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-ec",
        _IN_ROOT,
        "sh",
        str(root.resolve()),
        *(str(d) for d in bind_dirs(binds)),
        "--",
        *argv,
    ]


@dataclass
class Kamailio:
    """One Kamailio instance. ``defines`` override the cfg's #!trydef values."""

    workdir: Path
    db_url: str
    sip_port: int = field(default_factory=free_port)
    listen_ip: str = "127.0.0.1"
    """Address SIP listens on (a cluster's nodes: 127.0.0.2, 127.0.0.3, ...)."""
    evapi_port: int = field(default_factory=free_port)
    domain: str = "pushgate.test"
    secret: str = "test-secret"
    hold_timeout: int = 30
    extra: dict[str, str] = field(default_factory=dict)
    tls: tuple[Path, Path, Path] | None = None
    """(certificate, key, CA) to listen for SIP over TLS on ``sips_port`` (WITH_TLS)."""
    sips_port: int = field(default_factory=free_port)
    websocket: bool = False
    """SIP over WebSocket (WITH_WEBSOCKET): WS on ``ws_port``, and WSS on ``wss_port``
    when ``tls`` is set too."""
    ws_port: int = field(default_factory=free_port)
    wss_port: int = field(default_factory=free_port)
    cfg: Path | None = None
    """Another cfg file to run (a stock config, see testkit/stock.py) instead of ours."""
    cfg_defines: dict[str, str] | None = None
    """The ``-A`` defines for ``cfg`` (instead of ``defines()``, which are our cfg's)."""
    cfg_args: tuple[str, ...] = ()
    """More command-line options for ``cfg`` (e.g. ``-n 2``)."""
    evapi: bool = True
    """Whether the cfg loads evapi: readiness then includes the evapi port."""
    version: str = "5.6"
    """Kamailio release to run (``KAMAILIO_VERSIONS``): 5.6 is the host's, 6.0 a root's."""
    shm_mb: int = 64
    """Shared memory (``-m``), MB."""
    pkg_mb: int = 8
    """Private memory per process (``-M``), MB."""
    mem_manager: str | None = None
    """Kamailio's memory manager (``-x``: ``qm``, ``fm``, ``tlsf``); None: its default."""
    environ: dict[str, str] = field(default_factory=dict)
    """More environment variables for Kamailio (and its Python)."""
    wrapper: tuple[str, ...] = ()
    """A command to run Kamailio under (e.g. valgrind and its options)."""
    start_timeout: float = 20.0
    """Seconds to wait for Kamailio to listen."""
    repo: Path = REPO
    """Source tree of kamailio.cfg, pushgate.cfg and kemi/ (another checkout: A/B runs)."""
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "kamailio.log"

    @property
    def rundir(self) -> Path:
        return self.workdir / "run"

    @property
    def ctl(self) -> str:
        return f"unix:{self.rundir}/kamailio_ctl"

    def defines(self) -> dict[str, str]:
        d = {
            "DBURL": f'"{self.db_url}"',
            "SIP_DOMAIN": f'"{self.domain}"',
            "LISTEN_IP": self.listen_ip,
            "SIP_PORT": str(self.sip_port),
            "KEMI_SCRIPT": f'"{self.repo / "kemi" / "pushgate_kemi.py"}"',
            "PUSHGATE_EVAPI_BIND": f'"127.0.0.1:{self.evapi_port}"',
            "PUSHGATE_SECRET": f'"{self.secret}"',
            "PUSHGATE_HOLD_TIMEOUT": str(self.hold_timeout),
            "PUSHGATE_MSILO_PROXY": f'"sip:{self.listen_ip}:{self.sip_port}"',
            "RUNDIR": f'"{self.rundir}"',
            "CTL_SOCKET": f'"{self.ctl}"',
            "SIP_WORKERS": "2",
            "TCP_WORKERS": "2",
            "LOG_LEVEL": "2",
        }
        if self.tls is not None:
            cert, key, ca = self.tls
            d.update(
                {
                    "WITH_TLS": "",
                    "SIPS_PORT": str(self.sips_port),
                    "TLS_CERT": f'"{cert}"',
                    "TLS_KEY": f'"{key}"',
                    "TLS_CA": f'"{ca}"',
                }
            )
        if self.websocket:
            d.update({"WITH_WEBSOCKET": "", "WS_PORT": str(self.ws_port)})
            if self.tls is not None:
                d["WSS_PORT"] = str(self.wss_port)
        d.update(self.extra)
        return d

    def argv(self, check_only: bool = False) -> list[str]:
        if self.cfg is None:
            argv = [KAMAILIO, "-f", str(self.repo / "kamailio.cfg")]
            defines = self.defines()
        else:
            argv = [KAMAILIO, "-f", str(self.cfg), *self.cfg_args]
            defines = {**(self.cfg_defines or {}), **self.extra}
        for name, value in defines.items():
            argv += ["-A", f"{name}={value}" if value else name]
        if check_only:
            argv = [*argv, "-c"]
        else:
            argv += ["-DD", "-E", "-m", str(self.shm_mb), "-M", str(self.pkg_mb)]
            if self.mem_manager:
                argv += ["-x", self.mem_manager]
        root = self.root
        if root is None:
            return argv
        binds = [REPO, self.repo.resolve(), self.workdir.resolve()]
        if self.cfg is not None:
            binds.append(self.cfg.resolve().parent)
        binds += [p.resolve().parent for p in self.tls or ()]
        return in_root(root, argv, binds)

    @property
    def root(self) -> Path | None:
        """The OS root this Kamailio runs from (None: the host's Kamailio)."""
        return root_of(self.version)

    def check(self) -> subprocess.CompletedProcess[str]:
        self.rundir.mkdir(parents=True, exist_ok=True)
        return subprocess.run(self.argv(check_only=True), capture_output=True, text=True)

    def start(self) -> None:
        self.rundir.mkdir(parents=True, exist_ok=True)
        # Kamailio's Python finds Pushgate's packages the way an install provides them.
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(self.repo)}
        env.update(self.environ)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [*self.wrapper, *self.argv()],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=self.workdir,
            )
        try:
            wait_until(self._ready, self.start_timeout, "kamailio to listen")
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{tail(self.log)}") from None

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"kamailio exited with {self._proc.returncode}:\n{tail(self.log)}")
        return (
            port_open(self.sip_port, self.listen_ip)
            and (not self.evapi or port_open(self.evapi_port))
            and (self.rundir / "kamailio_ctl").exists()
        )

    @property
    def pid(self) -> int | None:
        """The main process (its children are Kamailio's workers)."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        stop(self._proc, timeout=10)

    def kamcmd(self, *args: str) -> str:
        """Kamailio's RPC through its ctl socket (the host's kamcmd speaks to 6.0 too)."""
        r = subprocess.run(
            ["kamcmd", "-s", self.ctl, *args], capture_output=True, text=True, timeout=10
        )
        if r.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def timeline(self) -> list[dict[str, str]]:
        """The ``pushgate:`` event lines of the log, parsed into dicts."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if "pushgate: t=" not in line:
                continue
            fields: dict[str, str] = {}
            for token in line.split("pushgate: ", 1)[1].split():
                k, _, v = token.partition("=")
                if v:
                    fields[k] = v
            out.append(fields)
        return out
