"""pushd config: defaults, every error naming file and key, credential file checks."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest

from pushd import config
from pushd.config import ConfigError, Secret
from pushd.model import Environment, ProviderName
from testkit.certs import TestPki, make_test_pki
from testkit.service_account import write_service_account

EXAMPLE = Path(__file__).resolve().parents[2] / "pushd" / "pushd.example.yaml"

MINIMAL = """
kamailio:
  secret: s3cret-value
apns:
  key_file: AuthKey.p8
  key_id: KEYID12345
  team_id: TEAMID1234
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def creds(tmp_path: Path, pki: TestPki) -> Path:
    """A directory holding a valid .p8, client cert, CA, service account and secret file."""
    (tmp_path / "AuthKey.p8").write_bytes(pki.apns_key.read_bytes())
    (tmp_path / "client.pem").write_bytes(pki.client_cert.read_bytes())
    (tmp_path / "ca.pem").write_bytes(pki.ca_cert.read_bytes())
    write_service_account(tmp_path, "http://127.0.0.1:9/token", filename="sa.json")
    secret = tmp_path / "evapi.secret"
    secret.write_text("file-secret-123\n")
    secret.chmod(0o600)
    return tmp_path


def write(directory: Path, text: str, name: str = "pushd.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    path.chmod(0o600)
    return path


def error_of(path: Path, check_files: bool = False) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.load(path, check_files=check_files)
    return info.value


# -- good configs ---------------------------------------------------------------------------


def test_example_file_validates() -> None:
    cfg = config.load(EXAMPLE, check_files=False)
    assert cfg.providers == (ProviderName.APNS, ProviderName.FCM)
    assert cfg.kamailio.evapi == "127.0.0.1:8448"
    assert cfg.api is not None and cfg.api.port == 8449


def test_example_file_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    keys = {
        "kamailio": ["evapi", "secret", "secret_file", "reconnect_max_delay"],
        "apns": [
            "auth", "key_file", "key_id", "team_id", "cert_file", "environment",
            "host", "port", "ca_file", "max_connections", "timeout", "idle_timeout",
            "keepalive",
        ],
        "fcm": ["service_account_file", "token_uri", "base_url", "timeout", "max_workers"],
        "retry": ["initial_delay", "max_delay", "multiplier", "jitter"],
        "api": ["listen", "token"],
        "log": ["level", "format"],
        "limits": ["max_in_flight", "result_queue", "shutdown_grace"],
    }  # fmt: skip
    for section, names in keys.items():
        assert f"\n{section}:\n" in text
        for name in names:
            assert f"  {name}:" in text or f"  # {name}:" in text, f"{section}.{name}"


def test_minimal_config_gets_defaults(creds: Path) -> None:
    cfg = config.load(write(creds, MINIMAL))
    assert cfg.kamailio.host == "127.0.0.1" and cfg.kamailio.port == 8448
    assert cfg.kamailio.secret.reveal() == "s3cret-value"
    assert cfg.kamailio.reconnect_max_delay == 5.0
    assert cfg.apns is not None
    assert cfg.apns.auth == "token"
    assert cfg.apns.default_environment == Environment.PRODUCTION
    assert cfg.apns.key_file == creds / "AuthKey.p8"
    assert (cfg.apns.port, cfg.apns.max_connections, cfg.apns.timeout) == (443, 10, 10.0)
    assert (cfg.apns.idle_timeout, cfg.apns.keepalive) == (3600.0, 60.0)
    assert cfg.fcm is None
    r = cfg.retry
    assert (r.initial_delay, r.max_delay, r.multiplier, r.jitter) == (0.25, 5.0, 2.0, 0.2)
    assert cfg.log.level == "info" and cfg.log.format == "text"
    assert cfg.api is None
    assert cfg.limits.max_in_flight == 1000


def test_full_config_with_all_files(creds: Path) -> None:
    path = write(
        creds,
        """
        kamailio:
          evapi: "[::1]:9000"
          secret_file: evapi.secret
          reconnect_max_delay: 2
        apns:
          auth: certificate
          cert_file: client.pem
          environment: sandbox
          host: localhost
          port: 2197
          ca_file: ca.pem
        fcm:
          service_account_file: sa.json
          token_uri: http://127.0.0.1:9999/token
          base_url: http://127.0.0.1:9998/
        retry: {initial_delay: 0.1, max_delay: 1, multiplier: 3, jitter: 0}
        api: {listen: "0.0.0.0:8449", token: api-token-value}
        log: {level: DEBUG, format: json}
        """,
    )
    cfg = config.load(path)
    assert (cfg.kamailio.host, cfg.kamailio.port) == ("::1", 9000)
    assert cfg.kamailio.evapi == "[::1]:9000"
    assert cfg.kamailio.secret.reveal() == "file-secret-123"
    assert cfg.apns is not None and cfg.apns.cert_file == creds / "client.pem"
    assert cfg.apns.default_environment == Environment.SANDBOX
    assert cfg.fcm is not None
    assert cfg.fcm.project_id == "pushgate-test"
    assert cfg.fcm.base_url == "http://127.0.0.1:9998"
    assert cfg.log.level == "debug" and cfg.log.format == "json"
    summary = cfg.summary()
    assert "project=pushgate-test" in summary and "certificate" in summary
    assert "api-token-value" not in summary and "file-secret" not in summary


def test_relative_paths_resolve_against_the_config_dir(
    creds: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(creds, MINIMAL)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    cfg = config.load(path)
    assert cfg.apns is not None and cfg.apns.key_file == creds / "AuthKey.p8"


def test_service_account_token_uri_may_come_from_config(creds: Path) -> None:
    info = json.loads((creds / "sa.json").read_text())
    del info["token_uri"]
    (creds / "sa2.json").write_text(json.dumps(info))
    base = "kamailio: {secret: x}\nfcm:\n  service_account_file: sa2.json\n"
    assert config.load(write(creds, base + "  token_uri: http://127.0.0.1:1/t\n")).fcm
    err = error_of(write(creds, base), check_files=True)
    assert err.key == "fcm.service_account_file" and "'token_uri'" in err.message


def test_secret_never_shows_in_repr() -> None:
    assert "hunter2" not in repr(Secret("hunter2"))
    assert "hunter2" not in repr(config.KamailioConfig(secret=Secret("hunter2")))


# -- errors: structure and values --------------------------------------------------------------

STRUCTURE_ERRORS = [
    ("apnss: {}\n" + MINIMAL, "apnss", "unknown key"),
    (MINIMAL + "  keyid: X\n", "apns.keyid", "unknown key"),
    ("apns: {key_file: a, key_id: KEYID12345, team_id: TEAMID1234}", "kamailio", "required"),
    ("kamailio: {evapi: '127.0.0.1:1'}\nfcm: {service_account_file: a}", "kamailio.secret", ""),
    (MINIMAL.replace("secret:", "secret_file: f\n  secret:"), "kamailio.secret", "not both"),
    (MINIMAL.replace("kamailio:", "kamailio:\n  evapi: localhost"), "kamailio.evapi", "host:port"),
    (MINIMAL.replace("kamailio:", "kamailio:\n  evapi: h:70000"), "kamailio.evapi", "port"),
    (
        MINIMAL.replace("kamailio:", "kamailio:\n  reconnect_max_delay: fast"),
        "kamailio.reconnect_max_delay",
        "number",
    ),
    (
        MINIMAL.replace("  key_id: KEYID12345\n", ""),
        "apns.key_id",
        "required when apns.auth is token",
    ),
    (MINIMAL.replace("  key_file: AuthKey.p8\n", ""), "apns.key_file", "required when"),
    (MINIMAL + "  auth: jwt\n", "apns.auth", "token, certificate"),
    (MINIMAL + "  cert_file: c.pem\n", "apns.cert_file", "only used when apns.auth is certificate"),
    ("kamailio: {secret: x}\napns: {auth: certificate}", "apns.cert_file", "required when"),
    (
        "kamailio: {secret: x}\napns: {auth: certificate, cert_file: c, key_id: KEYID12345}",
        "apns.key_id",
        "only used when apns.auth is token",
    ),
    (MINIMAL.replace("TEAMID1234", "team1"), "apns.team_id", "10 characters"),
    (MINIMAL.replace("KEYID12345", "1234567890"), "apns.key_id", "quote it"),
    (MINIMAL + "  environment: dev\n", "apns.environment", "production, sandbox"),
    (MINIMAL + "  port: true\n", "apns.port", "integer"),
    (MINIMAL + "  port: 0\n", "apns.port", "[1, 65535]"),
    (MINIMAL + "  timeout: 0\n", "apns.timeout", "(0, 300]"),
    (MINIMAL + "  max_connections: 1.5\n", "apns.max_connections", "integer"),
    (MINIMAL + "  idle_timeout: 0.5\n", "apns.idle_timeout", "[1, 86400]"),
    (MINIMAL + "  keepalive: -1\n", "apns.keepalive", "[0, 3600]"),
    (MINIMAL + "  host: ''\n", "apns.host", "non-empty string"),
    ("kamailio: {secret: x}\nfcm: {timeout: 3}", "fcm.service_account_file", "required"),
    (
        "kamailio: {secret: x}\nfcm: {service_account_file: a, base_url: ftp://x}",
        "fcm.base_url",
        "URL",
    ),
    (
        "kamailio: {secret: x}\nfcm: {service_account_file: a, max_workers: 0}",
        "fcm.max_workers",
        "",
    ),
    (MINIMAL + "retry: {jitter: 1.5}\n", "retry.jitter", "[0, 1]"),
    (MINIMAL + "retry: {initial_delay: 0}\n", "retry.initial_delay", "(0, 60]"),
    (MINIMAL + "retry: {multiplier: 0.5}\n", "retry.multiplier", "[1, 10]"),
    (
        MINIMAL + "retry: {initial_delay: 2, max_delay: 1}\n",
        "retry.max_delay",
        ">= retry.initial_delay",
    ),
    (MINIMAL + "retry: {backoff: 1}\n", "retry.backoff", "unknown key"),
    (MINIMAL + "api: {listen: '0.0.0.0:8449'}\n", "api.token", "required when api.listen"),
    (MINIMAL + "api: {listen: 8449}\n", "api.listen", "string"),
    (MINIMAL + "log: {level: verbose}\n", "log.level", "debug, info, warning, error"),
    (MINIMAL + "log: {format: xml}\n", "log.format", "text, json"),
    (MINIMAL + "limits: {max_in_flight: 0}\n", "limits.max_in_flight", "[1, 100000]"),
    (MINIMAL + "fcm: yes\n", "fcm", "must be a mapping"),
    ("kamailio: {secret: x}\n", "apns", "at least one provider"),
]


@pytest.mark.parametrize(("text", "key", "words"), STRUCTURE_ERRORS)
def test_every_error_names_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    err = error_of(path)
    assert err.key == key
    assert str(err).startswith(f"{path}: {key}: "), str(err)
    assert words in err.message


def test_key_id_error_reads_like_the_spec(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, MINIMAL.replace("  key_id: KEYID12345\n", "")))
    assert str(err).endswith("pushd.yaml: apns.key_id: required when apns.auth is token")


def test_null_section_counts_as_absent(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, MINIMAL + "fcm:\n"), check_files=False)
    assert cfg.fcm is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("kamailio: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("kamailio: {secret: a}\nkamailio: {secret: b}\n", "line 2: duplicate key 'kamailio'"),
    ],
)
def test_file_level_errors_name_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    err = error_of(path)
    assert str(err).startswith(f"{path}: ") and words in str(err)


