"""Hostile pushd.yaml (hypothesis): pushd.config's YAML loader and validator.

Each case is a real configuration (APNs token auth; certificate auth + FCM; everything
set) with values replaced by wrong types, out-of-range and huge numbers, NaN, injection
strings, NUL and lone surrogates, sections replaced by scalars, keys dropped or added,
or with the YAML text itself mutated (anchors, merge keys, tags, complex keys, tabs,
deep nesting). It goes through :func:`pushd.config.loads` as ``pushd --check-config``
reads a file.

Properties: only :class:`~pushd.config.ConfigError`; a value made wrong is refused naming
its dotted key (or a key of the same section it conflicts with); a YAML-level error names
the file; what is accepted holds usable values (hosts and URLs a client can connect to,
secrets that can be written in kamailio.cfg or sent in a header, finite numbers, paths
without NUL).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from pushd import config
from pushd.config import Config, ConfigError
from tests.unit import hostile

PATH = Path("/etc/pushd/pushd.yaml")
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
CONFIGS: tuple[dict[str, Any], ...] = (
    {
        "kamailio": {"secret": "s3cret-value"},
        "apns": {"key_file": "AuthKey.p8", "key_id": "KEYID12345", "team_id": "TEAMID1234"},
    },
    {
        "kamailio": {"evapi": "127.0.0.1:8448", "secret_file": "/etc/pushd/evapi.secret"},
        "apns": {"auth": "certificate", "cert_file": "client.pem", "environment": "sandbox"},
        "fcm": {"service_account_file": "sa.json", "timeout": 5, "max_workers": 16},
        "api": {"listen": "0.0.0.0:8449", "token": "api-token-value"},
    },
    {
        "kamailio": {"evapi": "[::1]:9000", "secret": "x", "reconnect_max_delay": 2},
        "apns": {
            "auth": "token",
            "key_file": "k.p8",
            "key_id": "KEYID12345",
            "team_id": "TEAMID1234",
            "environment": "production",
            "host": "api.sandbox.push.apple.com",
            "port": 2197,
            "ca_file": "ca.pem",
            "max_connections": 4,
            "timeout": 10.5,
            "idle_timeout": 600,
            "keepalive": 30,
        },
        "fcm": {
            "service_account_file": "sa.json",
            "token_uri": "https://oauth2.googleapis.com/token",
            "base_url": "https://fcm.googleapis.com/",
        },
        "retry": {"initial_delay": 0.1, "max_delay": 1, "multiplier": 3, "jitter": 0},
        "api": {"listen": "127.0.0.1:8449"},
        "log": {"level": "DEBUG", "format": "json"},
        "limits": {"max_in_flight": 500, "result_queue": 100, "shutdown_grace": 2},
        "refresh": {
            "database": "host=127.0.0.1 dbname=kamailio user=k password=p",
            "interval": 30,
            "lead": 200,
            "enabled": True,
        },
    },
)
KEYS = sorted({f"{s}.{k}" for c in CONFIGS for s, sec in c.items() for k in sec})
WRONG: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    1.5,
    65536,
    10**400,
    2**63,
    math.nan,
    math.inf,
    -math.inf,
    "",
    " ",
    "0",
    "yes",
    "x" * 5000,
    "a\x00b",
    "a\nb",
    "a\r\nX-Injected: 1",
    "\udcff",
    "é",
    "\u0663",
    "host:port",
    "[::1]:8448",
    "[:::::]:1",
    "ex ample.com:1",
    "h:\uff18\uff14",
    "h:0",
    "127.0.0.1:8448\n",
    "ftp://x",
    "http://",
    "http://a b/",
    "http://h:99999/",
    "http://h/\x00",
    "https://[::1]:8443/v1",
    "~nobody/x",
    "../../etc/shadow",
    "KEYID1234\u0130",
    "keyid12345",
    "DEBUG\x00",
    "Token",
    "certificate",
    "sandbox",
    "json",
    [],
    ["a"],
    {},
    {"a": 1},
)
YAML_PIECES = (
    "&a ",
    "*a",
    "<<: *a\n",
    "!!python/object/apply:os.system ['id']",
    "!!binary aGk=",
    "!!set {a}",
    "? [a, b]\n: x\n",
    "? {a: 1}\n: x\n",
    "\t",
    "{",
    "}",
    "[",
    "- ",
    ": ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "'",
    '"',
    "#",
    "|\n  x\n",
    "\\x00",
    '"\\udcff"',
    "[" * 2000,
    "!!float nan",
    "!!int 0x10",
    "1e999",
    "2001-12-14t21:59:43.10-05:00",
)


def scalar(value: Any) -> str:
    """A value in YAML flow style (JSON is YAML, but for NaN and the infinities)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    return json.dumps(value, ensure_ascii=False)


def emit(cfg: dict[str, Any]) -> str:
    """Block-style YAML of a two-level config, fast (yaml.dump costs more than pushd's
    validation of what it writes)."""
    lines = []
    for section, body in cfg.items():
        if isinstance(body, dict):
            lines.append(f"{section}:")
            lines += [f"  {json.dumps(k)}: {scalar(v)}" for k, v in body.items()]
        else:
            lines.append(f"{section}: {scalar(body)}")
    return "\n".join(lines) + "\n"


