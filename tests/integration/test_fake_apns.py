"""The fake APNs itself, driven by a raw h2 client so every header is under our control."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RemoteSettingsChanged, ResponseReceived, StreamEnded
from h2.settings import SettingCodes

from testkit.certs import TestPki, make_test_pki
from testkit.fake_apns import FakeApnsThread

pytestmark = pytest.mark.integration

BUNDLE = "com.example.app"
TOKEN = "a1" * 32


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    data_frames: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawClient:
    """A minimal blocking HTTP/2 client over TLS."""

    pki: TestPki
    port: int
    alpn: bool = True
    client_cert: bool = False
    max_streams: list[int] = field(default_factory=list)
    """Every MAX_CONCURRENT_STREAMS the server advertised, in order."""

    def __post_init__(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if self.alpn:
            ctx.set_alpn_protocols(["h2"])
        if self.client_cert:
            ctx.load_cert_chain(self.pki.client_cert)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())

    def post(
        self,
        headers: dict[str, str] | list[tuple[str, str]],
        body: bytes = b'{"aps": {}}',
        *,
        path: str = f"/3/device/{TOKEN}",
        method: str = "POST",
    ) -> Response:
        sid = self.h2.get_next_available_stream_id()
        items = list(headers.items()) if isinstance(headers, dict) else headers
        request = [(":method", method), (":scheme", "https"), (":path", path)]
        self.h2.send_headers(
            sid, [*request, (":authority", "localhost"), *items], end_stream=not body
        )
        if body:
            self.h2.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        return self._read(sid)

    def pump(self) -> None:
        """Read once (e.g. to see a SETTINGS frame)."""
        self._events(self.sock.recv(65536))

    def close(self) -> None:
        self.sock.close()

    def _read(self, sid: int) -> Response:
        status, headers, body, frames = 0, {}, b"", 0
        while True:
            data = self.sock.recv(65536)
            assert data, "server closed the connection"
            for event in self._events(data):
                if isinstance(event, ResponseReceived) and event.stream_id == sid:
                    headers = {str(k): str(v) for k, v in event.headers or []}
                    status = int(headers[":status"])
                elif isinstance(event, DataReceived) and event.stream_id == sid:
                    body += event.data or b""
                    frames += 1
                elif isinstance(event, StreamEnded) and event.stream_id == sid:
                    return Response(status, headers, body, frames)

    def _events(self, data: bytes) -> list[Any]:
        events = self.h2.receive_data(data)
        for event in events:
            if isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
            if isinstance(event, RemoteSettingsChanged):
                changed = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                if changed is not None:
                    self.max_streams.append(changed.new_value)
        self.sock.sendall(self.h2.data_to_send())
        return events


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"), bundle=BUNDLE)


@pytest.fixture
def apns(pki: TestPki) -> Iterator[FakeApnsThread]:
    with FakeApnsThread(pki) as fake:
        yield fake


@pytest.fixture
def client(pki: TestPki, apns: FakeApnsThread) -> Iterator[RawClient]:
    c = RawClient(pki, apns.port)
    yield c
    c.close()


def bearer(
    pki: TestPki, *, iat: float | None = None, team: str | None = None, key: Any = None
) -> str:
    token = jwt.encode(
        {"iss": team or pki.team_id, "iat": int(time.time() if iat is None else iat)},
        key or pki.apns_key_pem(),
        algorithm="ES256",
        headers={"kid": pki.key_id},
    )
    return f"bearer {token}"


def voip_headers(pki: TestPki, **extra: str) -> dict[str, str]:
    headers = {
        "authorization": bearer(pki),
        "apns-topic": f"{BUNDLE}.voip",
        "apns-push-type": "voip",
        "apns-priority": "10",
        "apns-expiration": str(int(time.time()) + 30),
    }
    headers.update(extra)
    return {k: v for k, v in headers.items() if v != "<absent>"}


@pytest.mark.parametrize("alpn", [True, False])
def test_success_is_headers_only_and_echoes_apns_id(
    pki: TestPki, apns: FakeApnsThread, alpn: bool
) -> None:
    c = RawClient(pki, apns.port, alpn=alpn)
    apns_id = str(uuid.uuid4())

    r = c.post(voip_headers(pki, **{"apns-id": apns_id}))

    assert c.sock.selected_alpn_protocol() == ("h2" if alpn else None)
    assert (r.status, r.data_frames, r.body) == (200, 0, b"")
    assert r.headers["apns-id"] == apns_id
    [seen] = apns.pushes
    assert (seen.status, seen.apns_id, seen.auth, seen.topic) == (
        200,
        apns_id,
        "token",
        f"{BUNDLE}.voip",
    )
    c.close()


def test_apns_id_is_generated_when_absent(pki: TestPki, client: RawClient) -> None:
    r = client.post(voip_headers(pki))

    uuid.UUID(r.headers["apns-id"])


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"authorization": "<absent>"}, 403, "MissingProviderToken"),
        ({"authorization": "bearer not.a.jwt"}, 403, "InvalidProviderToken"),
        ({"authorization": "basic abc"}, 403, "InvalidProviderToken"),
        ({"apns-topic": "<absent>"}, 400, "MissingTopic"),
        ({"apns-topic": "not a topic"}, 400, "BadTopic"),
        ({"apns-topic": "com.other.app.voip"}, 400, "TopicDisallowed"),
        ({"apns-topic": BUNDLE}, 400, "DeviceTokenNotForTopic"),
        ({"apns-push-type": "alert"}, 400, "InvalidPushType"),
        ({"apns-push-type": "bogus"}, 400, "InvalidPushType"),
        ({"apns-priority": "7"}, 400, "BadPriority"),
        ({"apns-expiration": "soon"}, 400, "BadExpirationDate"),
        ({"apns-collapse-id": "x" * 65}, 400, "BadCollapseId"),
        ({"apns-id": "not-a-uuid"}, 400, "BadMessageId"),
    ],
)
def test_header_checks(
    pki: TestPki, client: RawClient, change: dict[str, str], status: int, reason: str
) -> None:
    r = client.post(voip_headers(pki, **change))

    assert (r.status, r.json()) == (status, {"reason": reason})
    assert "apns-id" in r.headers


def test_background_push_must_not_use_priority_10(pki: TestPki, client: RawClient) -> None:
    headers = voip_headers(pki, **{"apns-topic": BUNDLE, "apns-push-type": "background"})

    assert client.post({**headers, "apns-priority": "5"}).status == 200
    assert client.post(headers).json() == {"reason": "BadPriority"}


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        ("old", "ExpiredProviderToken"),
        ("team", "InvalidProviderToken"),
        ("key", "InvalidProviderToken"),
    ],
)
def test_jwt_checks(pki: TestPki, client: RawClient, auth: str, reason: str) -> None:
    header = {
        "old": lambda: bearer(pki, iat=time.time() - 3700),
        "team": lambda: bearer(pki, team="OTHERTEAM1"),
        "key": lambda: bearer(pki, key=ec.generate_private_key(ec.SECP256R1())),
    }[auth]()

    r = client.post(voip_headers(pki, authorization=header))

    assert (r.status, r.json()) == (403, {"reason": reason})


def test_path_token_and_method_checks(pki: TestPki, client: RawClient) -> None:
    headers = voip_headers(pki)

    assert client.post(headers, path="/3/device/" + "zz" * 32).json() == {
        "reason": "BadDeviceToken"
    }
    assert client.post(headers, path="/3/device/").json() == {"reason": "MissingDeviceToken"}
    assert client.post(headers, path="/2/device/" + TOKEN).status == 404
    assert client.post(headers, method="PUT").status == 405
    duplicated = [*headers.items(), ("apns-topic", f"{BUNDLE}.voip")]
    assert client.post(duplicated).json() == {"reason": "DuplicateHeaders"}


def test_payload_checks(pki: TestPki, client: RawClient) -> None:
    voip = voip_headers(pki)
    alert = voip_headers(pki, **{"apns-topic": BUNDLE, "apns-push-type": "alert"})

    def body(size: int) -> bytes:
        prefix = b'{"aps": {}, "x": "'
        return prefix + b"a" * (size - len(prefix) - 2) + b'"}'

    assert client.post(voip, body(5120)).status == 200
    assert client.post(voip, body(5121)).json() == {"reason": "PayloadTooLarge"}
    assert client.post(alert, body(4096)).status == 200
    assert client.post(alert, body(4097)).status == 413
    assert client.post(voip, b"").json() == {"reason": "PayloadEmpty"}
    assert client.post(voip, b"[1]").status == 400


def test_scripted_answers_in_order_then_success(
    pki: TestPki, apns: FakeApnsThread, client: RawClient
) -> None:
    apns.script(TOKEN, 503, "ServiceUnavailable", times=2, retry_after=3)
    apns.script(TOKEN, 410, "Unregistered", times=1)

    answers = [client.post(voip_headers(pki)) for _ in range(4)]

    assert [a.status for a in answers] == [503, 503, 410, 200]
    assert answers[0].headers["retry-after"] == "3"
    gone = answers[2].json()
    assert gone["reason"] == "Unregistered"
    assert abs(gone["timestamp"] - time.time() * 1000) < 60_000
    assert [p.status for p in apns.pushes] == [503, 503, 410, 200]


def test_invalid_requests_get_their_real_error_not_the_script(
    pki: TestPki, apns: FakeApnsThread, client: RawClient
) -> None:
    apns.script(TOKEN, 410, "Unregistered")

    assert client.post(voip_headers(pki, authorization="<absent>")).status == 403
    assert client.post(voip_headers(pki)).status == 410


def test_one_stream_until_a_valid_jwt(pki: TestPki, client: RawClient) -> None:
    client.pump()
    assert client.max_streams == [1]

    client.post(voip_headers(pki, authorization="bearer bad"))
    assert client.max_streams == [1]

    client.post(voip_headers(pki))
    client.post(voip_headers(pki))
    assert client.max_streams == [1, 1000]


def test_certificate_auth_implies_the_topic_and_all_streams(
    pki: TestPki, apns: FakeApnsThread
) -> None:
    c = RawClient(pki, apns.port, client_cert=True)
    c.pump()

    r = c.post(
        voip_headers(
            pki, authorization="<absent>", **{"apns-topic": "<absent>", "apns-push-type": "alert"}
        )
    )

    assert r.status == 200
    assert c.max_streams == [1000]
    [seen] = apns.pushes
    assert (seen.auth, seen.jwt, seen.topic) == ("certificate", None, None)
    c.close()


def test_wait_for_pushes(pki: TestPki, apns: FakeApnsThread, client: RawClient) -> None:
    client.post(voip_headers(pki))

    assert len(apns.wait_for_pushes(1, timeout=1)) == 1
    with pytest.raises(TimeoutError, match="saw 1 pushes, expected 2"):
        apns.wait_for_pushes(2, timeout=0.1)


def test_idle_connections_are_closed(pki: TestPki) -> None:
    with FakeApnsThread(pki, idle_timeout=0.1) as apns:
        c = RawClient(pki, apns.port)
        c.post(voip_headers(pki))
        c.sock.settimeout(2)
        received = b""
        while chunk := c.sock.recv(65536):
            received += chunk
        assert c.h2.receive_data(received)  # the GOAWAY
        c.close()


def test_command_line(pki: TestPki, tmp_path: Path) -> None:
    events, control = tmp_path / "events.jsonl", tmp_path / "control.json"
    cmd = [
        sys.executable,
        "-m",
        "testkit.fake_apns",
        "--pki-dir",
        str(pki.directory),
        "--port",
        "0",
        "--events",
        str(events),
        "--control",
        str(control),
        "--bundle",
        BUNDLE,
        "--team",
        pki.team_id,
        "--key-id",
        pki.key_id,
    ]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY ")
        c = RawClient(pki, int(line.split()[1]))

        assert c.post(voip_headers(pki)).status == 200
        first = json.loads(events.read_text().splitlines()[0])
        assert (first["token"], first["status"], first["push_type"]) == (TOKEN, 200, "voip")

        control.write_text(json.dumps({TOKEN: {"status": 410, "reason": "Unregistered"}}))
        assert [c.post(voip_headers(pki)).status for _ in range(2)] == [410, 410]  # sticky
        control.write_text(json.dumps({}) + " ")  # a new size, in case the mtime did not move
        assert c.post(voip_headers(pki)).status == 200
        assert len(events.read_text().splitlines()) == 4
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
