"""The real FcmProvider and google-auth against the fake OAuth + FCM server on loopback.

Every test runs with name resolution and connects limited to loopback, so anything that
tries to reach Google (a token fetch, the regional-access-boundary lookup) fails the test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.dispatch import Dispatcher
from pushd.fcm import FcmProvider
from pushd.model import Provider, ProviderName, PushKind, PushRequest, PushResult, Verdict
from pushd.provider_settings import FcmSettings
from testkit.fake_fcm import FCM_ERROR_TYPE, FakeFcm
from testkit.service_account import SCOPE_FCM, FakeServiceAccount

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost", b"::1"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuse (and remember) every lookup or connect that is not for loopback."""
    attempts: list[object] = []
    real_getaddrinfo = socket.getaddrinfo
    real_create_connection = socket.create_connection

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOOPBACK:
            attempts.append(host)
            raise socket.gaierror(socket.EAI_NONAME, f"test: no network for {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        if address[0] not in LOOPBACK:
            attempts.append(address)
            raise OSError(f"test: no network for {address!r}")
        return real_create_connection(address, *args, **kwargs)

    def gethostbyaddr(host: Any) -> Any:
        attempts.append(("reverse", host))
        raise socket.herror(f"test: no reverse lookups ({host!r})")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "gethostbyaddr", gethostbyaddr)
    yield attempts
    assert attempts == [], f"non-loopback network attempted: {attempts}"


@pytest.fixture
def fake() -> Iterator[FakeFcm]:
    with FakeFcm() as server:
        yield server


@pytest.fixture
def account(fake: FakeFcm, tmp_path: Path) -> FakeServiceAccount:
    return fake.make_service_account(tmp_path, project_id="pushgate-it")


ProviderFactory = Callable[..., FcmProvider]


@pytest.fixture
def make_provider(fake: FakeFcm, account: FakeServiceAccount) -> Iterator[ProviderFactory]:
    providers: list[FcmProvider] = []

    def make(**overrides: Any) -> FcmProvider:
        settings: dict[str, Any] = {
            "service_account_file": account.path,
            "token_uri": fake.token_uri,
            "base_url": fake.url,
            "timeout": 2.0,
        }
        providers.append(FcmProvider(FcmSettings(**{**settings, **overrides})))
        return providers[-1]

    yield make
    for provider in providers:
        asyncio.run(provider.close())


def as_provider(provider: FcmProvider) -> Provider:
    """Never called: makes mypy check that FcmProvider satisfies the Provider protocol."""
    return provider


def push(token: str = "reg-token-1", *, project: str = "pushgate-it", **kw: Any) -> PushRequest:
    fields: dict[str, Any] = {
        "provider": ProviderName.FCM,
        "token": token,
        "topic": project,
        "kind": PushKind.CALL,
        "deadline": time.time() + 30,
        "data": {"call_id": "abc", "caller": "sip:alice@example.org"},
    }
    return PushRequest(**{**fields, **kw})


def send(provider: FcmProvider, *requests_: PushRequest) -> list[PushResult]:
    async def go() -> list[PushResult]:
        return list(await asyncio.gather(*(provider.send(r) for r in requests_)))

    return asyncio.run(go())


# --- the provider -------------------------------------------------------------------------


