"""pushd's HTTP API over real sockets: the daemon with the real APNs provider and the fake.

Also checks docs/pushd-api.openapi.yaml against the routes the server answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pushd import config as config_mod
from pushd.app import PushDaemon
from pushd.http_api import MAX_BODY, ROUTES
from testkit.certs import TestPki, make_test_pki
from testkit.fake_apns import FakeApnsThread
from tests.integration.fake_evapi import FakeEvapi
from tests.integration.test_pushd_app import write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "api-test-token-0123456789"
APNS_TOKEN = "d4" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(30):
            await coro

    asyncio.run(guarded())


def free_port() -> int:
    # The config wants a real port; the tiny race with another process is acceptable here.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def fake_apns(pki: TestPki) -> Any:
    with FakeApnsThread(pki) as fake:
        yield fake


@asynccontextmanager
async def daemon_with_api(
    tmp_path: Path, pki: TestPki, apns_port: int, *, token: str | None = TOKEN
) -> AsyncIterator[tuple[PushDaemon, FakeEvapi, int]]:
    server = await FakeEvapi().start()
    port = free_port()
    api = f"api: {{listen: '127.0.0.1:{port}'" + (f", token: {token}}}" if token else "}")
    path = write_config(tmp_path, server.port, pki=pki, apns_port=apns_port, extra=api)
    daemon = PushDaemon(config_mod.load(path))
    await daemon.start()
    try:
        yield daemon, server, port
    finally:
        await daemon.stop()
        await server.stop()


async def http(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    raw = await reader.read()  # Connection: close, so EOF ends the answer
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.lower()] = value.strip()
    assert int(parsed["content-length"]) == len(payload)
    return Answer(int(status_line.split(" ")[1]), parsed, payload)


async def exchange(port: int, request: str) -> Answer:
    """One request as raw text (what ``http`` would not send), its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return Answer(status, {}, payload)


def push_body(**fields: Any) -> bytes:
    msg: dict[str, Any] = {
        "kind": "call",
        "provider": "apns",
        "prid": APNS_TOKEN,
        "param": "TEAMID1234.com.example.app.voip",
        "ttl": 10,
        "data": {"call_id": "http-call-1", "caller": "sip:bob@example.com"},
    }
    msg.update(fields)
    return json.dumps({k: v for k, v in msg.items() if v is not None}).encode()


def test_push_is_delivered_and_answered_with_the_verdict(
    tmp_path: Path, pki: TestPki, fake_apns: Any
) -> None:
    async def scenario() -> None:
        async with daemon_with_api(tmp_path, pki, fake_apns.port) as (_, evapi, port):
            assert (await evapi.next())[1]["type"] == "hello"
            answer = await http(port, "POST", "/v1/push", body=push_body(id="h1"), headers=AUTH)
            assert answer.status == 200, answer.body
            assert answer.headers["content-type"] == "application/json"
            result = answer.json()
            assert set(result) == {"id", "verdict", "status", "reason", "attempts", "ms"}
            assert result["id"] == "h1"
            assert (result["verdict"], result["status"], result["attempts"]) == (
                "delivered",
                200,
                1,
            )
            # An API push is answered over HTTP only: Kamailio never hears of it.
            assert await evapi.nothing_within(0.2)
            answer = await http(port, "GET", "/metrics", headers=AUTH)
            assert answer.status == 200
            assert answer.headers["content-type"].startswith("text/plain")
            assert b'pushd_pushes_total{provider="apns",verdict="delivered"} 1' in answer.body

    run(scenario())
    (record,) = fake_apns.pushes_for(APNS_TOKEN)
    assert record.topic == "com.example.app.voip" and record.status == 200
    assert record.payload is not None and record.payload["call_id"] == "http-call-1"


def test_unregistered_token_gives_delete_token(
    tmp_path: Path, pki: TestPki, fake_apns: Any
) -> None:
    fake_apns.script(APNS_TOKEN, 410, "Unregistered")

    async def scenario() -> None:
        async with daemon_with_api(tmp_path, pki, fake_apns.port) as (_, _evapi, port):
            deadline = time.time() + 10
            body = push_body(ttl=None, deadline=deadline)
            answer = await http(port, "POST", "/v1/push", body=body, headers=AUTH)
            assert answer.status == 200, answer.body
            result = answer.json()
            assert result["verdict"] == "delete_token"
            assert (result["status"], result["reason"]) == (410, "Unregistered")
            assert result["id"].startswith("api-")  # generated when the caller gave none

    run(scenario())


