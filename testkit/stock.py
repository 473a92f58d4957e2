"""Kamailio's own stock configs, unmodified, adapted to the test site only by site settings.

Two flavours, both shipped by Debian's ``kamailio`` package:

``default``
    ``/etc/kamailio/kamailio.cfg`` with ``WITH_AUTH``, ``WITH_USRLOCDB`` and ``WITH_NAT``.
    The site settings are its ``kamailio-local.cfg`` (from
    ``tests/stock/default-local.cfg.in``).
``kemi``
    ``kamailio-basic-kemi.cfg`` + ``kamailio-basic-kemi-python.py`` with
    ``WITH_CFGPYTHON3``; site settings: ``kamailio-local.cfg`` (from
    ``tests/stock/kemi-local.cfg.in``) and ``tests/stock/kemi-site.patch`` (what the local
    file cannot change: db_postgres for db_mysql, the Python script's hard-coded path).

:func:`prepare` copies the files into a work dir, applies the caller's patches (written
against the pristine Debian files, e.g. Pushgate's) and then the site patch, and writes
``kamailio-local.cfg``. It returns the cfg to run and its ``-A`` defines.

Each Kamailio release has its own stock files (:data:`STOCK`): 5.6's are the host's
(Debian 12), 6.0's are in its root (testkit/kamailio.py): Debian 13's
``/etc/kamailio/kamailio.cfg``, and the KEMI example of the same release's source, which
Debian 13 no longer ships (scripts/kamailio-root.sh puts it in
``/usr/local/share/doc/kamailio/examples/kemi``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Literal

from testkit.kamailio import root_of

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "tests" / "stock"
DEBIAN_CFG = Path("/etc/kamailio/kamailio.cfg")
KEMI_EXAMPLES = Path("/usr/share/doc/kamailio/examples/kemi")
KEMI_CFG = "kamailio-basic-kemi.cfg"
KEMI_PY = "kamailio-basic-kemi-python.py"


@dataclass(frozen=True)
class StockFiles:
    """Where one Kamailio release's stock configs are, relative to the root it runs from,
    and the site patch its KEMI example needs."""

    default_cfg: str
    kemi_examples: str
    kemi_site_patch: str

    def default(self, root: Path | None) -> Path:
        return _in(root, self.default_cfg)

    def kemi(self, root: Path | None) -> Path:
        return _in(root, self.kemi_examples)


def _in(root: Path | None, path: str) -> Path:
    return Path(path) if root is None else root / path.lstrip("/")


STOCK: dict[str, StockFiles] = {
    "5.6": StockFiles(str(DEBIAN_CFG), str(KEMI_EXAMPLES), "kemi-site.patch"),
    "6.0": StockFiles(
        str(DEBIAN_CFG), "/usr/local/share/doc/kamailio/examples/kemi", "kemi-site-6.0.patch"
    ),
}

Flavour = Literal["default", "kemi"]
FLAVOURS: tuple[Flavour, ...] = ("default", "kemi")

# Feature switches per flavour (the KEMI example hard-defines its other WITH_*s).
SWITCHES: dict[Flavour, tuple[str, ...]] = {
    "default": ("WITH_AUTH", "WITH_USRLOCDB", "WITH_NAT"),
    "kemi": ("WITH_CFGPYTHON3",),
}


@dataclass(frozen=True)
class Site:
    """What the test site is: database, SIP port, domain, runtime dir."""

    db_url: str
    sip_port: int
    domain: str
    rundir: Path
    ws_port: int = 0
    """The WebSocket listener's port, used when the cfg runs with WITH_WEBSOCKET."""
    listen_ip: str = "127.0.0.1"
    """The SIP sockets' address (a cluster's nodes: 127.0.0.2, 127.0.0.3, ...)."""


@dataclass(frozen=True)
class StockConfig:
    cfg: Path
    """The cfg file to run (``kamailio -f``)."""
    defines: dict[str, str]
    """``-A`` defines: name -> value ("" for a bare switch)."""
    workdir: Path
    """The copied, patched files and ``kamailio-local.cfg``."""

    def loads(self, module: str) -> bool:
        """Whether a cfg file of the work dir has a ``loadmodule`` of ``module`` (textually,
        whatever #!ifdef it is in): ``evapi`` means a Pushgate patch is applied."""
        pattern = re.compile(rf'^\s*loadmodulex?\s+"{re.escape(module)}(\.so)?"', re.M)
        return any(
            pattern.search(path.read_text(errors="replace")) for path in self.workdir.glob("*.cfg")
        )


