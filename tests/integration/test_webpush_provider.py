"""The real WebpushProvider (pywebpush + py_vapid over aiohttp) against the Web Push
stand-in on loopback: RFC 8030 request, RFC 8292 VAPID token checked, answers classified;
and the stand-in decrypting an RFC 8291 payload that pywebpush encrypted."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from py_vapid import Vapid02
from pywebpush import webpush_async

from pushd import webpush_keys
from pushd.dispatch import Dispatcher, RequestDefaults, build_request
from pushd.model import ProviderName, PushRequest, PushResult, Verdict
from pushd.provider_settings import WebpushSettings
from pushd.webpush import WebpushProvider
from testkit.certs import TestPki
from testkit.fake_webpush import FakeWebPush, Subscription

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SUBJECT = "mailto:ops@pushgate.test"


@pytest.fixture
def fake(pki: TestPki) -> Iterator[FakeWebPush]:
    with FakeWebPush(pki.server_cert, pki.server_key) as server:
        yield server


@pytest.fixture
def vapid_key(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "vapid.pem"
    key = webpush_keys.generate(path)
    return path, webpush_keys.public_key_b64(key)


def settings(pki: TestPki, key_file: Path) -> WebpushSettings:
    return WebpushSettings(
        vapid_private_key_file=key_file, subject=SUBJECT, ca_file=pki.ca_cert, timeout=5.0
    )


def call_push(sub: Subscription, deadline_in: float = 30.0) -> PushRequest:
    msg = {
        "kind": "call",
        "provider": "webpush",
        "prid": sub.endpoint,
        "deadline": time.time() + deadline_in,
        "data": {"call_id": "c1"},
    }
    return build_request(msg, RequestDefaults())


def send(pki: TestPki, key_file: Path, *requests: PushRequest) -> list[PushResult]:
    async def run() -> list[PushResult]:
        provider = WebpushProvider(settings(pki, key_file))
        try:
            return [await provider.send(r) for r in requests]
        finally:
            await provider.close()

    return asyncio.run(run())


def test_call_push_is_an_empty_vapid_signed_push_with_ttl_and_urgency(
    pki: TestPki, fake: FakeWebPush, vapid_key: tuple[Path, str]
) -> None:
    key_file, public = vapid_key
    sub = fake.subscribe(public)
    request = call_push(sub, deadline_in=30.0)
    assert request.provider == ProviderName.WEBPUSH
    [result] = send(pki, key_file, request)
    assert result.verdict == Verdict.DELIVERED, result
    assert result.status == 201
    assert result.provider_id and result.provider_id.startswith(fake.origin + "/message/")
    [rec] = fake.pushes_for(sub)
    assert rec.status == 201, rec.reason
    assert rec.payload is None  # RFC 8599 §12: no encryption keys, no payload
    assert rec.urgency == "high"
    assert rec.ttl is not None and 27 <= rec.ttl <= 30
    assert rec.claims["aud"] == fake.origin
    assert rec.claims["sub"] == SUBJECT
    assert rec.claims["exp"] <= time.time() + 24 * 3600
    assert rec.vapid_key == public


def test_refresh_push_is_normal_urgency(
    pki: TestPki, fake: FakeWebPush, vapid_key: tuple[Path, str]
) -> None:
    key_file, public = vapid_key
    sub = fake.subscribe(public)
    msg = {"kind": "refresh", "provider": "webpush", "prid": sub.endpoint}
    request = build_request({**msg, "deadline": time.time() + 60}, RequestDefaults())
    [result] = send(pki, key_file, request)
    assert result.verdict == Verdict.DELIVERED
    assert fake.pushes_for(sub)[0].urgency == "normal"


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (410, Verdict.DELETE_TOKEN),
        (404, Verdict.DELETE_TOKEN),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (413, Verdict.CONFIG_ERROR),
        (400, Verdict.CONFIG_ERROR),
    ],
)
def test_answers_are_classified(
    pki: TestPki, fake: FakeWebPush, vapid_key: tuple[Path, str], status: int, verdict: Verdict
) -> None:
    key_file, public = vapid_key
    sub = fake.subscribe(public)
    fake.script(sub, [status], retry_after="2" if status in (429, 503) else None)
    [result] = send(pki, key_file, call_push(sub))
    assert result.status == status
    assert result.verdict == verdict
    if status in (429, 503):
        assert result.retry_after == 2.0
    if verdict == Verdict.CONFIG_ERROR:
        assert result.hint


def test_subscription_made_for_another_key_is_a_config_error(
    pki: TestPki, fake: FakeWebPush, vapid_key: tuple[Path, str], tmp_path: Path
) -> None:
    key_file, _public = vapid_key
    other = webpush_keys.public_key_b64(webpush_keys.generate(tmp_path / "other.pem"))
    sub = fake.subscribe(other)
    [result] = send(pki, key_file, call_push(sub))
    assert (result.status, result.verdict) == (403, Verdict.CONFIG_ERROR)
    assert fake.pushes_for(sub)[0].reason.startswith("VAPID key is not")


def test_unknown_subscription_is_deleted_and_dead_service_is_retried(
    pki: TestPki, fake: FakeWebPush, vapid_key: tuple[Path, str]
) -> None:
    key_file, public = vapid_key
    sub = fake.subscribe(public)
    gone = call_push(sub)
    gone = PushRequest(
        provider=gone.provider,
        token=sub.endpoint.replace(sub.id, "x" * 20),
        topic="",
        kind=gone.kind,
        deadline=gone.deadline,
    )
    port = fake.port
    [deleted] = send(pki, key_file, gone)
    assert deleted.verdict == Verdict.DELETE_TOKEN
    fake.stop()
    dead = PushRequest(
        provider=gone.provider,
        token=f"https://127.0.0.1:{port}/push/{sub.id}",
        topic="",
        kind=gone.kind,
        deadline=gone.deadline,
    )
    [retry] = send(pki, key_file, dead)
    assert retry.verdict == Verdict.RETRY
    assert retry.status is None


def test_stand_in_decrypts_an_rfc8291_payload(
    pki: TestPki, fake: FakeWebPush, vapid_key: tuple[Path, str]
) -> None:
    """Where a subscription's keys are known, pywebpush encrypts (aes128gcm) and the
    stand-in decrypts with the user agent's private key, as the browser would."""
    key_file, public = vapid_key
    sub = fake.subscribe(public)

    async def run() -> int:
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(pki.ca_cert)))
        async with aiohttp.ClientSession(connector=connector) as session:
            response = await webpush_async(
                sub.to_json(),
                data='{"call_id":"c1"}',
                vapid_private_key=Vapid02(webpush_keys.load_private_key(key_file.read_bytes())),
                vapid_claims={"sub": SUBJECT},
                ttl=30,
                aiohttp_session=session,
            )
            assert isinstance(response, aiohttp.ClientResponse)
            return response.status

    assert asyncio.run(run()) == 201
    [rec] = fake.pushes_for(sub)
    assert rec.payload == b'{"call_id":"c1"}'