def test_missing_config_file(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml: cannot read" in str(err)


# -- errors: credential files (check_files=True) ----------------------------------------------


def test_files_are_not_opened_without_check_files(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, MINIMAL), check_files=False)
    assert cfg.apns is not None and not cfg.apns.key_file.exists()  # type: ignore[union-attr]


def test_missing_key_file(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, MINIMAL), check_files=True)
    assert err.key == "apns.key_file" and "file not found" in err.message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"not a key", "not an unencrypted PEM private key"),
        ("rsa", "not a P-256"),
    ],
)
def test_bad_p8(creds: Path, content: bytes | str, words: str) -> None:
    if content == "rsa":
        info = json.loads((creds / "sa.json").read_text())
        content = info["private_key"].encode()
    assert isinstance(content, bytes)
    (creds / "AuthKey.p8").write_bytes(content)
    err = error_of(write(creds, MINIMAL), check_files=True)
    assert err.key == "apns.key_file" and words in err.message


def test_certificate_without_its_key(creds: Path, pki: TestPki) -> None:
    (creds / "client.pem").write_bytes(pki.server_cert.read_bytes())
    text = "kamailio: {secret: x}\napns: {auth: certificate, cert_file: client.pem}\n"
    err = error_of(write(creds, text), check_files=True)
    assert err.key == "apns.cert_file" and "certificate and its unencrypted key" in err.message