RTPPROXY_PORT = 7722
"""The stock configs' ``rtpproxy_sock`` (WITH_NAT): udp:127.0.0.1:7722, not a site setting."""


def udp_port_bound(port: int) -> bool:
    """Whether any local UDP socket is bound to ``port`` (from /proc/net/udp, no probing)."""
    wanted = f":{port:04X}"
    with open("/proc/net/udp") as table:
        return any(line.split()[1].endswith(wanted) for line in list(table)[1:])


def check_rtpproxy_port() -> None:
    """WITH_NAT's rtpproxy must find nothing at 127.0.0.1:7722 (or a real rtpproxy).

    With the port closed, the rtpproxy module's probe gets ICMP port unreachable at once
    (ECONNREFUSED) and disables the proxy; ``rtpproxy_manage()`` on a NATed call then fails
    at once ("no available proxies") and the stock scripts go on. Something bound there that
    does not answer makes every probe wait (rtpproxy_tout 1 s x rtpproxy_retr 5) instead:
    Kamailio's workers block for seconds at start and the first calls fail. The site cannot
    move the socket: the local file comes before the stock ``loadmodule "rtpproxy.so"`` and
    a module cannot be loaded twice.
    """
    if udp_port_bound(RTPPROXY_PORT):
        raise RuntimeError(
            f"something is bound to UDP port {RTPPROXY_PORT}, the stock configs' rtpproxy "
            "socket: a silent listener there blocks Kamailio's workers for seconds"
        )


def apply_patch(workdir: Path, patch: Path) -> None:
    """``patch -p1`` in ``workdir``; a patch that does not apply cleanly is an error.

    No fuzz: a hunk whose context changed in a new release must fail, not land elsewhere
    (5.6's KEMI patch "applies" to 6.0's example with fuzz 2, 258 lines off target).
    """
    r = subprocess.run(
        [
            "patch",
            "-p1",
            "--forward",
            "--batch",
            "--fuzz=0",
            "--no-backup-if-mismatch",
            "-i",
            str(patch),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"patch {patch} does not apply in {workdir}:\n{r.stdout}{r.stderr}")


def prepare(
    flavour: Flavour,
    workdir: Path,
    site: Site,
    patches: Sequence[Path] = (),
    version: str = "5.6",
) -> StockConfig:
    """Copy Kamailio ``version``'s stock config of ``flavour`` into ``workdir`` and adapt it
    to ``site``."""
    files, root = STOCK[version], root_of(version)
    workdir.mkdir(parents=True, exist_ok=True)
    if flavour == "default":
        cfg = workdir / DEBIAN_CFG.name
        shutil.copyfile(files.default(root), cfg)
    elif flavour == "kemi":
        cfg = workdir / KEMI_CFG
        shutil.copyfile(files.kemi(root) / KEMI_CFG, cfg)
        shutil.copyfile(files.kemi(root) / KEMI_PY, workdir / KEMI_PY)
    else:
        raise ValueError(f"unknown stock flavour {flavour!r}")
    for patch in patches:
        apply_patch(workdir, patch)
    if flavour == "kemi":
        apply_patch(workdir, SITE / files.kemi_site_patch)
    local = workdir / "kamailio-local.cfg"
    template = Template((SITE / f"{flavour}-local.cfg.in").read_text())
    local.write_text(
        template.substitute(
            db_url=site.db_url,
            sip_port=site.sip_port,
            domain=site.domain,
            rundir=site.rundir,
            ws_port=site.ws_port,
            listen_ip=site.listen_ip,
            python_script=workdir / KEMI_PY,
        )
    )
    return StockConfig(
        cfg=cfg,
        defines=dict.fromkeys(SWITCHES[flavour], ""),
        workdir=workdir,
    )


def accdb_columns(cfg: Path = KEMI_EXAMPLES / KEMI_CFG) -> list[str]:
    """The ``ALTER TABLE`` statements WITH_ACCDB asks for, from the cfg's own header."""
    block = re.search(r"^#!ifdef ACCDB_COMMENT\n(.*?)^#!endif", cfg.read_text(), re.M | re.S)
    if block is None:
        raise ValueError(f"{cfg}: no ACCDB_COMMENT block")
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]
