"""The whole Pushgate stack on loopback, for tests and the demo.

PostgreSQL (throwaway cluster) + Kamailio (our kamailio.cfg, or a stock config of
Kamailio's own: ``flavour`` "default" or "kemi", see testkit/stock.py) + pushd + fake
APNs (+ fake FCM). Phones and callers are SIPp scenarios; a phone that gets a push is
"woken" by starting its re-REGISTER scenario from the fake's push callback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testkit import sipp, stock
from testkit.certs import TestPki
from testkit.fake_apns import FakeApnsThread, PushRecord
from testkit.fake_fcm import FakeFcm, FcmRecord
from testkit.fake_webpush import FakeWebPush
from testkit.kamailio import Kamailio
from testkit.postgres import PostgresCluster
from testkit.procs import free_port, stop, tail, wait_until

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "pushgate.test"
FOREIGN_DOMAIN = "caller.example"
"""Test callers' From domain by default: requests from local users need digest auth."""
UPSTREAM_DB = "upstream"
"""Edge flavour: the upstream registrar's own database in the test cluster."""
EDGE_FLOW_SECRET = "edge-flow-secret-for-tests"
TEAM_PARAM_PREFIX = "ABCDE12345"
FCM_PROJECT = "pushgate-test"


def world_readable_tempdir(prefix: str) -> Path:
    """A temp dir PostgreSQL's own user can enter (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class Phone:
    """A SIPp phone: AoR user, password, push token and instance id."""

    user: str
    password: str
    token: str
    instance: str
    provider: str = "apns"
    param: str = f"{TEAM_PARAM_PREFIX}.com.example.app.voip"
    contact_host: str | None = None
    """Host:port to put in the Contact instead of the real one (a phone behind NAT)."""
    expires: int = 600
    outbound: bool = True
    """RFC 5626 client (reg-id + ;ob); False: instance only, as liblinphone and baresip do."""
    push: bool = True
    """RFC 8599 pn params in the Contact; False: a phone without push."""
    gruu: bool = False
    """Use the GRUU (``sip:user@domain;gr=<instance>``) as dialog Contact, as liblinphone does."""

    def keys(self) -> dict[str, str]:
        return {
            "domain": DOMAIN,
            "user": self.user,
            "provider": self.provider,
            "prid": self.token,
            "param": self.param,
            "instance": self.instance,
            "expires": str(self.expires),
            "contact_transport": "tcp",
            "ob": ";ob" if self.outbound else "",
            "regid": ";reg-id=1" if self.outbound else "",
            "pn": (
                f";pn-provider={self.provider};pn-prid={self.token};pn-param={self.param}"
                if self.push
                else ""
            ),
        }

    def dialog_contact(self, hostport: str) -> str:
        if self.gruu:
            return f"sip:{self.user}@{DOMAIN};gr=urn:uuid:{self.instance}"
        ob = ";ob" if self.outbound else ""
        return f"sip:{self.user}@{hostport};transport=tcp{ob}"


def port_open_quietly(port: int, proc: subprocess.Popen[bytes]) -> bool:
    """Listening check that does not consume socat's one connection: look at /proc/net/tcp."""
    if proc.poll() is not None:
        raise RuntimeError("socat exited")
    wanted = f":{port:04X} "
    with open("/proc/net/tcp") as table:
        return any(wanted in line and " 0A " in line for line in table)


def push_data(record: PushRecord | FcmRecord) -> dict[str, str]:
    """The application data of a push as the phone's app would see it."""
    raw = record.data if isinstance(record, FcmRecord) else record.payload
    return {k: str(v) for k, v in (raw or {}).items()}


def is_call_push(record: PushRecord | FcmRecord) -> bool:
    """A wake-up push (VoIP / call data message), not a notice."""
    if isinstance(record, FcmRecord):
        return (record.data or {}).get("kind") == "call"
    return record.push_type == "voip"


