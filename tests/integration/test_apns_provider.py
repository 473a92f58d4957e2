"""The real ApnsProvider (its h2 connections) against the fake APNs over TLS on 127.0.0.1.

The fake runs in its own thread and loop; each test drives the provider with asyncio.run.
Every test uses its own device token, so the fake's records are easy to tell apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from pushd.apns import ApnsProvider
from pushd.dispatch import Dispatcher
from pushd.model import Environment, ProviderName, PushKind, PushRequest, PushResult, Verdict
from pushd.provider_settings import ApnsSettings
from testkit.certs import TestPki, make_test_pki
from testkit.fake_apns import FakeApnsThread, client_settings

pytestmark = pytest.mark.integration

BUNDLE = "com.example.app"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"), bundle=BUNDLE)


@pytest.fixture
def apns(pki: TestPki) -> Iterator[FakeApnsThread]:
    with FakeApnsThread(pki) as fake:
        yield fake


def token(n: int) -> str:
    return f"{n:02x}" * 32


def token_settings(pki: TestPki, port: int, **overrides: Any) -> ApnsSettings:
    return client_settings(pki, port, **overrides)


def push(
    tok: str,
    kind: PushKind = PushKind.CALL,
    *,
    topic: str = f"{BUNDLE}.voip",
    ttl: float = 30.0,
    **kwargs: Any,
) -> PushRequest:
    return PushRequest(
        provider=ProviderName.APNS,
        token=tok,
        topic=topic,
        kind=kind,
        deadline=time.time() + ttl,
        **kwargs,
    )


def send(
    settings: ApnsSettings,
    *requests: PushRequest,
    pause: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> list[PushResult]:
    """Send ``requests`` one after the other through one provider, ``pause`` s apart."""

    async def run() -> list[PushResult]:
        provider = ApnsProvider(settings, clock=clock)
        results = []
        try:
            for i, request in enumerate(requests):
                if i and pause:
                    await asyncio.sleep(pause)
                results.append(await provider.send(request))
        finally:
            await provider.close()
        return results

    return asyncio.run(run())


def test_token_auth_voip_push_reaches_apns_as_apple_wants_it(
    pki: TestPki, apns: FakeApnsThread
) -> None:
    tok = token(1)
    request = push(tok, data={"call_id": "c-1", "caller": "sip:bob@example.com"}, collapse_id="c-1")

    [result] = send(token_settings(pki, apns.port), request)

    assert result.verdict is Verdict.DELIVERED
    assert result.status == 200
    [seen] = apns.pushes_for(tok)
    assert result.provider_id == seen.apns_id
    assert seen.auth == "token"
    assert seen.topic == f"{BUNDLE}.voip"
    assert seen.push_type == "voip"
    assert seen.priority == 10
    assert seen.expiration is not None
    assert abs(seen.expiration - int(request.deadline)) <= 1
    assert seen.collapse_id == "c-1"
    assert seen.payload == {"aps": {}, "call_id": "c-1", "caller": "sip:bob@example.com"}


def test_alert_and_background_pushes_get_their_topic_type_and_priority(
    pki: TestPki, apns: FakeApnsThread
) -> None:
    tok = token(2)
    missed = push(tok, PushKind.MISSED, topic=f"{BUNDLE}.voip", data={"body": "Bob called"})
    refresh = push(tok, PushKind.REFRESH, topic=BUNDLE)

    results = send(token_settings(pki, apns.port), missed, refresh)

    assert [r.verdict for r in results] == [Verdict.DELIVERED, Verdict.DELIVERED]
    alert, background = apns.pushes_for(tok)
    assert (alert.topic, alert.push_type, alert.priority) == (BUNDLE, "alert", 10)
    assert alert.payload == {"aps": {"alert": {"body": "Bob called"}, "sound": "default"}}
    assert (background.topic, background.push_type, background.priority) == (
        BUNDLE,
        "background",
        5,
    )
    assert background.payload == {"aps": {"content-available": 1}}


def test_certificate_auth_sends_without_jwt(pki: TestPki, apns: FakeApnsThread) -> None:
    tok = token(3)
    settings = token_settings(
        pki, apns.port, auth="certificate", cert_file=pki.client_cert, key_file=None
    )

    [result] = send(settings, push(tok))

    assert result.verdict is Verdict.DELIVERED
    [seen] = apns.pushes_for(tok)
    assert seen.auth == "certificate"
    assert seen.jwt is None
    assert seen.topic == f"{BUNDLE}.voip"


def test_unregistered_token_is_deleted(pki: TestPki, apns: FakeApnsThread) -> None:
    tok = token(4)
    apns.script(tok, 410, "Unregistered")

    [result] = send(token_settings(pki, apns.port), push(tok))

    assert (result.verdict, result.status, result.reason) == (
        Verdict.DELETE_TOKEN,
        410,
        "Unregistered",
    )


def test_throttling_is_retried_after_the_servers_delay(pki: TestPki, apns: FakeApnsThread) -> None:
    tok = token(5)
    apns.script(tok, 429, "TooManyRequests", times=1, retry_after=7)

    [result] = send(token_settings(pki, apns.port), push(tok))

    assert (result.verdict, result.status, result.retry_after) == (Verdict.RETRY, 429, 7.0)


def test_unavailable_then_success(pki: TestPki, apns: FakeApnsThread) -> None:
    tok = token(6)
    apns.script(tok, 503, "ServiceUnavailable", times=1)

    first, second = send(token_settings(pki, apns.port), push(tok), push(tok))

    assert (first.verdict, first.status) == (Verdict.RETRY, 503)
    assert (second.verdict, second.status) == (Verdict.DELIVERED, 200)


def test_one_jwt_across_idle_reconnects_and_environments(pki: TestPki) -> None:
    tok = token(7)
    with FakeApnsThread(pki, idle_timeout=0.15) as apns:
        requests = [
            push(tok),
            push(tok),
            push(tok, environment=Environment.SANDBOX),
            push(tok),
        ]
        results = send(token_settings(pki, apns.port), *requests, pause=0.4)

        assert all(r.verdict is Verdict.DELIVERED for r in results)
        assert apns.connections_opened >= 4
        assert len({p.connection for p in apns.pushes}) == 4
        assert len(apns.distinct_jwts) == 1


def test_each_request_names_apples_host_for_its_environment(
    pki: TestPki, apns: FakeApnsThread
) -> None:
    """One stand-in serves both environments (``host`` override), but ``:authority``
    still says which of Apple's hosts each push is for."""
    tok = token(34)
    requests = [push(tok), push(tok, environment=Environment.SANDBOX)]
    results = send(token_settings(pki, apns.port), *requests)

    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 2
    assert [p.authority for p in apns.pushes] == [
        "api.push.apple.com",
        "api.sandbox.push.apple.com",
    ]
    assert [p.environment for p in apns.pushes] == ["production", "sandbox"]


