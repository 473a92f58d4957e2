"""One settings class per provider: what config.py builds is what the provider takes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pushd import app, config
from pushd.model import ProviderName
from pushd.provider_settings import ApnsSettings, FcmSettings, WebpushSettings
from testkit.certs import TestPki, make_test_pki
from testkit.service_account import write_service_account

ROOT = Path(__file__).resolve().parents[2]
# The provider modules' own dependencies: config.py and --check-config must not need them.
PROVIDER_LIBRARIES = ("h2", "hpack", "google", "requests", "pywebpush", "py_vapid")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def config_file(tmp_path: Path, pki: TestPki) -> Path:
    """A pushd.yaml with all three providers and every credential file in place."""
    from pushd import webpush_keys

    (tmp_path / "AuthKey.p8").write_bytes(pki.apns_key.read_bytes())
    write_service_account(tmp_path, "http://127.0.0.1:9/token", filename="sa.json")
    webpush_keys.generate(tmp_path / "vapid.pem")
    path = tmp_path / "pushd.yaml"
    path.write_text(
        textwrap.dedent(
            """
            kamailio: {secret: s3cret-value}
            apns: {key_file: AuthKey.p8, key_id: KEYID12345, team_id: TEAMID1234}
            fcm: {service_account_file: sa.json}
            webpush: {vapid_private_key_file: vapid.pem, subject: "mailto:ops@example.com"}
            """
        )
    )
    path.chmod(0o600)
    return path


def test_config_sections_are_the_provider_settings(config_file: Path) -> None:
    cfg = config.load(config_file)
    assert type(cfg.apns) is ApnsSettings
    assert type(cfg.fcm) is FcmSettings and cfg.fcm.project_id == "pushgate-test"
    assert type(cfg.webpush) is WebpushSettings and cfg.webpush.public_key


def test_providers_get_the_config_objects_themselves(config_file: Path) -> None:
    cfg = config.load(config_file)
    providers = app.build_providers(cfg)
    for provider in providers.values():
        asyncio.run(provider.close())
    assert set(providers) == {ProviderName.APNS, ProviderName.FCM, ProviderName.WEBPUSH}
    # The providers keep the object they were given: nothing is copied field by field.
    assert providers[ProviderName.FCM]._settings is cfg.fcm  # type: ignore[attr-defined]
    assert providers[ProviderName.WEBPUSH]._settings is cfg.webpush  # type: ignore[attr-defined]


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked for this test")
        return None
sys.meta_path.insert(0, Refuse())
from pushd.__main__ import main
code = main(["--check-config", {path!r}])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
sys.exit(code)
"""


def test_check_config_runs_without_the_provider_libraries(config_file: Path) -> None:
    script = BLOCKER.format(blocked=PROVIDER_LIBRARIES, path=str(config_file))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "project=pushgate-test" in done.stdout + done.stderr


def test_check_config_still_fails_naming_file_and_key(config_file: Path) -> None:
    config_file.write_text(config_file.read_text().replace("KEYID12345", "bad"))
    script = BLOCKER.format(blocked=PROVIDER_LIBRARIES, path=str(config_file))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == app.EXIT_CONFIG
    assert f"{config_file}: apns.key_id: must be 10 characters" in done.stderr