def test_auth_errors_and_public_health(tmp_path: Path, pki: TestPki, fake_apns: Any) -> None:
    async def scenario() -> None:
        async with daemon_with_api(tmp_path, pki, fake_apns.port) as (daemon, evapi, port):
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": f"Bearer {TOKEN}x"},
            ):
                for method, path in (("POST", "/v1/push"), ("GET", "/metrics")):
                    answer = await http(port, method, path, body=push_body(), headers=headers)
                    assert answer.status == 401, (headers, path)
                    assert answer.json() == {"error": "unauthorized", "field": "Authorization"}
                    assert answer.headers["www-authenticate"] == "Bearer"
            await daemon.link.wait_authenticated(5)
            answer = await http(port, "GET", "/v1/health")
            assert answer.status == 200
            assert answer.json() == {
                "status": "ok",
                "providers": ["apns"],
                "kamailio_connected": True,
            }
            await evapi.stop()  # Kamailio goes away: health says so, still 200
            for _ in range(100):
                if not (await http(port, "GET", "/v1/health")).json()["kamailio_connected"]:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("health still reports kamailio_connected")
            await evapi.start()  # so the context manager can stop it again

    run(scenario())
    assert fake_apns.pushes == []


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (push_body(prid="not-hex!"), 400, "prid"),
        (push_body(kind="page"), 400, "kind"),
        (push_body(param=None), 400, "param"),
        (push_body(data={"n": 1}), 400, "data.n"),
        (push_body(ttl=None), 400, "deadline"),
        (push_body(ttl=0), 400, "ttl"),
        (push_body(ttl=10, deadline=time.time() + 10), 400, "ttl"),
        (push_body(ttl=None, deadline=1), 400, "deadline"),
        (push_body(ttl=3600), 400, "ttl"),
        (push_body(id=7), 400, "id"),
        (push_body(aor=1), 400, "aor"),
        (push_body(color="red"), 400, "color"),
        (push_body(provider="fcm", prid="tok", param="pushgate-test"), 422, "provider"),
    ],
)
def test_bad_push_names_the_field(
    tmp_path: Path, pki: TestPki, fake_apns: Any, body: bytes, status: int, field: str
) -> None:
    async def scenario() -> None:
        async with daemon_with_api(tmp_path, pki, fake_apns.port) as (_, _evapi, port):
            answer = await http(port, "POST", "/v1/push", body=body, headers=AUTH)
            assert answer.status == status, answer.body
            assert answer.json()["field"] == field
            assert answer.json()["error"]

    run(scenario())
    assert fake_apns.pushes == []


def test_protocol_errors(tmp_path: Path, pki: TestPki, fake_apns: Any) -> None:
    async def scenario() -> None:
        async with daemon_with_api(tmp_path, pki, fake_apns.port) as (_, _evapi, port):
            answer = await http(port, "POST", "/v1/push", body=b"{not json", headers=AUTH)
            assert answer.status == 400
            assert answer.json()["error"] == "invalid JSON" and answer.json()["detail"]
            answer = await http(port, "POST", "/v1/push", body=b"[1, 2]", headers=AUTH)
            assert answer.status == 400
            answer = await http(port, "POST", "/v1/push", body=b'{"ttl": NaN}', headers=AUTH)
            assert answer.json()["error"] == "invalid JSON"
            big = push_body(data={"pad": "x" * MAX_BODY})
            answer = await http(port, "POST", "/v1/push", body=big, headers=AUTH)
            assert answer.status == 413
            assert answer.json()["field"] == "Content-Length"
            answer = await http(port, "GET", "/v2/push", headers=AUTH)
            assert answer.status == 404 and answer.json()["error"] == "not found"
            answer = await http(port, "GET", "/v1/push", headers=AUTH)
            assert answer.status == 405 and answer.headers["allow"] == "POST"
            answer = await http(port, "DELETE", "/v1/health")
            assert answer.status == 405 and answer.headers["allow"] == "GET"
            head = f"POST /v1/push HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
            answer = await exchange(port, f"{head}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            assert answer.status == 411 and answer.json()["field"] == "Content-Length"
            # What is not HTTP, or smuggles (a length and chunks, two lengths), aiohttp's
            # parser refuses itself: a plain-text 400, not a dropped connection.
            chunked = {**AUTH, "Transfer-Encoding": "chunked"}
            answer = await http(port, "POST", "/v1/push", body=b"", headers=chunked)
            assert answer.status == 400 and b"Transfer-Encoding" in answer.body
            twice = {**AUTH, "content-length": "2"}
            answer = await http(port, "POST", "/v1/push", body=b"{}", headers=twice)
            assert answer.status == 400 and b"Content-Length" in answer.body
            answer = await exchange(port, "HELLO\r\n\r\n")
            assert answer.status == 400

    run(scenario())
    assert fake_apns.pushes == []


def test_no_token_no_api(tmp_path: Path, pki: TestPki, fake_apns: Any) -> None:
    async def scenario() -> None:
        async with daemon_with_api(tmp_path, pki, fake_apns.port, token=None) as (daemon, _, _p):
            assert daemon.api is None

    run(scenario())


# -- the OpenAPI document -----------------------------------------------------------------


def test_openapi_documents_exactly_the_served_routes() -> None:
    doc = yaml.safe_load((ROOT / "docs" / "pushd-api.openapi.yaml").read_text())
    assert doc["openapi"].startswith("3.0")
    documented = {
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch", "head", "options"}
    }
    served = {(path, method) for path, methods in ROUTES.items() for method in methods}
    assert documented == served
    # Every documented operation says what its errors look like.
    for path, method in served:
        op = doc["paths"][path][method.lower()]
        assert "200" in op["responses"], (path, method)
        if path != "/v1/health":
            assert "401" in op["responses"], (path, method)