def test_expired_provider_token_is_reminted_once(pki: TestPki, apns: FakeApnsThread) -> None:
    tok = token(8)
    apns.script(tok, 403, "ExpiredProviderToken", times=1)

    first, second, third = send(token_settings(pki, apns.port), push(tok), push(tok), push(tok))

    assert (first.verdict, first.reason) == (Verdict.RETRY, "ExpiredProviderToken")
    assert second.verdict is Verdict.DELIVERED and third.verdict is Verdict.DELIVERED
    jwts = [p.jwt for p in apns.pushes_for(tok)]
    assert jwts[0] != jwts[1]
    assert jwts[1] == jwts[2]  # no churn once the new token works
    assert len(apns.distinct_jwts) == 2


def test_a_really_old_jwt_is_refused_and_retried(pki: TestPki, apns: FakeApnsThread) -> None:
    def two_hours_ago() -> float:
        return time.time() - 7200

    [result] = send(token_settings(pki, apns.port), push(token(9)), clock=two_hours_ago)

    assert (result.verdict, result.status, result.reason) == (
        Verdict.RETRY,
        403,
        "ExpiredProviderToken",
    )
    [seen] = apns.pushes
    assert seen.jwt is not None
    assert jwt.decode(seen.jwt, options={"verify_signature": False})["iat"] < time.time() - 7000