def test_bad_ca_file(creds: Path) -> None:
    (creds / "ca.pem").write_text("garbage")
    err = error_of(write(creds, MINIMAL + "  ca_file: ca.pem\n"), check_files=True)
    assert err.key == "apns.ca_file"


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda info: info.pop("client_email"), "no 'client_email'"),
        (lambda info: info.update(type="authorized_user"), "expected 'service_account'"),
        (lambda info: info.update(private_key="nope"), "not a PEM private key"),
    ],
)
def test_bad_service_account(creds: Path, mutate: object, words: str) -> None:
    info = json.loads((creds / "sa.json").read_text())
    mutate(info)  # type: ignore[operator]
    (creds / "sa.json").write_text(json.dumps(info))
    err = error_of(
        write(creds, "kamailio: {secret: x}\nfcm: {service_account_file: sa.json}\n"),
        check_files=True,
    )
    assert err.key == "fcm.service_account_file" and words in err.message


def test_service_account_not_json(creds: Path) -> None:
    (creds / "sa.json").write_text("{")
    err = error_of(
        write(creds, "kamailio: {secret: x}\nfcm: {service_account_file: sa.json}\n"),
        check_files=True,
    )
    assert err.key == "fcm.service_account_file" and "is not JSON" in err.message


def test_empty_secret_file(creds: Path) -> None:
    (creds / "evapi.secret").write_text("\n")
    text = MINIMAL.replace("secret: s3cret-value", "secret_file: evapi.secret")
    err = error_of(write(creds, text), check_files=True)
    assert err.key == "kamailio.secret_file" and "empty" in err.message


