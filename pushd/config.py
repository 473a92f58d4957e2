"""pushd configuration: one YAML file, validated completely at start.

Every problem is a :class:`ConfigError` naming the file and the dotted key
(``pushd.yaml: apns.key_id: required when apns.auth is token``); unknown keys are
errors too, so a typo never silently falls back to a default. ``load(...,
check_files=True)`` (what the daemon and ``--check-config`` use) also opens the
credential files and parses them, so a bad .p8 fails at start, not on the first call.

The provider sections become :mod:`pushd.provider_settings` objects, the very ones the
providers take; that module is dependency-free, so this one loads without any provider.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pushd.model import Environment, ProviderName
from pushd.provider_settings import ApnsSettings, FcmSettings, WebpushSettings
from pushd.retry import RetryPolicy

log = logging.getLogger("pushd.config")

_APPLE_ID = re.compile(r"[A-Z0-9]{10}")
# Characters no value of ours can hold: C0 controls but tab and line breaks, DEL, and lone
# surrogates (YAML's "\udcff"), which no file name, header or libpq string can carry.
_UNUSABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?", re.ASCII)
_HOST_PORT = re.compile(r"\[([^\]]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", re.ASCII)
_URL = re.compile(
    r"https?://(\[[^\]/]+\]|[^:/?#\[\]]+)(:[0-9]{1,5})?([/?#][\x21-\x7e]*)?", re.ASCII
)
# What py_vapid accepts as sub: a mailto: address or an https: origin.
_VAPID_SUBJECT = re.compile(
    r"mailto:[^@\s]+@(localhost|[\w-]+(\.[\w-]+)+)|https://(localhost|[\w-]+\.[\w.-]+)",
    re.ASCII,
)
_LOG_LEVELS = ("debug", "info", "warning", "error")
_SA_FIELDS = ("type", "project_id", "private_key_id", "private_key", "client_email")


class ConfigError(Exception):
    """The configuration is unusable; ``str()`` is the operator-facing message."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = file
        self.key = key
        self.message = message


class Secret:
    """A shared secret that never shows up in a repr, a log line or a traceback."""

    __slots__ = ("_file", "_value")

    def __init__(self, value: str | None = None, *, file: Path | None = None) -> None:
        if (value is None) == (file is None):
            raise ValueError("Secret needs exactly one of value or file")
        self._value = value
        self._file = file

    @property
    def file(self) -> Path | None:
        return self._file

    def reveal(self) -> str:
        """The secret itself; a file is read on each call so a rotated secret is picked up."""
        if self._value is not None:
            return self._value
        assert self._file is not None
        return self._file.read_text(encoding="utf-8").strip()

    def __repr__(self) -> str:
        return f"Secret(file={str(self._file)!r})" if self._file else "Secret('***')"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self._value, self._file) == (other._value, other._file)

    def __hash__(self) -> int:
        return hash((self._value, self._file))


@dataclass(frozen=True, kw_only=True)
class KamailioConfig:
    host: str = "127.0.0.1"
    """evapi address pushd connects to."""
    port: int = 8448
    secret: Secret
    """Presented in the ``hello``; must equal PUSHGATE_SECRET in kamailio.cfg (pushgate.cfg)."""
    reconnect_max_delay: float = 5.0
    """Cap (s) on the reconnect backoff when Kamailio is down."""

    @property
    def evapi(self) -> str:
        return _join_host_port(self.host, self.port)


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """The HTTP API (``pushd.http_api``); not started unless ``token`` is set."""

    host: str = "127.0.0.1"
    port: int = 8449
    token: Secret | None = None


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str = "info"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    max_in_flight: int = 1000
    """Pushes worked on at once; more are answered give_up at once (flood guard)."""
    result_queue: int = 10000
    """Results kept while Kamailio is unreachable; the oldest are dropped beyond this."""
    shutdown_grace: float = 5.0
    """Seconds a stopping pushd waits for in-flight pushes."""