def hostile_yaml(b: hostile.Bits) -> tuple[str, str | None]:
    """YAML text of a real config made wrong; with the dotted key that was changed
    (None when several were, or the text itself was mutated)."""
    cfg: dict[str, Any] = {k: dict(v) for k, v in CONFIGS[b.take(len(CONFIGS))].items()}
    changed: list[str] = []
    for _ in range(1 + b.take(2)):
        key = KEYS[b.take(len(KEYS))]
        section, name = key.split(".")
        how = b.take(8)
        if section not in cfg or not isinstance(cfg[section], dict):
            cfg[section] = {}
        if how <= 4:
            cfg[section][name] = WRONG[b.take(len(WRONG))]
        elif how == 5:
            cfg[section].pop(name, None)
        elif how == 6:
            key = f"{section}.{hostile.mutate(name, b)}"
            cfg[section][key.split(".", 1)[1]] = WRONG[b.take(len(WRONG))]
        else:
            cfg[section] = WRONG[b.take(len(WRONG))]
            key = section
        changed.append(key)
    if b.take(8):
        text = emit(cfg)
    else:  # PyYAML's own styles now and then: flow style, unicode unescaped
        style = {"allow_unicode": bool(b.take(2)), "default_flow_style": bool(b.take(2))}
        try:
            text = yaml.dump(cfg, Dumper=DUMPER, **style)
        except UnicodeEncodeError:  # libyaml's emitter and a lone surrogate
            text = yaml.dump(cfg, Dumper=yaml.SafeDumper, **style)
    if b.take(3) == 0:
        piece = YAML_PIECES[b.take(len(YAML_PIECES))] if b.take(2) else None
        at = b.take(len(text) + 1)
        text = text[:at] + piece + text[at:] if piece else hostile.mutate(text, b)
        return text, None
    return text, changed[0] if len(changed) == 1 else None


CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?", re.ASCII)
URL = re.compile(r"https?://([^/?#]+)([/?#][\x21-\x7e]*)?", re.ASCII)


def usable_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOSTNAME.fullmatch(host))


def usable_url(url: str) -> bool:
    m = URL.fullmatch(url)
    if not m:
        return False
    hostport = m.group(1)
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        if port and not port.startswith(":"):
            return False
        port = port[1:]
        if ":" not in host:
            return False
    else:
        host, _, port = hostport.partition(":")
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return False
    return usable_host(host)


def assert_usable(cfg: Config) -> None:
    k = cfg.kamailio
    assert usable_host(k.host) and 1 <= k.port <= 65535, k
    assert k.secret.file or (k.secret.reveal() and not CONTROL.search(k.secret.reveal()))
    for section in (cfg.apns, cfg.fcm, cfg.retry, cfg.api, cfg.log, cfg.limits, cfg.refresh, k):
        for name, value in vars(section).items() if section is not None else ():
            if isinstance(value, float):
                assert math.isfinite(value), (name, value)
            if isinstance(value, Path):
                assert "\x00" not in str(value), (name, value)
    if cfg.apns is not None:
        a = cfg.apns
        for value in (a.key_id, a.team_id):
            assert value is None or re.fullmatch(r"[A-Z0-9]{10}", value), value
        assert a.host is None or usable_host(a.host), a.host
    if cfg.fcm is not None:
        assert usable_url(cfg.fcm.base_url), cfg.fcm.base_url
        assert cfg.fcm.token_uri is None or usable_url(cfg.fcm.token_uri), cfg.fcm.token_uri
    if cfg.api is not None:
        assert usable_host(cfg.api.host), cfg.api.host
        token = cfg.api.token.reveal() if cfg.api.token else ""
        # Sent as "Authorization: Bearer <token>": visible ASCII or no client can send it.
        assert re.fullmatch(r"[\x21-\x7e]*", token), token
    if cfg.refresh is not None:
        dsn = cfg.refresh.database.reveal() if not cfg.refresh.database.file else "x"
        assert dsn and "\x00" not in dsn


@hostile.cases()
@given(hostile.case(512))
@example(hostile.Bits(0))
def test_hostile_configs_are_refused_by_key_or_accepted_usable(b: hostile.Bits) -> None:
    text, changed = hostile_yaml(b)
    try:
        cfg = config.loads(text, path=PATH)
    except ConfigError as exc:
        assert str(exc).startswith(f"{PATH}: "), exc
        if not exc.key:
            # A file-level error: the YAML, or the file as a whole.
            assert changed is None or "YAML" in exc.message or "section" in exc.message, exc
            return
        if changed is not None:
            # Names the key made wrong, or one of its section it conflicts with.
            section = changed.split(".")[0]
            assert exc.key.split(".")[0] == section or exc.key in ("apns", "kamailio"), (
                changed,
                exc,
            )
        return
    assert_usable(cfg)


def test_the_real_configs_are_accepted() -> None:
    for cfg in CONFIGS:
        config.loads(yaml.safe_dump(cfg), path=PATH)


@hostile.cases(300)
@given(st.sampled_from(["key_file", "ca_file"]), st.sampled_from(["a\x00b", "\udcff", "x" * 5000]))
def test_credential_file_names_nobody_can_open_are_refused_by_key(
    tmp_path_factory: Any, name: str, value: str
) -> None:
    # With check_files (pushd's start, --check-config) the file is opened: a NUL in its
    # name raised ValueError, a lone surrogate UnicodeEncodeError, neither a ConfigError.
    cfg = {k: dict(v) for k, v in CONFIGS[0].items()}
    cfg["apns"][name] = value
    try:
        config.loads(yaml.safe_dump(cfg), path=PATH, check_files=True)
    except ConfigError as exc:
        # libyaml refuses the "\udcff" escape itself: the file, line and column are named.
        assert exc.key in (f"apns.{name}", "apns.key_file") or "line " in exc.message, exc
