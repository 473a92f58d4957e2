"""pushd's evapi client against a local netstring server standing in for Kamailio.

A protocol test of the client side (docs/kamailio-pushd-protocol.md): hello first with
the secret, push in -> result out, reconnect after drops and refusals (logged once per
outage), results queued while disconnected and sent after the next welcome.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from pushd.dispatch import Dispatcher
from pushd.kamailio_link import KamailioLink
from pushd.model import ProviderName, PushRequest, PushResult, Verdict
from pushgate import wire
from tests.integration.fake_evapi import SECRET, TIMEOUT, FakeEvapi

pytestmark = pytest.mark.integration


def make_link(port: int, **kw: Any) -> tuple[KamailioLink, list[dict[str, Any]]]:
    pushes: list[dict[str, Any]] = []
    kw.setdefault("on_push", pushes.append)
    kw.setdefault("reconnect_max_delay", 0.05)
    kw.setdefault("secret", SECRET)
    link = KamailioLink(host="127.0.0.1", port=port, rng=random.Random(0), **kw)
    return link, pushes


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(20):
            await scenario()

    asyncio.run(guarded())


async def stopped(link: KamailioLink, task: asyncio.Task[None]) -> None:
    await link.close(flush_timeout=1.0)
    async with asyncio.timeout(TIMEOUT):
        await task


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not check():
            await asyncio.sleep(0.005)


def test_hello_is_the_first_message_and_carries_the_secret() -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        link, _ = make_link(server.port)
        task = asyncio.create_task(link.run())
        conn, hello = await server.next()
        assert conn == 0
        assert hello["type"] == "hello" and hello["secret"] == SECRET
        assert hello["version"] == wire.VERSION and hello["agent"].startswith("pushd/")
        await link.wait_authenticated(TIMEOUT)
        await stopped(link, task)
        await server.stop()

    run(scenario)


def test_secret_callable_is_read_on_every_connect() -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        secrets = iter([SECRET, "rotated"])
        link, _ = make_link(server.port, secret=lambda: next(secrets))
        task = asyncio.create_task(link.run())
        assert (await server.next())[1]["secret"] == SECRET
        await link.wait_authenticated(TIMEOUT)
        server.drop()
        assert (await server.next())[1]["secret"] == "rotated"
        await stopped(link, task)
        await server.stop()

    run(scenario)


class Delivering:
    name = ProviderName.APNS

    def __init__(self) -> None:
        self.requests: list[PushRequest] = []

    async def send(self, request: PushRequest) -> PushResult:
        self.requests.append(request)
        return PushResult(verdict=Verdict.DELIVERED, status=200)

    async def close(self) -> None:
        pass


def push_msg(push_id: str) -> dict[str, Any]:
    return {
        "type": "push",
        "id": push_id,
        "kind": "call",
        "provider": "apns",
        "prid": "ab" * 32,
        "param": "ABCDE12345.com.example.app.voip",
        "aor": "sip:alice@example.com",
        "ruid": "r-" + push_id,
        "deadline": time.time() + 10,
        "data": {"call_id": "c-" + push_id},
    }


def test_push_in_result_out_through_the_dispatcher() -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        provider = Delivering()
        link_box: list[KamailioLink] = []
        dispatcher = Dispatcher({ProviderName.APNS: provider}, lambda m: link_box[0].send_result(m))
        link, _ = make_link(server.port, on_push=dispatcher.submit)
        link_box.append(link)
        task = asyncio.create_task(link.run())
        await server.next()  # hello
        await link.wait_authenticated(TIMEOUT)
        server.send(push_msg("p1"))
        server.send(push_msg("p2"))
        results = {}
        for _ in range(2):
            conn, msg = await server.next()
            assert conn == 0 and msg["type"] == "result"
            results[msg["id"]] = msg
        assert results["p1"]["verdict"] == "delivered" and results["p1"]["ruid"] == "r-p1"
        assert server.acks == [(0, "p1"), (0, "p2")]  # each push acked when read
        assert results["p2"]["aor"] == "sip:alice@example.com"
        assert [r.token for r in provider.requests] == ["ab" * 32] * 2
        await stopped(link, task)
        await server.stop()

    run(scenario)


def test_reconnects_after_kamailio_drops_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        link, pushes = make_link(server.port)
        task = asyncio.create_task(link.run())
        assert (await server.next())[0] == 0
        await link.wait_authenticated(TIMEOUT)
        server.drop()
        conn, hello = await server.next()
        assert (conn, hello["type"]) == (1, "hello")
        await link.wait_authenticated(TIMEOUT)
        server.send(push_msg("after"))
        await until(lambda: len(pushes) == 1)
        assert pushes[0]["id"] == "after"
        assert link.connections == 2
        await stopped(link, task)
        await server.stop()

    with caplog.at_level(logging.INFO, logger="pushd.link"):
        run(scenario)
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert "again after" in caplog.text


def test_results_queued_while_down_are_sent_after_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        link, _ = make_link(server.port)
        task = asyncio.create_task(link.run())
        await server.next()
        await link.wait_authenticated(TIMEOUT)
        await server.stop()
        await until(lambda: not link.authenticated)
        link.send_result({"type": "result", "id": "q1", "verdict": "delivered"})
        link.send_result({"type": "result", "id": "q2", "verdict": "give_up"})
        await asyncio.sleep(0.3)  # several refused reconnects (backoff capped at 50 ms)
        assert link.queued == 2
        server2 = FakeEvapi()
        server2.port = server.port
        await server2.start()
        msgs = [(await server2.next())[1] for _ in range(3)]
        assert [m["type"] for m in msgs] == ["hello", "result", "result"]
        assert [m["id"] for m in msgs[1:]] == ["q1", "q2"]
        assert link.queued == 0
        await stopped(link, task)
        await server2.stop()

    with caplog.at_level(logging.DEBUG, logger="pushd.link"):
        run(scenario)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # One for the drop, one for the refused reconnects: not one per attempt.
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    refused = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(refused) > 2  # the repeats went to debug


def test_refused_at_start_then_kamailio_comes_up(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        probe = await FakeEvapi().start()
        port = probe.port
        await probe.stop()
        link, _ = make_link(port)
        task = asyncio.create_task(link.run())
        await asyncio.sleep(0.25)
        assert not link.authenticated
        server = FakeEvapi()
        server.port = port
        await server.start()
        await server.next()
        await link.wait_authenticated(TIMEOUT)
        await stopped(link, task)
        await server.stop()

    with caplog.at_level(logging.INFO, logger="pushd.link"):
        run(scenario)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot connect" in warnings[0].getMessage()


def test_wrong_secret_is_diagnosed_once_and_nothing_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        server = await FakeEvapi(secret="something-else").start()
        link, _ = make_link(server.port)
        link.send_result({"type": "result", "id": "x"})
        task = asyncio.create_task(link.run())
        await until(lambda: link.connections >= 3)
        assert link.queued == 1
        await stopped(link, task)
        await server.stop()
        while not server.received.empty():
            assert server.received.get_nowait()[1]["type"] == "hello"

    with caplog.at_level(logging.INFO, logger="pushd.link"):
        run(scenario)
    diagnosed = [r for r in caplog.records if "PUSHGATE_SECRET" in r.getMessage()]
    assert len(diagnosed) == 1
    assert SECRET not in caplog.text


def test_results_wait_for_the_welcome_and_a_push_counts_as_one() -> None:
    async def scenario() -> None:
        server = await FakeEvapi(welcome=False).start()
        link, pushes = make_link(server.port)
        link.send_result({"type": "result", "id": "early"})
        task = asyncio.create_task(link.run())
        assert (await server.next())[1]["type"] == "hello"
        assert await server.nothing_within(0.1)
        server.send(push_msg("p"))  # only a tagged (authenticated) connection gets pushes
        _conn, msg = await server.next()
        assert msg["id"] == "early"
        assert pushes[0]["id"] == "p"
        await stopped(link, task)
        await server.stop()

    run(scenario)


def test_close_flushes_queued_results() -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        link, _ = make_link(server.port)
        task = asyncio.create_task(link.run())
        await server.next()
        await link.wait_authenticated(TIMEOUT)
        for i in range(50):
            link.send_result({"type": "result", "id": str(i)})
        await stopped(link, task)
        ids = [(await server.next())[1]["id"] for _ in range(50)]
        assert ids == [str(i) for i in range(50)]
        await server.stop()

    run(scenario)


def test_garbage_from_kamailio_resets_the_connection() -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        link, _pushes = make_link(server.port)
        task = asyncio.create_task(link.run())
        await server.next()
        await link.wait_authenticated(TIMEOUT)
        server.writers[-1].write(b"this is not a netstring")
        conn, msg = await server.next()
        assert (conn, msg["type"]) == (1, "hello")
        await stopped(link, task)
        await server.stop()

    run(scenario)


def test_queue_is_bounded_and_drops_the_oldest() -> None:
    async def scenario() -> None:
        link, _ = make_link(9, queue_size=3)
        for i in range(5):
            link.send_result({"type": "result", "id": str(i)})
        assert link.queued == 3
        server = await FakeEvapi().start()
        link.port = server.port
        task = asyncio.create_task(link.run())
        msgs = [(await server.next())[1] for _ in range(4)]
        assert [m.get("id") for m in msgs[1:]] == ["2", "3", "4"]
        await stopped(link, task)
        await server.stop()

    run(scenario)


def test_unreadable_secret_is_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        calls = 0

        def secret() -> str:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise FileNotFoundError("/etc/pushd/evapi.secret")
            return SECRET

        link, _ = make_link(server.port, secret=secret)
        task = asyncio.create_task(link.run())
        await link.wait_authenticated(TIMEOUT)
        await stopped(link, task)
        await server.stop()

    with caplog.at_level(logging.WARNING, logger="pushd.link"):
        run(scenario)
    assert len([r for r in caplog.records if "evapi secret" in r.getMessage()]) == 1


def test_missing_welcome_on_an_open_connection_is_assumed_after_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        server = await FakeEvapi(welcome=False).start()
        link, _ = make_link(server.port, welcome_timeout=0.2)
        link.send_result({"type": "result", "id": "r"})
        task = asyncio.create_task(link.run())
        started = time.monotonic()
        assert (await server.next())[1]["type"] == "hello"
        assert (await server.next())[1]["id"] == "r"
        assert time.monotonic() - started >= 0.2
        await stopped(link, task)
        await server.stop()

    with caplog.at_level(logging.WARNING, logger="pushd.link"):
        run(scenario)
    assert "no welcome" in caplog.text