@dataclass(frozen=True, kw_only=True)
class RefreshConfig:
    """Binding refresh by push (``pushd.refresh``, docs/refresh.md)."""

    database: Secret
    """libpq DSN of Kamailio's usrloc database (``location`` table); a secret."""
    interval: float = 30.0
    """Seconds between two reads of the location table."""
    lead: float = 150.0
    """Push this many seconds before a binding expires (RFC 8599 §5.5: at least 120)."""
    lease: float = 60.0
    """Seconds a claimed refresh stays this pushd's without word that it went out (a
    verdict, or the renewal each cycle while it is retried); then any pushd may take it:
    a pushd killed between claim and push loses no refresh."""
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path
    kamailio: KamailioConfig
    apns: ApnsSettings | None = None
    fcm: FcmSettings | None = None
    webpush: WebpushSettings | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    api: ApiConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    refresh: RefreshConfig | None = None

    @property
    def providers(self) -> tuple[ProviderName, ...]:
        out = []
        if self.apns is not None:
            out.append(ProviderName.APNS)
        if self.fcm is not None:
            out.append(ProviderName.FCM)
        if self.webpush is not None:
            out.append(ProviderName.WEBPUSH)
        return tuple(out)

    def summary(self) -> str:
        """One line for ``--check-config`` and the start-up log; no secrets."""
        parts = [f"kamailio={self.kamailio.evapi}"]
        if self.apns is not None:
            a = self.apns
            who = f"key_id={a.key_id} team_id={a.team_id}" if a.auth == "token" else "certificate"
            host = f" host={_join_host_port(a.host, a.port)}" if a.host else ""
            parts.append(f"apns=({who} env={a.default_environment}{host})")
        if self.fcm is not None:
            project = self.fcm.project_id or "?"
            parts.append(f"fcm=(project={project} base_url={self.fcm.base_url})")
        if self.webpush is not None:
            parts.append(f"webpush=(vapid={self.webpush.public_key or '?'})")
        r = self.retry
        parts.append(f"retry={r.initial_delay:g}s..{r.max_delay:g}s x{r.multiplier:g}")
        parts.append(f"log={self.log.level}/{self.log.format}")
        if self.refresh is not None and self.refresh.enabled:
            rf = self.refresh
            parts.append(f"refresh=every {rf.interval:g}s lead {rf.lead:g}s lease {rf.lease:g}s")
        return " ".join(parts)