class Stack:
    def __init__(
        self,
        root: Path,
        pg: PostgresCluster,
        pki: TestPki,
        *,
        hold_timeout: int = 30,
        secret: str = "test-secret",
        defines: dict[str, str] | None = None,
        refresh_interval: float | None = None,
        tls: bool = False,
        flavour: str = "allinone",
        patches: Sequence[Path] = (),
        kamailio: str = "5.6",
        stock_from: str | None = None,
        websocket: bool = False,
    ) -> None:
        """``flavour``: "allinone" (our kamailio.cfg), a stock config ("default", "kemi")
        with ``patches`` applied to it (``defines`` are then extra ``-A`` defines), or
        "edge": our edge.cfg in front of an unmodified stock Kamailio registrar (the
        *upstream*, ``self.upstream``: Debian's default cfg on its own database), where
        phones register and callers call. ``kamailio``: the release to run
        (testkit.kamailio.KAMAILIO_VERSIONS); a stock config is then that release's own,
        or ``stock_from``'s (e.g. 5.6's files on 6.0: an operator's config kept across the
        upgrade)."""
        if flavour not in ("allinone", "edge") and flavour not in stock.FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}")
        if patches and flavour in ("allinone", "edge"):
            raise ValueError("patches apply to the stock flavours only")
        self.flavour = flavour
        self.root = root
        self.tls = tls
        self.refresh_interval = refresh_interval
        self.pg = pg
        self.pki = pki
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.kamailio = Kamailio(
            workdir=root / "kamailio",
            db_url=pg.url,
            hold_timeout=hold_timeout,
            secret=secret,
            extra=dict(defines or {}),
            tls=(pki.server_cert, pki.server_key, pki.ca_cert) if tls else None,
            version=kamailio,
            websocket=websocket,
        )
        self.kamailio.workdir.mkdir(parents=True, exist_ok=True)
        self.stock: stock.StockConfig | None = None
        self.upstream: Kamailio | None = None
        if flavour == "edge":
            self._use_edge()
        elif flavour != "allinone":
            self._use_stock(flavour, patches, stock_from or kamailio)
        self.webpush: FakeWebPush | None = None
        self.vapid_key_file = root / "vapid.pem"
        self.vapid_public_key = ""
        if websocket:
            # SIP over WS/WSS, Web Push served, our VAPID key advertised (+sip.vapid).
            from pushd import webpush_keys

            key = webpush_keys.generate(self.vapid_key_file)
            self.vapid_public_key = webpush_keys.public_key_b64(key)
            self.kamailio.extra = {
                "WITH_WEBSOCKET": "",
                "PUSHGATE_PROVIDERS": '"apns,fcm,webpush"',
                "PUSHGATE_VAPID_PUBLIC_KEY": f'"{self.vapid_public_key}"',
                **self.kamailio.extra,
            }
        self.apns: FakeApnsThread | None = None
        self.fcm: FakeFcm | None = None
        self._fcm_seen = 0
        self._stopping = threading.Event()
        self._tunnels: list[subprocess.Popen[bytes]] = []
        self.pushd_proc: subprocess.Popen[bytes] | None = None
        self.on_push: dict[str, Callable[[PushRecord | FcmRecord], None]] = {}
        self._push_times: dict[str, float] = {}
        self.push_log: list[tuple[float, PushRecord | FcmRecord]] = []
        """(wall-clock time, record) of every push the fakes saw, in order."""
        self._lock = threading.Lock()

    def _use_stock(
        self,
        flavour: str,
        patches: Sequence[Path],
        files_of: str,
        kamailio: Kamailio | None = None,
    ) -> None:
        """Run ``kamailio`` (default: the stack's own) with the stock config, prepared for
        its address and ports (a cluster prepares one per node)."""
        k = kamailio or self.kamailio
        site = stock.Site(
            db_url=k.db_url,
            sip_port=k.sip_port,
            domain=k.domain,
            rundir=k.rundir,
            ws_port=k.ws_port,
            listen_ip=k.listen_ip,
        )
        prepared = stock.prepare(
            "kemi" if flavour == "kemi" else "default",
            k.workdir / "etc",
            site,
            patches,
            version=files_of,
        )
        if kamailio is None:
            self.stock = prepared
        k.cfg = prepared.cfg
        k.cfg_defines = dict(prepared.defines)
        # Two SIP workers per socket instead of the stock 8: a small test machine.
        k.cfg_args = ("-n", "2")
        if prepared.loads("rtpproxy"):
            stock.check_rtpproxy_port()
        if patches:
            # Installed beside the operator's cfg, as docs/integrate.md says.
            shutil.copyfile(REPO / "pushgate.cfg", prepared.workdir / "pushgate.cfg")
            # Pushgate's site settings (pushgate.cfg #!trydef), as -A defines.
            k.cfg_defines.update(
                {
                    "WITH_PUSHGATE": "",
                    "PUSHGATE_SCRIPT": f'"{REPO / "kemi" / "native.py"}"',
                    "PUSHGATE_EVAPI_BIND": f'"127.0.0.1:{k.evapi_port}"',
                    "PUSHGATE_SECRET": f'"{k.secret}"',
                    "PUSHGATE_HOLD_TIMEOUT": str(k.hold_timeout),
                    "PUSHGATE_MSILO_PROXY": f'"sip:{k.listen_ip}:{k.sip_port}"',
                }
            )
        k.evapi = bool(patches)

    def _use_edge(self) -> None:
        k = self.kamailio
        up = self.upstream = Kamailio(
            workdir=self.root / "upstream", db_url=self.pg.url_for(UPSTREAM_DB), evapi=False
        )
        up.workdir.mkdir(parents=True, exist_ok=True)
        site = stock.Site(
            db_url=up.db_url, sip_port=up.sip_port, domain=up.domain, rundir=up.rundir
        )
        # Kamailio's own default cfg, site settings only: it knows nothing of push.
        prepared = stock.prepare("default", up.workdir / "etc", site)
        up.cfg, up.cfg_defines, up.cfg_args = prepared.cfg, dict(prepared.defines), ("-n", "2")
        stock.check_rtpproxy_port()
        k.cfg = REPO / "edge.cfg"
        defines = {
            "DBURL": f'"{k.db_url}"',
            "LISTEN_IP": "127.0.0.1",
            "SIP_PORT": str(k.sip_port),
            "RUNDIR": f'"{k.rundir}"',
            "CTL_SOCKET": f'"{k.ctl}"',
            "SIP_WORKERS": "2",
            "TCP_WORKERS": "2",
            "LOG_LEVEL": "2",
            "PUSHGATE_SCRIPT": f'"{REPO / "kemi" / "native.py"}"',
            "PUSHGATE_EVAPI_BIND": f'"127.0.0.1:{k.evapi_port}"',
            "PUSHGATE_SECRET": f'"{k.secret}"',
            "PUSHGATE_HOLD_TIMEOUT": str(k.hold_timeout),
            "PUSHGATE_MSILO_PROXY": f'"sip:127.0.0.1:{k.sip_port}"',
            "PUSHGATE_EDGE_UPSTREAM": f'"sip:127.0.0.1:{up.sip_port}"',
            "PUSHGATE_EDGE_FLOW_SECRET": f'"{EDGE_FLOW_SECRET}"',
        }
        if k.tls is not None:
            cert, key, ca = k.tls
            defines.update(
                {
                    "WITH_TLS": "",
                    "SIPS_PORT": str(k.sips_port),
                    "TLS_CERT": f'"{cert}"',
                    "TLS_KEY": f'"{key}"',
                    "TLS_CA": f'"{ca}"',
                }
            )
        k.cfg_defines = defines

    @property
    def caller_port(self) -> int:
        """Where callers send their INVITEs: the registrar (the upstream, in edge mode)."""
        return (self.upstream or self.kamailio).sip_port

    # ----- lifecycle -----
    def start(self, *, pushd: bool = True) -> Stack:
        if pushd and not self.kamailio.evapi:
            raise ValueError(f"{self.flavour}: the config has no evapi for pushd: pushd=False")
        if self.stock is not None:
            self.pg.create_stock_schema()
        self.pg.psql("DELETE FROM location; DELETE FROM subscriber; DELETE FROM silo")
        if self.upstream is not None:
            self.pg.create_database(UPSTREAM_DB)
            self.pg.psql("DELETE FROM location; DELETE FROM subscriber", db=UPSTREAM_DB)
            self.upstream.start()
        self.apns = FakeApnsThread(self.pki, on_record=self._record).__enter__()
        self.fcm = FakeFcm().start()
        (self.root / "fcm").mkdir(parents=True, exist_ok=True)
        self.fcm_account = self.fcm.make_service_account(self.root / "fcm", project_id=FCM_PROJECT)
        threading.Thread(target=self._watch_fcm, name="fcm-watch", daemon=True).start()
        if self.vapid_public_key:
            self.webpush = FakeWebPush(self.pki.server_cert, self.pki.server_key).start()
        self.kamailio.start()
        if pushd:
            self.start_pushd()
        return self

    def stop(self) -> None:
        for proc in self._tunnels:
            stop(proc)
        self.stop_pushd()
        self.kamailio.stop()
        if self.upstream is not None:
            self.upstream.stop()
        self._stopping.set()
        if self.apns is not None:
            self.apns.__exit__(None, None, None)
            self.apns = None
        if self.fcm is not None:
            self.fcm.stop()
            self.fcm = None
        if self.webpush is not None:
            self.webpush.stop()
            self.webpush = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- pushd -----
    def pushd_config(self, kamailio: Kamailio | None = None, name: str = "pushd") -> Path:
        """pushd's config for ``kamailio`` (default: ``self.kamailio``), as ``<name>.yaml``."""
        assert self.apns is not None
        cfg: dict[str, Any] = {
            "kamailio": {
                "evapi": f"127.0.0.1:{(kamailio or self.kamailio).evapi_port}",
                "secret": self.kamailio.secret,
                "reconnect_max_delay": 0.5,
            },
            "apns": {
                "auth": "token",
                "key_file": str(self.pki.apns_key),
                "key_id": self.pki.key_id,
                "team_id": self.pki.team_id,
                "environment": "production",
                "host": "127.0.0.1",
                "port": self.apns.port,
                "ca_file": str(self.pki.ca_cert),
            },
            "fcm": {
                "service_account_file": str(self.fcm_account.path),
                "base_url": self.fcm.url if self.fcm else "",
            },
            "retry": {"initial_delay": 0.1, "max_delay": 1},
            "log": {"level": "info"},
        }
        if self.webpush is not None:
            cfg["webpush"] = {
                "vapid_private_key_file": str(self.vapid_key_file),
                "subject": "mailto:ops@pushgate.test",
                "ca_file": str(self.pki.ca_cert),
            }
        if self.refresh_interval is not None:
            cfg["refresh"] = {"database": self.pg.dsn, "interval": self.refresh_interval}
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    @property
    def pushd_log(self) -> Path:
        return self.logs / "pushd.log"

    def start_pushd(self, wait: bool = True) -> None:
        self.pushd_proc = self.spawn_pushd(self.pushd_config(), self.pushd_log, wait=wait)

    def spawn_pushd(
        self, config: Path, log_path: Path, kamailio: Kamailio | None = None, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        """A pushd process with ``config``, its output in ``log_path``; with ``wait``, once
        it said hello to ``kamailio`` (default: ``self.kamailio``)."""
        kamailio = kamailio or self.kamailio

        def connections() -> int:
            return sum(1 for e in kamailio.timeline() if e.get("event") == "pushd_connected")

        before = connections()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pushd", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if not wait:
            return proc
        try:
            wait_until(
                lambda: connections() > before or proc.poll() is not None,
                20,
                f"pushd ({config.name}) to connect to kamailio",
            )
        except TimeoutError as exc:
            stop(proc)
            raise RuntimeError(f"{exc}\n{tail(log_path)}") from None
        if proc.poll() is not None:
            raise RuntimeError(f"pushd exited:\n{tail(log_path)}")
        return proc

    def stop_pushd(self) -> None:
        if self.pushd_proc is not None:
            with_cont = self.pushd_proc.poll() is None
            if with_cont:
                os.killpg(self.pushd_proc.pid, signal.SIGCONT)
            stop(self.pushd_proc)
            self.pushd_proc = None

    def kill_pushd(self) -> None:
        """SIGKILL: gone without a word, as in a crash (a paused pushd too)."""
        assert self.pushd_proc is not None
        os.killpg(self.pushd_proc.pid, signal.SIGKILL)
        self.pushd_proc.wait(5)
        self.pushd_proc = None

    def pause_pushd(self) -> None:
        """SIGSTOP: pushd hangs with its connection open."""
        assert self.pushd_proc is not None
        os.killpg(self.pushd_proc.pid, signal.SIGSTOP)

    # ----- subscribers and phones -----
    def add_subscriber(self, user: str, password: str) -> None:
        """Clear-text ``password`` for the stock configs (calculate_ha1), ``ha1`` for ours."""
        ha1 = hashlib.md5(f"{user}:{DOMAIN}:{password}".encode()).hexdigest()
        self.pg.query(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
            "VALUES (%s, %s, %s, %s, '')",
            (user, DOMAIN, password, ha1),
            db=UPSTREAM_DB if self.upstream is not None else "kamailio",
        )

    def phone(
        self, user: str, n: int = 1, password: str = "secret1", provider: str = "apns"
    ) -> Phone:
        """Subscriber ``user`` and its SIPp phone number ``n``: iPhone (apns) or Android (fcm)."""
        if n == 1:
            self.add_subscriber(user, password)
        token = hashlib.sha256(f"{user}-{n}".encode()).hexdigest()
        instance = f"00000000-0000-4000-8000-{n:012d}"
        if provider == "fcm":
            return Phone(
                user=user,
                password=password,
                token=f"fcm-{token[:40]}:APA91b",
                instance=instance,
                provider="fcm",
                param=FCM_PROJECT,
            )
        return Phone(user=user, password=password, token=token, instance=instance)

    def register(
        self,
        phone: Phone,
        *,
        keep_open_ms: int = 0,
        answer: bool = False,
        many: bool = False,
        ring: bool = False,
        take_message: bool = False,
        label: str | None = None,
        password: str | None = None,
        wake_token: str | None = None,
        answer_late: bool = False,
        node: Kamailio | None = None,
    ) -> sipp.SippRun:
        """REGISTER the phone; ``keep_open_ms`` = 0 means it goes to sleep right after.

        ``answer``: answer one call then stop SIPp (exit 97); ``answer_late``: the same,
        500 ms after ringing; ``many``: answer every call; ``ring``: ring until
        CANCELled, then stop SIPp. ``node``: a cluster's node to register on
        (testkit/cluster.py; default ``self.kamailio``).
        """
        node = node or self.kamailio
        ring_only = "phone_ring" if ring else "phone_take_message" if take_message else None
        answering = "phone_answer_late" if answer_late else "phone_answer" if answer else None
        ooc = "phone_answer_many" if many else answering or ring_only
        # SIPp's own port in the Contact (filled in by testkit.sipp, new if it restarts).
        hostport = phone.contact_host or f"127.0.0.1:{sipp.LOCAL_PORT}"
        extra = {"wake_token": wake_token} if wake_token else {}
        if self.tls:
            extra["contact_transport"] = "tls"
        return sipp.start(
            "phone_register_fast" if wake_token else "phone_register",
            target_port=self.tls_tunnel() if self.tls else node.sip_port,
            target_host=node.listen_ip,
            logdir=self.logs,
            transport="t1",
            keys={
                **phone.keys(),
                "contact_hostport": hostport,
                "dialog_contact": phone.dialog_contact(hostport),
                **extra,
            },
            auth=(phone.user, password or phone.password),
            ooc=ooc,
            pause_ms=keep_open_ms,
            label=label or f"register-{phone.user}-{time.monotonic_ns()}",
        )

    def tls_tunnel(self) -> int:
        """A one-connection TCP->TLS relay to Kamailio's TLS port (Debian's SIPp has no TLS).

        socat exits when the phone's connection closes, so the TLS flow dies with it, as
        a sleeping phone's does.
        """
        port = free_port()
        proc = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                f"OPENSSL:127.0.0.1:{self.kamailio.sips_port},cafile={self.pki.ca_cert},"
                "verify=1,commonname=localhost",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.logs / "socat.log").open("ab"),
            start_new_session=True,
        )
        self._tunnels.append(proc)
        wait_until(lambda: port_open_quietly(port, proc), 5, "the TLS tunnel")
        return port

    def register_without_credentials(self, phone: Phone, **keys: str) -> sipp.SippRun:
        return self._register_once("register_noauth", phone, None, keys)

    def register_refused(self, phone: Phone, **keys: str) -> sipp.SippRun:
        """An authenticated REGISTER the registrar refuses (400/423/555), with ``keys``."""
        return self._register_once("register_refused", phone, (phone.user, phone.password), keys)

    def register_scenario(
        self, name: str, phone: Phone, *, auth: tuple[str, str] | None = None, **keys: str
    ) -> sipp.SippRun:
        """One authenticated REGISTER scenario ``name`` (tests/scenarios/<name>) for
        ``phone``'s AoR; ``auth``: other credentials than the phone's own."""
        return self._register_once(name, phone, auth or (phone.user, phone.password), keys)

    def _register_once(
        self,
        name: str,
        phone: Phone,
        auth: tuple[str, str] | None,
        keys: dict[str, str],
    ) -> sipp.SippRun:
        return sipp.start(
            name,
            target_port=self.kamailio.sip_port,
            logdir=self.logs,
            transport="t1",
            keys={"contact_hostport": f"127.0.0.1:{sipp.LOCAL_PORT}", **phone.keys(), **keys},
            auth=auth,
            label=f"{name}-{phone.user}-{time.monotonic_ns()}",
        )

    def register_and_sleep(self, phone: Phone, node: Kamailio | None = None) -> None:
        run = self.register(phone, node=node)
        rc = run.wait(15)
        assert rc == 0, f"phone registration failed (rc={rc}):\n{run.output()[-2000:]}"

    def wake_on_push(
        self,
        phone: Phone,
        answer_window_ms: int = 20000,
        many: bool = False,
        ring: bool = False,
        delay: float = 0.0,
        fast: bool = False,
        node: Callable[[], Kamailio] | None = None,
    ) -> list[sipp.SippRun]:
        """When the fake APNs accepts a push for this phone, start its wake-up REGISTER.

        A phone already awake (its wake-up SIPp still running) is not woken twice.
        ``node``: where the woken phone registers (a cluster's node, chosen at wake-up).
        """
        started: list[sipp.SippRun] = []

        def wake(record: PushRecord | FcmRecord) -> None:
            if delay:
                time.sleep(delay)
            with self._lock:
                if started and started[-1].alive():
                    return
                # (A SIPp that cannot bind its ports is started again by testkit.sipp.)
                started.append(
                    self.register(
                        phone,
                        keep_open_ms=answer_window_ms,
                        answer=not many and not ring,
                        many=many,
                        ring=ring,
                        label=f"wake-{phone.user}-{phone.instance[-4:]}-{len(started)}"
                        f"-{time.monotonic_ns()}",
                        wake_token=push_data(record).get("wake_token") if fast else None,
                        node=node() if node is not None else None,
                    )
                )

        self.on_push[phone.token] = wake
        return started

    def send_message(
        self, callee: str, text: str, label: str = "sender", caller_domain: str = FOREIGN_DOMAIN
    ) -> sipp.SippRun:
        return sipp.start(
            "sender_message",
            target_port=self.caller_port,
            logdir=self.logs,
            keys={"domain": DOMAIN, "callee": callee, "text": text, "caller_domain": caller_domain},
            label=label,
        )

    def call(
        self,
        callee: str,
        *,
        expect_answer: bool,
        talk_ms: int = 300,
        label: str = "caller",
        caller_domain: str = FOREIGN_DOMAIN,
        node: Kamailio | None = None,
    ) -> sipp.SippRun:
        """Bob calls ``callee`` from ``caller_domain``: a foreign one by default (no digest
        auth); from ``DOMAIN`` the call is a local user's and is challenged (407).
        ``node``: a cluster's node to call into."""
        return sipp.start(
            "caller_call" if expect_answer else "caller_fail",
            target_port=node.sip_port if node is not None else self.caller_port,
            target_host=node.listen_ip if node is not None else "127.0.0.1",
            logdir=self.logs,
            keys={"domain": DOMAIN, "callee": callee, "caller_domain": caller_domain},
            pause_ms=talk_ms,
            label=label,
        )

    # ----- observations -----
    def _watch_fcm(self) -> None:
        """The fake FCM has no callback: poll its records to wake Android phones."""
        while not self._stopping.wait(0.01):
            fcm = self.fcm
            if fcm is None:
                return
            records = fcm.messages
            for record in records[self._fcm_seen :]:
                if record.token is not None:
                    self._record(record)
            self._fcm_seen = len(records)

    def _record(self, record: PushRecord | FcmRecord) -> None:
        if record.token is None:
            return
        with self._lock:
            now = time.time()
            self._push_times[record.token] = now
            self.push_log.append((now, record))
            handler = self.on_push.get(record.token)
        if handler is not None and record.status == 200 and is_call_push(record):
            threading.Thread(target=handler, args=(record,), daemon=True).start()

    def push_wall_time(self, token: str) -> float | None:
        """Wall-clock time the fake APNs accepted the last push for ``token``."""
        with self._lock:
            return self._push_times.get(token)

    def events(self, name: str | None = None) -> list[dict[str, str]]:
        return [e for e in self.kamailio.timeline() if name is None or e.get("event") == name]

    def count_events(self, name: str) -> int:
        return len(self.events(name))

    def bindings(self, user: str) -> list[str]:
        """Contacts of ``user``: from the ``location`` table (ours writes through), or from
        usrloc's memory for the stock configs (db_mode 2: the table lags by up to 60 s)."""
        if self.stock is None:
            rows = self.pg.query("SELECT contact FROM location WHERE username = %s", (user,))
            return [str(row[0]) for row in rows]
        return ul_contacts(self.kamailio.kamcmd("ul.dump"), user)

    def upstream_bindings(self, user: str) -> list[str]:
        """Edge flavour: the contacts the upstream registrar holds for ``user``."""
        assert self.upstream is not None
        return ul_contacts(self.upstream.kamcmd("ul.dump"), user)


def ul_contacts(dump: str, user: str) -> list[str]:
    """The contacts (``Address:``) of AoR ``user`` in ``kamcmd ul.dump`` output."""
    contacts: list[str] = []
    aor: str | None = None
    for line in dump.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "AoR":
            aor = value
        elif key == "Address" and aor == user:
            contacts.append(value)
    return contacts