def test_unknown_key_id_is_a_config_error(pki: TestPki, apns: FakeApnsThread) -> None:
    [result] = send(token_settings(pki, apns.port, key_id="WRONGKEY01"), push(token(10)))

    assert (result.verdict, result.status, result.reason) == (
        Verdict.CONFIG_ERROR,
        403,
        "InvalidProviderToken",
    )


def test_a_slow_answer_times_out_and_the_connection_survives_it(
    pki: TestPki, apns: FakeApnsThread
) -> None:
    tok = token(11)
    apns.script(tok, 200, times=1, delay=0.6)
    settings = token_settings(pki, apns.port, timeout=0.2)

    async def run() -> tuple[PushResult, float, PushResult]:
        provider = ApnsProvider(settings)
        started = time.monotonic()
        slow = await provider.send(push(tok))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.8)  # the late answer arrives on the open connection
        after = await provider.send(push(tok))
        await provider.close()
        return slow, elapsed, after

    slow, elapsed, after = asyncio.run(run())

    assert slow.verdict is Verdict.RETRY and slow.status is None
    assert slow.reason is not None and "no answer" in slow.reason
    assert elapsed < 0.5
    assert after.verdict is Verdict.DELIVERED
    assert apns.connections_opened == 1  # the late answer did not kill the connection
    assert apns.streams_reset == 1  # the abandoned request was cancelled with RST_STREAM


def test_server_down_is_a_quick_retry(pki: TestPki) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    started = time.monotonic()
    [result] = send(token_settings(pki, port), push(token(12)))

    assert result.verdict is Verdict.RETRY
    assert result.status is None
    assert result.reason is not None and "cannot connect" in result.reason
    assert time.monotonic() - started < 3.0


def test_past_deadline_is_not_sent(pki: TestPki, apns: FakeApnsThread) -> None:
    [result] = send(token_settings(pki, apns.port), push(token(13), ttl=-1))

    assert result.verdict is Verdict.GIVE_UP
    assert apns.pushes == []


def test_200_concurrent_sends(pki: TestPki, apns: FakeApnsThread) -> None:
    tok = token(14)
    settings = token_settings(pki, apns.port)

    async def run() -> list[PushResult]:
        provider = ApnsProvider(settings)
        try:
            return await asyncio.gather(*(provider.send(push(tok)) for _ in range(200)))
        finally:
            await provider.close()

    started = time.monotonic()
    results = asyncio.run(run())

    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 200
    assert len(apns.pushes_for(tok)) == 200
    assert len({r.provider_id for r in results}) == 200
    assert len(apns.distinct_jwts) == 1
    assert apns.connections_opened <= settings.max_connections
    assert apns.stream_limit_violations == 0
    assert time.monotonic() - started < 5.0


def test_logs_hold_no_jwt_and_no_full_token(
    pki: TestPki, apns: FakeApnsThread, caplog: pytest.LogCaptureFixture
) -> None:
    tok = token(15)
    apns.script(tok, 400, "DeviceTokenNotForTopic", times=1)
    caplog.set_level(logging.DEBUG)

    send(token_settings(pki, apns.port), push(tok), push(tok))

    jwts = apns.distinct_jwts
    assert jwts
    assert tok not in caplog.text
    assert f"{tok[:8]}…(64)" in caplog.text  # pushd.logs.short_token
    assert all(j not in caplog.text for j in jwts)
    assert pki.apns_key.read_text().splitlines()[1] not in caplog.text
    assert "check the bundle in pn-param" in caplog.text  # the operator hint