def test_readable_secret_file_warns_without_leaking(
    creds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (creds / "evapi.secret").chmod(0o644)
    text = MINIMAL.replace("secret: s3cret-value", "secret_file: evapi.secret")
    with caplog.at_level(logging.WARNING, logger="pushd.config"):
        cfg = config.load(write(creds, text))
    assert cfg.kamailio.secret.reveal() == "file-secret-123"
    assert "readable by group/others" in caplog.text
    assert "file-secret-123" not in caplog.text


def test_inline_secret_in_readable_config_warns(
    creds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(creds, MINIMAL)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="pushd.config"):
        config.load(path)
    assert "holds kamailio.secret" in caplog.text and "s3cret-value" not in caplog.text


# -- hostile input (found by tests/unit/test_hostile_config.py and its seeds) ------------------

HOSTILE_VALUES = [
    # Accepted before, unusable later: a path as APNs host, a host the evapi client cannot
    # resolve, a port in fullwidth digits, an API token no client can send, a URL with a
    # space, a secret kamailio.cfg cannot hold, a DSN libpq would cut at the NUL.
    (MINIMAL + "  host: ../../etc/shadow\n", "apns.host", "host name or IP address"),
    (MINIMAL.replace("kamailio:", "kamailio:\n  evapi: 'ex ample:1'"), "kamailio.evapi", "host"),
    (MINIMAL.replace("kamailio:", "kamailio:\n  evapi: 'h:\uff18\uff14'"), "kamailio.evapi", ""),
    (MINIMAL.replace("kamailio:", "kamailio:\n  evapi: '[h]:1'"), "kamailio.evapi", ""),
    (MINIMAL + "api: {token: 'two words'}\n", "api.token", "printable ASCII"),
    (MINIMAL + "api: {token: 't\u00e9'}\n", "api.token", "printable ASCII"),
    (
        "kamailio: {secret: x}\nfcm: {service_account_file: a, base_url: 'http://a b/'}",
        "fcm.base_url",
        "URL",
    ),
    (
        "kamailio: {secret: x}\nfcm: {service_account_file: a, base_url: 'http://h:99999'}",
        "fcm.base_url",
        "URL",
    ),
    (MINIMAL.replace("s3cret-value", '"s3cret\\nvalue"'), "kamailio.secret", "one line"),
    (MINIMAL + 'refresh: {database: "host=a\\0b"}\n', "refresh.database", "must not contain"),
    # Raised ValueError / RuntimeError instead of a ConfigError.
    (MINIMAL.replace("AuthKey.p8", '"Auth\\0Key.p8"'), "apns.key_file", "must not contain"),
    (MINIMAL.replace("AuthKey.p8", "~nosuchuser/AuthKey.p8"), "apns.key_file", "cannot expand"),
]


@pytest.mark.parametrize(("text", "key", "words"), HOSTILE_VALUES)
def test_hostile_values_are_refused_naming_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    err = error_of(write(tmp_path, text))
    assert err.key == key and words in err.message, err


@pytest.mark.parametrize(
    "text",
    [
        "? [a, b]\n: x\n",  # TypeError: unhashable type: 'list'
        "kamailio: " + "[" * 5000,  # RecursionError
        "kamailio: {secret: !!float nan x}\n",  # ValueError from PyYAML's constructor
        "kamailio: {secret: !!int x}\n",
    ],
)
def test_yaml_python_cannot_build_is_a_config_error(tmp_path: Path, text: str) -> None:
    err = error_of(write(tmp_path, text))
    assert err.key == "" and "not valid YAML" in err.message


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "pushd.yaml"
    path.write_bytes(b"kamailio: {secret: \xff}\n")
    assert "not UTF-8" in error_of(path).message


def test_merge_keys_work(tmp_path: Path) -> None:
    text = MINIMAL + "x-timeouts: &t {timeout: 3}\n"
    cfg = "kamailio: {secret: x}\nt: &t {timeout: 3}\nfcm:\n  <<: *t\n  service_account_file: a\n"
    assert error_of(write(tmp_path, text)).key == "x-timeouts"  # unknown, as any other key
    err = error_of(write(tmp_path, cfg))
    assert err.key == "t"  # not a complaint about "<<"