def pushd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushd", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def write_config(tmp_path: Path, pki: TestPki, key_file: Path) -> Path:
    path = tmp_path / "pushd.yaml"
    path.write_text(
        "kamailio: {evapi: '127.0.0.1:1', secret: 'a-long-test-secret'}\n"
        f"webpush: {{vapid_private_key_file: '{key_file}', subject: '{SUBJECT}', "
        f"ca_file: '{pki.ca_cert}'}}\n"
    )
    return path


def test_keys_command_check_config_and_test_push(
    pki: TestPki, fake: FakeWebPush, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys" / "vapid.pem"
    key_file.parent.mkdir()
    config = write_config(tmp_path, pki, key_file)
    # No key yet: refused at start, naming file and key.
    missing = pushd("--check-config", str(config))
    assert missing.returncode == 2
    assert f"{config}: webpush.vapid_private_key_file" in missing.stderr
    assert "file not found" in missing.stderr
    created = pushd("webpush-keys", "--config", str(config))
    assert created.returncode == 0, created.stderr
    public = created.stdout.strip()
    assert len(public) == 87 and key_file.stat().st_mode & 0o777 == 0o600
    again = pushd("webpush-keys", "--config", str(config))
    assert again.stdout.strip() == public  # never replaced
    ok = pushd("--check-config", str(config))
    assert ok.returncode == 0, ok.stderr
    assert f"webpush=(vapid={public})" in ok.stdout
    sub = fake.subscribe(public)
    sent = pushd(
        "test-push", "--config", str(config), "--provider", "webpush", "--prid", sub.endpoint
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "verdict=delivered status=201" in sent.stdout
    assert fake.pushes_for(sub)[0].status == 201


def test_bad_vapid_key_is_refused_at_start(pki: TestPki, tmp_path: Path) -> None:
    key_file = tmp_path / "vapid.pem"
    key_file.write_text(pki.server_cert.read_text())  # a certificate, not a key
    config = write_config(tmp_path, pki, key_file)
    for argv in (("--check-config", str(config)), ("--config", str(config))):
        result = pushd(*argv)
        assert result.returncode == 2
        assert f"{config}: webpush.vapid_private_key_file: {key_file} is not" in result.stderr


def test_dispatcher_retries_429_and_503_within_the_deadline(
    pki: TestPki, fake: FakeWebPush, vapid_key: tuple[Path, str]
) -> None:
    """429 / 5xx answers are retried (after Retry-After) until the push service takes
    the push, all before the push's deadline; one result goes back."""
    key_file, public = vapid_key
    sub = fake.subscribe(public)
    fake.script(sub, [429, 503], retry_after="1")
    results: list[dict[str, object]] = []

    async def run() -> None:
        provider = WebpushProvider(settings(pki, key_file))
        dispatcher = Dispatcher({ProviderName.WEBPUSH: provider}, results.append)
        dispatcher.submit(
            {
                "type": "push",
                "id": "p-1",
                "kind": "call",
                "provider": "webpush",
                "prid": sub.endpoint,
                "deadline": time.time() + 10,
            }
        )
        assert await dispatcher.drain(15.0)
        await provider.close()

    started = time.monotonic()
    asyncio.run(run())
    elapsed = time.monotonic() - started
    assert [(r["verdict"], r["status"], r["attempts"]) for r in results] == [("delivered", 201, 3)]
    assert [r.status for r in fake.pushes_for(sub)] == [429, 503, 201]
    assert 2.0 <= elapsed < 10  # Retry-After: 1 honoured twice, inside the deadline
