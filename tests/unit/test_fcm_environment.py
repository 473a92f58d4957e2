"""FcmProvider reads proxy settings from the environment once, at construction."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters
import requests.sessions
import requests.utils

from pushd.fcm import FcmProvider
from pushd.model import ProviderName, PushKind, PushRequest, Verdict
from pushd.provider_settings import FcmSettings
from testkit.service_account import write_service_account

BASE_URL = "https://fcm.example.test"
PROXY = "http://egress.example.test:3128"

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class RecordingAdapter(requests.adapters.BaseAdapter):
    """Answers every request with FCM's 200, remembering the proxies it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.proxies: list[dict[str, str]] = []
        self.verify: list[Any] = []

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        self.proxies.append(dict(proxies or {}))
        self.verify.append(verify)
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps({"name": "projects/p/messages/1"}).encode()
        response.headers["Content-Type"] = "application/json"
        response.request = request
        response.url = request.url or ""
        return response

    def close(self) -> None:
        pass


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def account_file(tmp_path: Path) -> Path:
    return write_service_account(tmp_path, "https://oauth2.example.test/token").path


def make_provider(account_file: Path) -> tuple[FcmProvider, RecordingAdapter]:
    provider = FcmProvider(FcmSettings(service_account_file=account_file, base_url=BASE_URL))
    adapter = RecordingAdapter()
    session = provider._session
    session.mount("https://", adapter)
    # An access token that is valid for an hour: no token endpoint in these tests.
    credentials = provider._credentials
    credentials.token = "ya29.test-token"
    credentials.expiry = datetime.datetime.now(datetime.UTC).replace(
        tzinfo=None
    ) + datetime.timedelta(hours=1)
    return provider, adapter


def push() -> PushRequest:
    return PushRequest(
        provider=ProviderName.FCM,
        token="reg-token-1",
        topic="pushgate-unit",
        kind=PushKind.CALL,
        deadline=time.time() + 30,
    )


def send(provider: FcmProvider) -> Verdict:
    async def go() -> Verdict:
        try:
            return (await provider.send(push())).verdict
        finally:
            await provider.close()

    return asyncio.run(go())


def test_a_proxy_in_the_environment_at_start_is_used(
    clean_env: pytest.MonkeyPatch, account_file: Path
) -> None:
    clean_env.setenv("HTTPS_PROXY", PROXY)
    provider, adapter = make_provider(account_file)

    assert send(provider) is Verdict.DELIVERED
    assert adapter.proxies[0].get("https") == PROXY


def test_no_proxy_in_the_environment_at_start_excludes_the_fcm_host(
    clean_env: pytest.MonkeyPatch, account_file: Path
) -> None:
    clean_env.setenv("HTTPS_PROXY", PROXY)
    clean_env.setenv("NO_PROXY", ".example.test")
    provider, adapter = make_provider(account_file)

    assert send(provider) is Verdict.DELIVERED
    assert "https" not in adapter.proxies[0]


def test_a_ca_bundle_from_the_environment_is_used(
    clean_env: pytest.MonkeyPatch, account_file: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "egress-ca.pem"
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    provider, adapter = make_provider(account_file)

    assert send(provider) is Verdict.DELIVERED
    assert adapter.verify == [str(bundle)]


def test_sends_do_not_read_the_environment_again(
    clean_env: pytest.MonkeyPatch, account_file: Path
) -> None:
    clean_env.setenv("HTTPS_PROXY", PROXY)
    provider, adapter = make_provider(account_file)
    clean_env.setenv("HTTPS_PROXY", "http://changed.example.test:8080")

    def forbidden(*args: object, **kwargs: object) -> Any:
        raise AssertionError("requests read the environment during a send")

    for name in ("get_environ_proxies", "get_netrc_auth", "should_bypass_proxies"):
        clean_env.setattr(requests.sessions, name, forbidden, raising=False)
        clean_env.setattr(requests.utils, name, forbidden)

    assert send(provider) is Verdict.DELIVERED
    assert adapter.proxies[0].get("https") == PROXY  # the value at start, not the new one