def test_delivers_high_priority_data_with_ttl_and_oauth_token(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    [result] = send(make_provider(), push(collapse_id="call-abc"))

    [record] = fake.wait_for_messages(1, timeout=2)
    assert result.verdict is Verdict.DELIVERED
    assert result.status == 200
    assert result.provider_id == record.message_id
    assert result.provider_id is not None
    assert result.provider_id.startswith("projects/pushgate-it/messages/")
    assert record.project == "pushgate-it"
    assert record.token == "reg-token-1"
    assert record.priority == "HIGH"
    assert record.ttl in ("29s", "30s")
    assert record.collapse_key == "call-abc"
    assert record.data == {"call_id": "abc", "caller": "sip:alice@example.org", "kind": "call"}
    assert record.bearer == fake.issued_tokens[0]
    assert fake.tokens_issued == 1


def test_secrets_never_reach_the_logs(
    fake: FakeFcm,
    account: FakeServiceAccount,
    make_provider: ProviderFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider()
    fake.force_unauthenticated(times=1)
    fake.script("gone", 404, "UNREGISTERED")
    send(provider, push(), push("gone"))
    assert fake.tokens_issued == 2
    assert "FCM access token refreshed" in caplog.text  # the debug lines were captured
    for secret in [*fake.issued_tokens, account.info["private_key"].splitlines()[1]]:
        assert secret not in caplog.text


def test_token_is_reused_across_sends(fake: FakeFcm, make_provider: ProviderFactory) -> None:
    provider = make_provider()
    send(provider, push("a"))
    send(provider, push("b"))
    assert [r.status for r in fake.messages] == [200, 200]
    assert fake.tokens_issued == 1


def test_past_deadline_sends_ttl_zero(fake: FakeFcm, make_provider: ProviderFactory) -> None:
    [result] = send(make_provider(), push(deadline=time.time() - 5))
    assert result.verdict is Verdict.DELIVERED
    assert fake.messages[0].ttl == "0s"


def test_rejected_access_token_is_refreshed_and_replayed(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    provider = make_provider()
    send(provider, push("warm-up"))
    fake.force_unauthenticated(times=1)

    [result] = send(provider, push("after-401"))

    assert result.verdict is Verdict.DELIVERED
    assert fake.tokens_issued == 2
    first, rejected, replayed = fake.messages
    assert (rejected.status, rejected.error_code) == (401, "UNAUTHENTICATED")
    assert rejected.bearer == first.bearer == fake.issued_tokens[0]
    assert (replayed.status, replayed.token) == (200, "after-401")
    assert replayed.bearer == fake.issued_tokens[1]


def test_revoked_tokens_are_replaced_once_for_concurrent_sends(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    provider = make_provider()
    send(provider, push("warm-up"))
    fake.revoke_tokens()
    results = send(provider, *(push(f"t{i}") for i in range(16)))
    assert {r.verdict for r in results} == {Verdict.DELIVERED}
    assert fake.tokens_issued == 2


def test_cold_concurrent_sends_fetch_one_token(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    results = send(make_provider(max_workers=8), *(push(f"t{i}") for i in range(40)))
    assert {r.verdict for r in results} == {Verdict.DELIVERED}
    assert len(fake.messages) == 40
    assert fake.tokens_issued == 1


def test_401_after_refresh_is_a_config_error(fake: FakeFcm, make_provider: ProviderFactory) -> None:
    fake.force_unauthenticated(times=2)
    [result] = send(make_provider(), push())
    assert (result.verdict, result.status, result.reason) == (
        Verdict.CONFIG_ERROR,
        401,
        "UNAUTHENTICATED",
    )
    assert len(fake.messages) == 2  # one attempt, one replay, no more
    assert fake.tokens_issued == 2


def test_third_party_auth_error_does_not_churn_access_tokens(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    # Also a 401, but about APNs credentials in Firebase: refreshing would not help.
    fake.script("ios-token", 401, "THIRD_PARTY_AUTH_ERROR")
    [result] = send(make_provider(), push("ios-token"))
    assert (result.verdict, result.reason) == (Verdict.CONFIG_ERROR, "THIRD_PARTY_AUTH_ERROR")
    assert len(fake.messages) == 1
    assert fake.tokens_issued == 1


def test_unregistered_deletes_the_token(fake: FakeFcm, make_provider: ProviderFactory) -> None:
    fake.script("gone", 404, "UNREGISTERED")
    [result] = send(make_provider(), push("gone"))
    assert (result.verdict, result.status, result.reason) == (
        Verdict.DELETE_TOKEN,
        404,
        "UNREGISTERED",
    )


def test_invalid_registration_token_deletes_the_token(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    fake.script("garbage", 400, "INVALID_ARGUMENT")
    [result] = send(make_provider(), push("garbage"))
    assert (result.verdict, result.reason) == (Verdict.DELETE_TOKEN, "INVALID_ARGUMENT")


def test_quota_exceeded_retries_after_retry_after(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    fake.script("busy", 429, "QUOTA_EXCEEDED", retry_after=90)
    [result] = send(make_provider(), push("busy"))
    assert (result.verdict, result.status, result.reason) == (
        Verdict.RETRY,
        429,
        "QUOTA_EXCEEDED",
    )
    assert result.retry_after == 90.0


def test_unavailable_then_success_over_two_sends(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    fake.script("flaky", 503, "UNAVAILABLE", times=1, retry_after=2)
    provider = make_provider()
    [first] = send(provider, push("flaky"))
    [second] = send(provider, push("flaky"))
    assert (first.verdict, first.reason, first.retry_after) == (Verdict.RETRY, "UNAVAILABLE", 2.0)
    assert second.verdict is Verdict.DELIVERED
    assert [r.status for r in fake.messages] == [503, 200]


def test_other_project_is_a_sender_id_mismatch(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    [result] = send(make_provider(), push(project="someone-elses-project"))
    assert (result.verdict, result.status, result.reason) == (
        Verdict.CONFIG_ERROR,
        403,
        "SENDER_ID_MISMATCH",
    )
    assert fake.messages[0].project == "someone-elses-project"


def test_sender_id_mismatch_is_one_error_line_with_the_classifier_hint(
    fake: FakeFcm, make_provider: ProviderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Provider + Dispatcher: the hint is logged once, at ERROR, by the dispatcher alone."""
    provider = make_provider()
    results: list[dict[str, Any]] = []
    caplog.set_level(logging.DEBUG)

    async def run() -> None:
        dispatcher = Dispatcher({ProviderName.FCM: provider}, results.append)
        for n in range(3):
            dispatcher.submit(
                {
                    "type": "push",
                    "id": f"p-{n}",
                    "kind": "call",
                    "provider": "fcm",
                    "prid": "reg-token-1",
                    "param": "someone-elses-project",
                    "deadline": time.time() + 10,
                }
            )
            assert await dispatcher.drain(5.0)

    asyncio.run(run())

    assert [r["verdict"] for r in results] == ["config_error"] * 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "SENDER_ID_MISMATCH" in errors[0]
    assert "another Firebase project" in errors[0]  # fcm_errors' hint, not a generic one


def test_refused_service_account_is_one_error_line_with_the_hint(
    fake: FakeFcm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = FakeFcm()
    with other:
        account = other.make_service_account(tmp_path)  # trusted by ``other`` only
    provider = FcmProvider(FcmSettings(account.path, token_uri=fake.token_uri, base_url=fake.url))
    results: list[dict[str, Any]] = []
    caplog.set_level(logging.DEBUG)

    async def run() -> None:
        dispatcher = Dispatcher({ProviderName.FCM: provider}, results.append)
        for n in range(2):
            dispatcher.submit(
                {
                    "type": "push",
                    "id": f"p-{n}",
                    "kind": "call",
                    "provider": "fcm",
                    "prid": "reg-token-1",
                    "param": account.project_id,
                    "deadline": time.time() + 10,
                }
            )
            assert await dispatcher.drain(5.0)
        await provider.close()

    asyncio.run(run())

    assert [r["verdict"] for r in results] == ["config_error"] * 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "token endpoint" in errors[0] and "check the key file" in errors[0]


def test_server_down_retries_quickly(fake: FakeFcm, make_provider: ProviderFactory) -> None:
    provider = make_provider()
    send(provider, push("warm-up"))  # leaves a kept-alive connection in the pool
    fake.stop()
    started = time.monotonic()
    [result] = send(provider, push())
    assert result.verdict is Verdict.RETRY
    assert result.status is None
    assert result.reason is not None
    assert result.reason.startswith("no answer")
    assert time.monotonic() - started < 1.0


def test_token_endpoint_down_retries(tmp_path: Path) -> None:
    with FakeFcm() as fake:
        account = fake.make_service_account(tmp_path)
        url, token_uri = fake.url, fake.token_uri
    provider = FcmProvider(FcmSettings(account.path, token_uri=token_uri, base_url=url))
    try:
        [result] = send(provider, push(project=account.project_id))
    finally:
        asyncio.run(provider.close())
    assert (result.verdict, result.status) == (Verdict.RETRY, None)


def test_untrusted_service_account_is_a_config_error(fake: FakeFcm, tmp_path: Path) -> None:
    other = FakeFcm()
    with other:
        account = other.make_service_account(tmp_path)  # trusted by ``other`` only
    provider = FcmProvider(FcmSettings(account.path, token_uri=fake.token_uri, base_url=fake.url))
    try:
        [result] = send(provider, push(project=account.project_id))
    finally:
        asyncio.run(provider.close())
    assert result.verdict is Verdict.CONFIG_ERROR
    assert result.reason is not None
    assert "invalid_grant" in result.reason
    assert fake.messages == []


def test_slow_fcm_times_out_without_blocking_the_loop(
    fake: FakeFcm, make_provider: ProviderFactory
) -> None:
    provider = make_provider(timeout=0.5)
    send(provider, push("warm-up"))  # token fetched; now only the send is slow
    fake.set_latency(1.5)

    async def go() -> tuple[PushResult, float, float]:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        started = time.monotonic()
        result = await provider.send(push("slow"))
        elapsed = time.monotonic() - started
        tick_task.cancel()
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        return result, elapsed, max(gaps)

    result, elapsed, worst_gap = asyncio.run(go())
    assert (result.verdict, result.status) == (Verdict.RETRY, None)
    assert 0.4 < elapsed < 1.2
    assert worst_gap < 0.2


def test_timeout_is_capped_by_the_deadline(fake: FakeFcm, make_provider: ProviderFactory) -> None:
    provider = make_provider(timeout=10.0)
    send(provider, push("warm-up"))
    fake.set_latency(2.5)
    started = time.monotonic()
    [result] = send(provider, push("slow", deadline=time.time() + 1.0))
    assert result.verdict is Verdict.RETRY
    assert time.monotonic() - started < 2.0


def test_regional_access_boundary_lookup_is_disabled(make_provider: ProviderFactory) -> None:
    creds = make_provider()._credentials
    if hasattr(creds, "_is_regional_access_boundary_lookup_required"):
        assert creds._is_regional_access_boundary_lookup_required() is False


def test_closed_provider_gives_up(make_provider: ProviderFactory) -> None:
    provider = make_provider()
    asyncio.run(provider.close())
    [result] = send(provider, push())
    assert result.verdict is Verdict.GIVE_UP


# --- the fake itself: strict where FCM is strict --------------------------------------------


def bearer(fake: FakeFcm, account: FakeServiceAccount, key: rsa.RSAPrivateKey | None = None) -> str:
    """An access token from the fake, fetched by hand (``key`` signs the assertion)."""
    reply = token_request(fake, account, key=key)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["access_token"])


def token_request(
    fake: FakeFcm,
    account: FakeServiceAccount,
    *,
    key: rsa.RSAPrivateKey | None = None,
    scope: str = SCOPE_FCM,
) -> requests.Response:
    now = int(time.time())
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": "https://oauth2.googleapis.com/token",
        "iat": now,
        "exp": now + 3600,
    }
    signer: Any = key if key is not None else account.info["private_key"]
    assertion = jwt.encode(
        claims, signer, algorithm="RS256", headers={"kid": account.private_key_id}
    )
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    return requests.post(fake.token_uri, data=form, timeout=5)


def raw_send(
    fake: FakeFcm, token: str, body: Any, project: str = "pushgate-it"
) -> requests.Response:
    url = f"{fake.url}/v1/projects/{project}/messages:send"
    return requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_fake_token_endpoint_checks_the_signature(
    fake: FakeFcm, account: FakeServiceAccount
) -> None:
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    reply = token_request(fake, account, key=forged)
    assert reply.status_code == 400
    assert reply.json() == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    assert fake.tokens_issued == 0


def test_fake_token_endpoint_checks_the_scope(fake: FakeFcm, account: FakeServiceAccount) -> None:
    reply = token_request(fake, account, scope="https://www.googleapis.com/auth/cloud-platform")
    assert (reply.status_code, reply.json()["error"]) == (400, "invalid_scope")


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"token": "t", "data": {"n": 1}}, "message.data[0].value"),
        ({"token": "t", "android": {"priority": "high"}}, "message.android.priority"),
        ({"token": "t", "android": {"ttl": "30"}}, "message.android.ttl"),
        ({"token": "t", "android": {"ttl": "2419201s"}}, "message.android.ttl"),
        ({"token": "t", "data": {"blob": "x" * 4096}}, "message"),
        ({"token": "t", "data": {"from": "x"}}, "message.data"),
        ({"data": {"a": "b"}}, "message"),
        ({"token": "t", "andriod": {}}, "message"),
    ],
)
def test_fake_rejects_what_fcm_rejects(
    fake: FakeFcm, account: FakeServiceAccount, message: dict[str, Any], field: str
) -> None:
    reply = raw_send(fake, bearer(fake, account), {"message": message})
    error = reply.json()["error"]
    assert reply.status_code == 400
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert {"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"} in error["details"]
    assert fake.messages[-1].status == 400
    violations = [d for d in error["details"] if "fieldViolations" in d]
    assert violations[0]["fieldViolations"][0]["field"] == field


def test_fake_accepts_a_maximal_valid_message(fake: FakeFcm, account: FakeServiceAccount) -> None:
    message = {
        "token": "t",
        "data": {"blob": "x" * 4092},
        "android": {"priority": "NORMAL", "ttl": "2419200s"},
    }
    reply = raw_send(fake, bearer(fake, account), {"message": message})
    assert reply.status_code == 200, reply.text


def test_fake_rejects_unknown_bearer_tokens_like_google(fake: FakeFcm) -> None:
    reply = raw_send(fake, "ya29.not-issued", {"message": {"token": "t"}})
    assert reply.status_code == 401
    assert reply.json()["error"]["status"] == "UNAUTHENTICATED"
    assert "details" not in reply.json()["error"]  # plain 401: no FcmError


def test_fake_error_bodies_have_the_real_shape(fake: FakeFcm, account: FakeServiceAccount) -> None:
    fake.script("t", 404, "UNREGISTERED")
    reply = raw_send(fake, bearer(fake, account), {"message": {"token": "t"}})
    assert reply.json() == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "UNREGISTERED"}],
        }
    }


# --- the fake as a process --------------------------------------------------------------------


def test_fake_process_reports_events_and_follows_the_control_file(tmp_path: Path) -> None:
    events, control = tmp_path / "events.jsonl", tmp_path / "control.json"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "testkit.fake_fcm", "--port", "0"),
            *("--events", str(events), "--control", str(control)),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == "READY", ready
        base = f"http://127.0.0.1:{ready[1]}"
        account_file = tmp_path / "fcm-service-account.json"
        provider = FcmProvider(FcmSettings(account_file, base_url=base))  # token_uri from file
        try:
            [ok] = send(provider, push("dev-1", project="pushgate-test"))
            tmp = control.with_suffix(".tmp")
            tmp.write_text(json.dumps({"dev-1": {"status": 404, "error_code": "UNREGISTERED"}}))
            tmp.rename(control)
            [gone] = send(provider, push("dev-1", project="pushgate-test"))
        finally:
            asyncio.run(provider.close())
        assert (ok.verdict, gone.verdict) == (Verdict.DELIVERED, Verdict.DELETE_TOKEN)
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        assert [(e["token"], e["status"], e["error_code"]) for e in lines] == [
            ("dev-1", 200, None),
            ("dev-1", 404, "UNREGISTERED"),
        ]
        assert lines[0]["priority"] == "HIGH"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