def load(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and validate ``path``. Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 text: {exc}") from exc
    return loads(text, path=path, check_files=check_files)


def loads(text: str, *, path: Path, check_files: bool = False) -> Config:
    """Validate ``text`` as the YAML held by ``path`` (not read here: relative paths in it
    resolve against its directory). Raises :class:`ConfigError`."""
    src = str(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # SafeLoader subclass: no objects
    except _DuplicateKey as exc:
        raise ConfigError(src, "", str(exc)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(src, "", f"not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(src, "", "not valid YAML: nested too deeply") from None
    except (ValueError, TypeError) as exc:
        # PyYAML's own constructors on an explicit tag: "!!float nan x", "!!int x".
        raise ConfigError(src, "", f"not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(src, "", "must be a YAML mapping of sections")
    return _Parser(src, path.resolve().parent, check_files).config(data, path)


def parse(data: Mapping[str, Any], *, source: str = "pushd.yaml", base_dir: Path) -> Config:
    """Validate an already-loaded mapping without touching any file (for tests and tools)."""
    return _Parser(source, base_dir, check_files=False).config(data, base_dir / source)


class _DuplicateKey(yaml.YAMLError):
    pass


# libyaml's parser when PyYAML was built with it (PyPI's wheels, Debian's python3-yaml):
# the same documents, the same safe constructors, ten times faster than pure Python.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """safe_load, except that a key given twice is an error instead of last-one-wins."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *defaults": flatten_mapping merges, later keys win
        key = loader.construct_object(key_node)
        try:
            again = key in seen
        except TypeError:  # "? [a, b]": a list or mapping as a key
            raise yaml.constructor.ConstructorError(
                None, None, f"found unhashable key {type(key).__name__}", key_node.start_mark
            ) from None
        if again:
            line = key_node.start_mark.line + 1
            raise _DuplicateKey(f"line {line}: duplicate key {key!r}")
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


class _Section:
    """Typed, key-tracking access to one mapping; :meth:`finish` rejects unknown keys."""

    def __init__(self, src: str, prefix: str, data: Mapping[Any, Any]) -> None:
        self.src = src
        self.prefix = prefix
        self.data = data
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.src, self.key(name), message)

    def raw(self, name: str) -> Any:
        """The value, or None when absent or null (``key:`` with nothing after it)."""
        self._seen.add(name)
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def opt_str(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            # `key_id: 0123456789` is a number to YAML and would lose its leading zero.
            raise self.error(name, f"must be a string (got the number {value!r}; quote it)")
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, "must be a non-empty string")
        bad = _UNUSABLE.search(value)
        if bad:
            raise self.error(name, f"must not contain {bad.group()!r}")
        return value.strip()

    def req_str(self, name: str, why: str = "required") -> str:
        value = self.opt_str(name)
        if value is None:
            raise self.error(name, why)
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.opt_str(name)
        if value is None:
            return default
        if value.lower() not in options:
            raise self.error(name, f"must be one of {', '.join(options)} (got {value!r})")
        return value.lower()

    def number(
        self, name: str, default: float, *, low: float, high: float, low_open: bool = False
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        # YAML booleans are ints in Python; `timeout: yes` is a mistake, not 1 second.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"must be a number (got {value!r})")
        ok = (value > low if low_open else value >= low) and value <= high
        if not ok:
            bracket = "(" if low_open else "["
            raise self.error(name, f"must be in {bracket}{low:g}, {high:g}] (got {value!r})")
        return float(value)

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer (got {value!r})")
        if not low <= value <= high:
            raise self.error(name, f"must be in [{low}, {high}] (got {value})")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false (got {value!r})")
        return value

    def section(self, name: str) -> _Section | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.error(name, "must be a mapping")
        return _Section(self.src, self.key(name), value)

    def finish(self) -> None:
        for name in self.data:
            if name not in self._seen:
                known = ", ".join(sorted(self._seen))
                raise ConfigError(
                    self.src, self.key(str(name)), f"unknown key (known keys: {known})"
                )


class _Parser:
    def __init__(self, src: str, base_dir: Path, check_files: bool) -> None:
        self.src = src
        self.base_dir = base_dir
        self.check_files = check_files

    def config(self, data: Mapping[Any, Any], path: Path) -> Config:
        top = _Section(self.src, "", data)
        kam = top.section("kamailio")
        if kam is None:
            raise ConfigError(self.src, "kamailio", "section required (evapi address and secret)")
        kamailio = self.kamailio(kam)
        apns_s, fcm_s = top.section("apns"), top.section("fcm")
        apns = self.apns(apns_s) if apns_s else None
        fcm = self.fcm(fcm_s) if fcm_s else None
        webpush_s = top.section("webpush")
        webpush = self.webpush(webpush_s) if webpush_s else None
        retry_s = top.section("retry")
        retry = self.retry(retry_s) if retry_s else RetryPolicy()
        api_s = top.section("api")
        api = self.api(api_s) if api_s else None
        log_s = top.section("log")
        log_cfg = self.log(log_s) if log_s else LogConfig()
        limits_s = top.section("limits")
        limits = self.limits(limits_s) if limits_s else LimitsConfig()
        refresh_s = top.section("refresh")
        refresh = self.refresh(refresh_s, path) if refresh_s else None
        top.finish()
        if apns is None and fcm is None and webpush is None:
            raise ConfigError(
                self.src, "apns", "at least one provider (apns, fcm or webpush) is required"
            )
        if self.check_files and not kamailio.secret.file:
            self._warn_if_readable(path, "holds kamailio.secret")
        return Config(
            path=path,
            kamailio=kamailio,
            apns=apns,
            fcm=fcm,
            webpush=webpush,
            retry=retry,
            api=api,
            log=log_cfg,
            limits=limits,
            refresh=refresh,
        )

    # -- sections --------------------------------------------------------------------------

    def kamailio(self, s: _Section) -> KamailioConfig:
        host, port = self.host_port(s, "evapi", "127.0.0.1", 8448)
        inline = s.opt_str("secret")
        secret_file = self.path(s, "secret_file")
        if inline is not None and secret_file is not None:
            raise s.error("secret", "give either secret or secret_file, not both")
        if inline is None and secret_file is None:
            raise s.error("secret", "required (or secret_file): must match PUSHGATE_SECRET")
        if inline is not None and re.search(r"[\x00-\x1f]", inline):
            raise s.error("secret", "must be one line (it is a #!define in kamailio.cfg)")
        if secret_file is not None:
            secret = Secret(file=secret_file)
            if self.check_files:
                self.require_file(s, "secret_file", secret_file)
                try:
                    empty = not secret.reveal()
                except (OSError, UnicodeDecodeError) as exc:
                    raise s.error("secret_file", f"cannot read {secret_file}: {exc}") from exc
                if empty:
                    raise s.error("secret_file", f"{secret_file} is empty")
                if re.search(r"[\x00-\x1f\x7f]", secret.reveal()):
                    raise s.error("secret_file", f"{secret_file} must hold one line")
                self._warn_if_readable(secret_file, "is kamailio.secret_file")
        else:
            assert inline is not None
            secret = Secret(inline)
        delay = s.number("reconnect_max_delay", 5.0, low=0.1, high=300.0)
        s.finish()
        return KamailioConfig(host=host, port=port, secret=secret, reconnect_max_delay=delay)

    def apns(self, s: _Section) -> ApnsSettings:
        auth = s.choice("auth", ("token", "certificate"), "token")
        key_file = self.path(s, "key_file")
        key_id = s.opt_str("key_id")
        team_id = s.opt_str("team_id")
        cert_file = self.path(s, "cert_file")
        if auth == "token":
            if cert_file is not None:
                raise s.error("cert_file", "only used when apns.auth is certificate")
            for name, value in (("key_file", key_file), ("key_id", key_id), ("team_id", team_id)):
                if value is None:
                    raise s.error(name, "required when apns.auth is token")
            for name, value in (("key_id", key_id), ("team_id", team_id)):
                if value is not None and not _APPLE_ID.fullmatch(value):
                    raise s.error(name, f"must be 10 characters A-Z/0-9 (got {value!r})")
        else:
            for name, value in (("key_file", key_file), ("key_id", key_id), ("team_id", team_id)):
                if value is not None:
                    raise s.error(name, "only used when apns.auth is token")
            if cert_file is None:
                raise s.error("cert_file", "required when apns.auth is certificate")
        env = s.choice("environment", tuple(e.value for e in Environment), "production")
        host = s.opt_str("host")
        if host is not None and not _usable_host(host):
            raise s.error("host", f"must be a host name or IP address (got {host!r})")
        port = s.integer("port", 443, low=1, high=65535)
        ca_file = self.path(s, "ca_file")
        max_connections = s.integer("max_connections", 10, low=1, high=100)
        timeout = s.number("timeout", 10.0, low=0.0, high=300.0, low_open=True)
        idle_timeout = s.number("idle_timeout", 3600.0, low=1.0, high=86400.0)
        keepalive = s.number("keepalive", 60.0, low=0.0, high=3600.0)
        s.finish()
        if self.check_files:
            if key_file is not None:
                self.check_p8(s, "key_file", key_file)
            if cert_file is not None:
                self.check_client_cert(s, "cert_file", cert_file)
            if ca_file is not None:
                self.check_ca(s, "ca_file", ca_file)
        return ApnsSettings(
            auth="token" if auth == "token" else "certificate",
            key_file=key_file,
            key_id=key_id,
            team_id=team_id,
            cert_file=cert_file,
            default_environment=Environment(env),
            host=host,
            port=port,
            ca_file=ca_file,
            max_connections=max_connections,
            timeout=timeout,
            idle_timeout=idle_timeout,
            keepalive=keepalive,
        )

    def fcm(self, s: _Section) -> FcmSettings:
        sa_file = self.path(s, "service_account_file")
        if sa_file is None:
            raise s.error("service_account_file", "required (Firebase service account JSON)")
        token_uri = s.opt_str("token_uri")
        if token_uri is not None:
            self.check_url(s, "token_uri", token_uri)
        base_url = s.opt_str("base_url") or "https://fcm.googleapis.com"
        self.check_url(s, "base_url", base_url)
        timeout = s.number("timeout", 10.0, low=0.0, high=300.0, low_open=True)
        max_workers = s.integer("max_workers", 8, low=1, high=256)
        s.finish()
        project_id = None
        if self.check_files:
            project_id = self.check_service_account(s, sa_file, token_uri is not None)
        return FcmSettings(
            service_account_file=sa_file,
            token_uri=token_uri,
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            max_workers=max_workers,
            project_id=project_id,
        )

    def webpush(self, s: _Section) -> WebpushSettings:
        key_file = self.path(s, "vapid_private_key_file")
        if key_file is None:
            raise s.error(
                "vapid_private_key_file",
                "required (a P-256 PEM key; `pushd webpush-keys --config FILE` creates it)",
            )
        subject = s.req_str("subject", "required (mailto: or https: contact, RFC 8292 sub)")
        if not _VAPID_SUBJECT.fullmatch(subject):
            raise s.error("subject", f"must be a mailto: or https: URI (got {subject!r})")
        ca_file = self.path(s, "ca_file")
        timeout = s.number("timeout", 10.0, low=0.0, high=300.0, low_open=True)
        max_connections = s.integer("max_connections", 64, low=1, high=4096)
        s.finish()
        public_key = None
        if self.check_files:
            from pushd import webpush_keys

            data = self.require_file(s, "vapid_private_key_file", key_file)
            try:
                key = webpush_keys.load_private_key(data)
            except webpush_keys.VapidKeyError as exc:
                raise s.error("vapid_private_key_file", f"{key_file} {exc}") from None
            public_key = webpush_keys.public_key_b64(key)
            self._warn_if_readable(key_file, "holds the VAPID private key")
            if ca_file is not None:
                self.check_ca(s, "ca_file", ca_file)
        return WebpushSettings(
            vapid_private_key_file=key_file,
            subject=subject,
            ca_file=ca_file,
            timeout=timeout,
            max_connections=max_connections,
            public_key=public_key,
        )

    def retry(self, s: _Section) -> RetryPolicy:
        initial = s.number("initial_delay", 0.25, low=0.0, high=60.0, low_open=True)
        max_delay = s.number("max_delay", 5.0, low=0.0, high=300.0, low_open=True)
        multiplier = s.number("multiplier", 2.0, low=1.0, high=10.0)
        jitter = s.number("jitter", 0.2, low=0.0, high=1.0)
        s.finish()
        if max_delay < initial:
            raise s.error("max_delay", f"must be >= retry.initial_delay ({initial:g})")
        return RetryPolicy(
            initial_delay=initial, max_delay=max_delay, multiplier=multiplier, jitter=jitter
        )

    def api(self, s: _Section) -> ApiConfig:
        host, port = self.host_port(s, "listen", "127.0.0.1", 8449)
        token = s.opt_str("token")
        s.finish()
        if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
            # Sent as "Authorization: Bearer <token>" (latin-1): a space, a control
            # character or é could never match what a client sends.
            raise s.error("token", "must be printable ASCII without spaces")
        if token is None and not _is_loopback(host):
            raise s.error("token", f"required when api.listen is not loopback ({host})")
        return ApiConfig(host=host, port=port, token=Secret(token) if token else None)

    def log(self, s: _Section) -> LogConfig:
        level = s.choice("level", _LOG_LEVELS, "info")
        fmt = s.choice("format", ("text", "json"), "text")
        s.finish()
        return LogConfig(level=level, format="json" if fmt == "json" else "text")

    def limits(self, s: _Section) -> LimitsConfig:
        max_in_flight = s.integer("max_in_flight", 1000, low=1, high=100_000)
        result_queue = s.integer("result_queue", 10000, low=1, high=1_000_000)
        grace = s.number("shutdown_grace", 5.0, low=0.0, high=300.0)
        s.finish()
        return LimitsConfig(
            max_in_flight=max_in_flight, result_queue=result_queue, shutdown_grace=grace
        )

    def refresh(self, s: _Section, path: Path) -> RefreshConfig:
        inline = s.opt_str("database")
        dsn_file = self.path(s, "database_file")
        if inline is not None and dsn_file is not None:
            raise s.error("database", "give either database or database_file, not both")
        if inline is None and dsn_file is None:
            raise s.error("database", "required (or database_file): DSN of the usrloc database")
        interval = s.number("interval", 30.0, low=1.0, high=3600.0)
        lead = s.number("lead", 150.0, low=120.0, high=86400.0)
        # A live pushd renews its claims once a cycle: the lease spans two at least.
        lease = s.number("lease", max(60.0, 2 * interval), low=2.0, high=7200.0)
        enabled = s.flag("enabled", True)
        s.finish()
        if interval >= lead:
            raise s.error("interval", f"must be < refresh.lead ({lead:g}) or bindings slip by")
        if lease < 2 * interval:
            raise s.error(
                "lease",
                f"must be >= 2 x refresh.interval ({2 * interval:g}): a live pushd renews "
                "its claims once per interval, a shorter lease hands them to another pushd",
            )
        if lead - interval < 120:
            log.warning(
                "refresh.lead %g - refresh.interval %g < 120: some pushes will come later "
                "than RFC 8599's 120 s before expiry",
                lead,
                interval,
            )
        if dsn_file is not None:
            secret = Secret(file=dsn_file)
            if self.check_files:
                self.require_file(s, "database_file", dsn_file)
                try:
                    dsn = secret.reveal()
                except (OSError, UnicodeDecodeError) as exc:
                    raise s.error("database_file", f"cannot read {dsn_file}: {exc}") from exc
                if not dsn:
                    raise s.error("database_file", f"{dsn_file} is empty")
                _check_dsn(s, "database_file", dsn)
                self._warn_if_readable(dsn_file, "is refresh.database_file")
        else:
            assert inline is not None
            secret = Secret(inline)
            _check_dsn(s, "database", inline)
            if self.check_files:
                self._warn_if_readable(path, "holds refresh.database")
        return RefreshConfig(
            database=secret, interval=interval, lead=lead, lease=lease, enabled=enabled
        )

    # -- value helpers ---------------------------------------------------------------------

    def host_port(self, s: _Section, name: str, host: str, port: int) -> tuple[str, int]:
        value = s.opt_str(name)
        if value is None:
            return host, port
        m = _HOST_PORT.fullmatch(value)
        if not m:
            raise s.error(name, f"must be host:port (got {value!r})")
        h = m.group(1) or m.group(3)
        p = int(m.group(2) or m.group(4))
        if not _usable_host(h) or (m.group(1) is not None and ":" not in h):
            raise s.error(name, f"must be host:port with a host name or IP address (got {value!r})")
        if not 1 <= p <= 65535:
            raise s.error(name, f"port must be 1-65535 (got {p})")
        return h, p

    def path(self, s: _Section, name: str) -> Path | None:
        value = s.opt_str(name)
        if value is None:
            return None
        try:
            p = Path(value).expanduser()
        except RuntimeError as exc:  # "~nosuchuser/key.p8"
            raise s.error(name, f"cannot expand {value!r}: {exc}") from None
        # Relative to the config file, not the cwd: systemd and tests start pushd anywhere.
        return p if p.is_absolute() else self.base_dir / p

    def check_url(self, s: _Section, name: str, url: str) -> None:
        m = _URL.fullmatch(url)
        host = m.group(1).strip("[]") if m else ""
        port = int(m.group(2)[1:]) if m and m.group(2) else 443
        if not m or not _usable_host(host) or not 1 <= port <= 65535:
            raise s.error(name, f"must be an http(s) URL (got {url!r})")

    def require_file(self, s: _Section, name: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise s.error(name, f"file not found: {path}") from exc
        except OSError as exc:
            raise s.error(name, f"cannot read {path}: {exc.strerror or exc}") from exc

    def check_p8(self, s: _Section, name: str, path: Path) -> None:
        data = self.require_file(s, name, path)
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise s.error(name, f"{path} is not an unencrypted PEM private key (.p8)") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise s.error(name, f"{path} is not a P-256 (ES256) key as Apple issues")

    def check_client_cert(self, s: _Section, name: str, path: Path) -> None:
        data = self.require_file(s, name, path)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            # What the TLS client will do: certificate and matching key from the one file.
            ctx.load_cert_chain(str(path))
        except (ssl.SSLError, OSError) as exc:
            raise s.error(
                name, f"{path} must hold the certificate and its unencrypted key in PEM: {exc}"
            ) from exc
        cert = x509.load_pem_x509_certificate(data)
        expires = cert.not_valid_after_utc
        if expires < datetime.now(UTC):
            raise s.error(name, f"certificate in {path} expired on {expires:%Y-%m-%d}")

    def check_ca(self, s: _Section, name: str, path: Path) -> None:
        self.require_file(s, name, path)
        try:
            ssl.create_default_context(cafile=str(path))
        except (ssl.SSLError, OSError) as exc:
            raise s.error(name, f"{path} is not a PEM CA bundle: {exc}") from exc

    def check_service_account(self, s: _Section, path: Path, token_uri_given: bool) -> str:
        name = "service_account_file"
        data = self.require_file(s, name, path)
        try:
            info = json.loads(data)
        except ValueError as exc:
            raise s.error(name, f"{path} is not JSON: {exc}") from exc
        if not isinstance(info, dict):
            raise s.error(name, f"{path} must hold a JSON object")
        required = _SA_FIELDS if token_uri_given else (*_SA_FIELDS, "token_uri")
        for f in required:
            if not isinstance(info.get(f), str) or not info[f]:
                raise s.error(name, f"{path} has no {f!r} (is it a service account key?)")
        if info["type"] != "service_account":
            raise s.error(name, f"{path} has type {info['type']!r}, expected 'service_account'")
        try:
            key = load_pem_private_key(info["private_key"].encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise s.error(name, f"{path}: private_key is not a PEM private key") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise s.error(name, f"{path}: private_key is not an RSA key")
        return str(info["project_id"])

    def _warn_if_readable(self, path: Path, what: str) -> None:
        try:
            mode = path.stat().st_mode
        except OSError:
            return
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning(
                "%s %s and is readable by group/others (mode %o); chmod 600 it",
                path,
                what,
                stat.S_IMODE(mode),
            )


def _check_dsn(s: _Section, name: str, dsn: str) -> None:
    import psycopg2.extensions

    try:
        if _UNUSABLE.search(dsn):  # libpq stops reading at a NUL: the rest would be lost
            raise psycopg2.ProgrammingError
        psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        # psycopg2's message quotes the DSN, password included: say less.
        raise s.error(name, "not a libpq connection string or postgresql:// URL") from None


def _usable_host(host: str) -> bool:
    """An IP address or a host name (RFC 1123 characters; ``_`` for container names)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _HOSTNAME.fullmatch(host) is not None


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