def test_bad_ca_file_fails_at_construction(pki: TestPki, tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")

    with pytest.raises(OSError):  # ssl.SSLError is an OSError
        ApnsProvider(token_settings(pki, 443, ca_file=bogus))


def test_one_connection_carries_many_pushes_at_once(pki: TestPki, apns: FakeApnsThread) -> None:
    """The raise to 1000 streams (after the first valid JWT) is usable on that connection.

    Every answer is held back 0.5 s, so the pushes the fake receives before the first
    answer are the ones that were in flight together. (aioapns 4.0, used before, managed 2.)
    """
    tok = token(16)
    apns.script(tok, 200, delay=0.5)  # forever
    settings = token_settings(pki, apns.port, max_connections=1)

    async def run() -> list[PushResult]:
        provider = ApnsProvider(settings)
        try:
            return await asyncio.gather(*(provider.send(push(tok)) for _ in range(200)))
        finally:
            await provider.close()

    results = asyncio.run(run())

    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 200
    seen = apns.pushes_for(tok)
    first_answer = min(p.time for p in seen) + 0.5
    together = [p for p in seen if p.time < first_answer]
    assert len(together) >= 50
    assert apns.connections_opened == 1
    assert apns.stream_limit_violations == 0


def test_a_push_cancelled_from_outside_does_not_break_the_connection(
    pki: TestPki, apns: FakeApnsThread
) -> None:
    """The dispatcher's own deadline cancels a send; its late answer must be ignored."""
    tok = token(17)
    apns.script(tok, 200, times=1, delay=0.4)
    settings = token_settings(pki, apns.port, max_connections=1)

    async def run() -> PushResult:
        provider = ApnsProvider(settings)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await provider.send(push(tok))
            await asyncio.sleep(0.6)  # the late answer arrives on the open connection
            return await provider.send(push(tok))
        finally:
            await provider.close()

    after = asyncio.run(run())

    assert after.verdict is Verdict.DELIVERED
    assert apns.connections_opened == 1


def test_a_connection_keeps_answering_after_64_kib_of_error_bodies(
    pki: TestPki, apns: FakeApnsThread
) -> None:
    """Error answers carry a JSON body; a client that never hands that data back as
    flow-control window receives no further answer after ~64 KiB of them."""
    count = 2500  # x ~35 bytes of {"reason": "BadExpirationDate"}: over 64 KiB
    tokens = [token(n % 200 + 20) for n in range(count)]
    for tok in set(tokens):
        apns.script(tok, 400, "BadExpirationDate")
    settings = token_settings(pki, apns.port, max_connections=1)

    async def run() -> list[PushResult]:
        provider = ApnsProvider(settings)
        try:
            return await asyncio.gather(*(provider.send(push(tok)) for tok in tokens))
        finally:
            await provider.close()

    results = asyncio.run(run())

    assert [r.reason for r in results] == ["BadExpirationDate"] * count
    assert apns.connections_opened == 1


@pytest.mark.parametrize(
    "body", [b"", b"<html>502 Bad Gateway</html>"], ids=["no-body", "html-body"]
)
def test_an_error_answer_that_is_not_apns_json_is_still_an_answer(
    pki: TestPki, apns: FakeApnsThread, body: bytes
) -> None:
    """A proxy in front of APNs may answer 502 with HTML, or nothing: the push gets its
    verdict at once (not at the timeout, and the connection stays usable)."""
    tok = token(30)
    apns.script(tok, 502, times=1, body=body)
    settings = token_settings(pki, apns.port, timeout=3.0)

    async def run() -> tuple[PushResult, float, PushResult]:
        provider = ApnsProvider(settings)
        try:
            started = time.monotonic()
            first = await provider.send(push(tok))
            elapsed = time.monotonic() - started
            return first, elapsed, await provider.send(push(tok))
        finally:
            await provider.close()

    first, elapsed, after = asyncio.run(run())

    assert (first.verdict, first.status) == (Verdict.RETRY, 502)
    assert elapsed < 1.0
    assert after.verdict is Verdict.DELIVERED
    assert apns.connections_opened == 1


def test_an_idle_connection_is_kept_open_with_pings(pki: TestPki, apns: FakeApnsThread) -> None:
    """Apple asks for connections kept open across pushes: the second push, 0.7 s later,
    rides the first one's connection, kept alive by PINGs every 0.2 s of silence."""
    tok = token(31)
    results = send(token_settings(pki, apns.port, keepalive=0.2), push(tok), push(tok), pause=0.7)

    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 2
    assert apns.connections_opened == 1
    assert apns.pings_received >= 2


def test_a_connection_unused_for_idle_timeout_is_closed(pki: TestPki, apns: FakeApnsThread) -> None:
    tok = token(32)
    settings = token_settings(pki, apns.port, idle_timeout=0.3, keepalive=0)
    results = send(settings, push(tok), push(tok), pause=0.8)

    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 2
    assert apns.connections_opened == 2  # the fake closes nothing by itself
    assert apns.pings_received == 0


class FreezingRelay:
    """TCP relay in front of the fake that can go silent without closing anything, like
    a connection a NAT or firewall forgot: bytes are dropped both ways while frozen."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.client_closed = asyncio.Event()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_client: bool
        ) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if not self.frozen:
                        dst.write(data)
            if from_client:
                self.client_closed.set()
            dst.close()

        await asyncio.gather(
            pipe(reader, up_writer, True), pipe(up_reader, writer, False), return_exceptions=True
        )


def test_a_connection_that_died_silently_is_dropped_before_a_call_needs_it(
    pki: TestPki, apns: FakeApnsThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the PING, the next push would go into the dead connection and wait the
    whole timeout for nothing."""
    tok = token(33)

    async def run() -> tuple[PushResult, bool, PushResult]:
        relay = FreezingRelay(apns.port)
        port = await relay.start()
        provider = ApnsProvider(token_settings(pki, port, keepalive=0.2, timeout=0.5))
        try:
            first = await provider.send(push(tok))
            relay.frozen = True
            try:
                await asyncio.wait_for(relay.client_closed.wait(), 2.0)  # 0.2 s + 0.5 s
                dropped = True
            except TimeoutError:
                dropped = False
            relay.frozen = False
            return first, dropped, await provider.send(push(tok))
        finally:
            await provider.close()
            await relay.stop()

    with caplog.at_level(logging.WARNING, logger="pushd.apns"):
        first, dropped, after = asyncio.run(run())

    assert first.verdict is Verdict.DELIVERED
    assert dropped
    assert "no answer to a PING within 0.5 s; dropping it" in caplog.text
    assert after.verdict is Verdict.DELIVERED
    assert apns.connections_opened == 2


def test_config_error_is_one_error_line_with_the_classifier_hint(
    pki: TestPki, apns: FakeApnsThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Provider + Dispatcher: the hint is logged once, at ERROR, by the dispatcher alone."""
    tok = token(16)
    apns.script(tok, 400, "DeviceTokenNotForTopic")  # every push
    results: list[dict[str, Any]] = []
    caplog.set_level(logging.DEBUG)

    async def run() -> None:
        provider = ApnsProvider(token_settings(pki, apns.port))
        dispatcher = Dispatcher({ProviderName.APNS: provider}, results.append)
        try:
            for n in range(3):
                dispatcher.submit(
                    {
                        "type": "push",
                        "id": f"p-{n}",
                        "kind": "call",
                        "provider": "apns",
                        "prid": tok,
                        "param": f"ABCDE12345.{BUNDLE}.voip",
                        "deadline": time.time() + 10,
                    }
                )
                assert await dispatcher.drain(5.0)
        finally:
            await provider.close()

    asyncio.run(run())

    assert [r["verdict"] for r in results] == ["config_error"] * 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "DeviceTokenNotForTopic" in errors[0]
    assert f"'{BUNDLE}.voip'" in errors[0] and "check the bundle in pn-param" in errors[0]
    loud_apns = [r for r in caplog.records if r.name == "pushd.apns" and r.levelno > logging.DEBUG]
    assert [r.getMessage() for r in loud_apns if "config_error" in r.getMessage()] == []
