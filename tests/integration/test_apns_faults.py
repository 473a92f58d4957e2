"""APNs misbehaving, seen from pushd's dispatcher: each fault ends in one logged verdict
inside the push's deadline (a held call's caller never waits longer than its hold).

The real ApnsProvider and Dispatcher against the fake APNs (or a bare TCP listener).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pushd.apns import ApnsProvider
from pushd.dispatch import Dispatcher
from pushd.model import ProviderName
from testkit.certs import TestPki, make_test_pki
from testkit.fake_apns import FakeApnsThread, client_settings

pytestmark = pytest.mark.integration

BUNDLE = "com.example.app"
DEADLINE = 3.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"), bundle=BUNDLE)


def token(n: int) -> str:
    return f"{n:02x}" * 32


def dispatch(settings: Any, tokens: list[str], during: Any = None) -> tuple[list[dict], float]:
    """Submit one call push per token (deadline DEADLINE s); every result and the time
    until the last one. ``during(n)`` runs after the n-th submit."""
    results: list[dict[str, Any]] = []

    async def run() -> float:
        provider = ApnsProvider(settings)
        dispatcher = Dispatcher({ProviderName.APNS: provider}, results.append)
        started = time.monotonic()
        try:
            for n, tok in enumerate(tokens):
                dispatcher.submit(
                    {
                        "type": "push",
                        "id": f"f-{n}",
                        "kind": "call",
                        "provider": "apns",
                        "prid": tok,
                        "param": f"ABCDE12345.{BUNDLE}.voip",
                        "deadline": time.time() + DEADLINE,
                    }
                )
                if during is not None:
                    await during(n)
            assert await dispatcher.drain(DEADLINE + 5)
            return time.monotonic() - started
        finally:
            await provider.close()

    elapsed = asyncio.run(run())
    return results, elapsed


@pytest.fixture
def silent_tcp() -> Iterator[int]:
    """Accepts TCP connections and never says a word (no TLS handshake)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        server.close()


def test_a_server_that_never_answers_tls_ends_in_give_up_within_the_deadline(
    pki: TestPki, silent_tcp: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = client_settings(pki, silent_tcp, timeout=1.0)
    results, elapsed = dispatch(settings, [token(1)])
    assert [r["verdict"] for r in results] == ["give_up"]
    assert elapsed < DEADLINE + 1.5
    assert any("give_up" in r.getMessage() for r in caplog.records)


def test_a_certificate_our_ca_did_not_sign_is_refused_and_not_retried_forever(
    pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stranger = make_test_pki(tmp_path_factory.mktemp("stranger"), bundle=BUNDLE)
    with FakeApnsThread(stranger) as fake:  # its certificate: another CA
        results, elapsed = dispatch(client_settings(pki, fake.port, timeout=1.0), [token(2)])
        assert fake.pushes == []
    assert len(results) == 1 and results[0]["verdict"] in ("give_up", "config_error")
    assert elapsed < DEADLINE + 1.5


def test_goaway_in_the_middle_of_a_burst_loses_no_push(pki: TestPki) -> None:
    tokens = [token(10 + n) for n in range(40)]
    with FakeApnsThread(pki) as fake:

        async def during(n: int) -> None:
            if n == 20:
                fake.goaway_all()
            await asyncio.sleep(0.005)

        results, elapsed = dispatch(client_settings(pki, fake.port), tokens, during)
        delivered = {p.token for p in fake.pushes if p.status == 200}
    assert sorted(r["verdict"] for r in results) == ["delivered"] * 40
    assert delivered == set(tokens)
    assert elapsed < DEADLINE


def test_500_with_retry_after_is_retried_after_it_within_the_deadline(pki: TestPki) -> None:
    tok = token(60)
    with FakeApnsThread(pki) as fake:
        fake.script(tok, 500, "InternalServerError", times=1, retry_after=1)
        results, elapsed = dispatch(client_settings(pki, fake.port), [tok])
        attempts = fake.pushes_for(tok)
    assert [r["verdict"] for r in results] == ["delivered"]
    assert [a.status for a in attempts] == [500, 200]
    assert attempts[1].time - attempts[0].time >= 0.9
    assert elapsed < DEADLINE
