"""A fake APNs provider API server: HTTP/2 over TLS on loopback, behaving like Apple.

Built on asyncio and the sans-IO ``h2`` library (RFC 9113). What it does:

* ``POST /3/device/<hex token>`` over TLS 1.2+. ALPN ``h2`` is offered, but a client that
  sends no ALPN is spoken to in HTTP/2 with prior knowledge.
* Token auth: an ES256 JWT (``kid`` known, ``iss`` = team, ``iat`` at most an hour old) in
  ``authorization: bearer``. Certificate auth: a client certificate signed by the test CA;
  its ``UID`` is the bundle and it replaces the JWT.
* Checks topic, push type, priority, expiration, collapse id, apns-id, token and payload
  size, answering with Apple's status and ``reason`` (see ``FakeApns._check``).
* A 200 is a HEADERS frame with END_STREAM and *no* DATA frame (as Apple answers: a client
  must not expect a body). Every answer echoes ``apns-id`` (generated if the request had none).
* Advertises ``MAX_CONCURRENT_STREAMS`` 1 until a request carries a valid JWT, then 1000.
* Canned answers per token (:meth:`FakeApns.script`), and sticky ones from a JSON control
  file that is re-read whenever it changes.
* Records every push, accepted or rejected, as a :class:`PushRecord`.

Three ways to run it:

* in a running loop: ``fake = FakeApns(pki); await fake.start(); ...; await fake.stop()``;
* from synchronous tests: ``with FakeApnsThread(pki) as apns: ...`` (own loop, own thread);
* as a process: ``python -m testkit.fake_apns --pki-dir DIR --port 0 --events E.jsonl
  --control C.json`` prints ``READY <port>`` once listening and exits cleanly on SIGTERM.

Fake-only behaviour: a body that is not a JSON object gets 400 ``BadPayload`` (Apple has
no documented reason for it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from testkit.certs import TestPki, make_test_pki

if TYPE_CHECKING:
    from pushd.provider_settings import ApnsSettings

MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
JWT_MAX_AGE = 3600
JWT_MAX_FUTURE = 300
"""Seconds an ``iat`` may lie in the future (clock skew) before the JWT is refused."""
STREAMS_BEFORE_AUTH = 1
STREAMS_AFTER_AUTH = 1000
_H2_STREAM_CAP = 1000
"""What h2 enforces. Apple's limit is advertised, but a client may legally open streams
before it has seen (and acknowledged) our SETTINGS; those are counted, not refused."""

PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "location",
        "pushtotalk",
        "widgets",
        "controls",
    }
)
_HEX_TOKEN = re.compile(r"^(?:[0-9A-Fa-f]{2}){8,100}$")
_TOPIC = re.compile(r"^[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+$")
_UUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
_SINGLE_HEADERS = frozenset(
    {
        "authorization",
        "apns-id",
        "apns-topic",
        "apns-push-type",
        "apns-priority",
        "apns-expiration",
        "apns-collapse-id",
    }
)

AuthMode = Literal["token", "certificate"]


APPLE_ENVIRONMENTS = {
    "api.push.apple.com": "production",
    "api.sandbox.push.apple.com": "sandbox",
    "api.development.push.apple.com": "sandbox",  # Apple's older name for the sandbox
}


@dataclass(frozen=True, kw_only=True)
class PushRecord:
    """One request the fake answered, accepted or not."""

    token: str
    """Device token from the path, as sent."""
    topic: str | None
    """``apns-topic`` as sent (None if absent, even when a certificate implied it)."""
    push_type: str | None
    priority: int | None
    expiration: int | None
    collapse_id: str | None
    apns_id: str
    """The apns-id answered (the request's, or a generated one)."""
    payload: dict[str, Any] | None
    """Parsed JSON body; None when it was empty or not a JSON object."""
    status: int
    reason: str | None
    """Apple's reason for a non-200 answer."""
    jwt: str | None
    """The bearer token as sent (test credentials only)."""
    auth: AuthMode | None
    """How the request authenticated, None if it did not."""
    connection: int
    """1-based number of the TLS connection that carried it."""
    time: float
    """``time.monotonic()`` when the request was complete (before any scripted delay)."""
    authority: str | None = None
    """``:authority`` (or ``host``) as sent: which of Apple's hosts the request was for."""

    @property
    def environment(self) -> str | None:
        """``production`` or ``sandbox`` from :attr:`authority`; None for any other host.

        One fake serves both environments (pushd's ``apns.host`` override), but each
        request still names the Apple host it is meant for."""
        return APPLE_ENVIRONMENTS.get(self.authority or "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class CannedAnswer:
    """An answer to give a token instead of judging the request (once it is valid)."""

    status: int
    reason: str | None = None
    retry_after: float | None = None
    """Seconds for a ``retry-after`` header."""
    delay: float = 0.0
    """Seconds to wait before answering (to provoke client timeouts)."""
    times: int | None = None
    """How many answers are left; None = forever."""
    body: bytes | None = None
    """Send this body instead of APNs' JSON (b"": none at all), as a proxy might."""


@dataclass(frozen=True)
class _Verdict:
    status: int
    reason: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    body: bytes | None = None


_OK = _Verdict(200)


@dataclass
class _Stream:
    headers: dict[str, str]
    duplicates: bool
    body: bytearray = field(default_factory=bytearray)


class _JwtVerifier:
    """Checks provider tokens like APNs: signature, kid, iss, iat age."""

    def __init__(self, keys: Mapping[str, Any], team_id: str) -> None:
        self._keys = dict(keys)
        self._team_id = team_id
        self._verified: dict[str, int] = {}  # token -> iat; the signature check is cached

    def check(self, header: str | None, now: float) -> str | None:
        """None if the token is acceptable now, else Apple's 403 reason."""
        if not header:
            return "MissingProviderToken"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "InvalidProviderToken"
        iat = self._verified.get(token)
        if iat is None:
            result = self._verify(token)
            if isinstance(result, str):
                return result
            iat = self._verified[token] = result
        if iat < now - JWT_MAX_AGE:
            return "ExpiredProviderToken"
        if iat > now + JWT_MAX_FUTURE:
            return "InvalidProviderToken"
        return None

    def _verify(self, token: str) -> int | str:
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid")))
            if key is None or header.get("alg") != "ES256":
                return "InvalidProviderToken"
            claims = jwt.decode(
                token,
                key=key,
                algorithms=["ES256"],
                # iat age is APNs' own rule (ExpiredProviderToken), checked by the caller.
                options={"require": ["iss", "iat"], "verify_iat": False},
            )
        except jwt.InvalidTokenError:
            return "InvalidProviderToken"
        iat = claims.get("iat")
        if claims.get("iss") != self._team_id or not isinstance(iat, int):
            return "InvalidProviderToken"
        return iat


class FakeApns:
    """The server. Public methods other than start/stop are thread-safe."""

    def __init__(
        self,
        pki: TestPki,
        *,
        bundle: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout: float | None = None,
        control_file: Path | None = None,
        on_record: Callable[[PushRecord], None] | None = None,
    ) -> None:
        """``idle_timeout``: close connections idle that long (GOAWAY), like a server would.

        ``control_file``: JSON ``{"<token>": {"status": 410, "reason": "Unregistered"}}``,
        sticky answers re-read when the file changes. ``on_record`` runs in the server loop.
        """
        self.pki = pki
        self.bundle = bundle or pki.bundle
        self.host = host
        self._requested_port = port
        self.idle_timeout = idle_timeout
        self._control = _ControlFile(control_file) if control_file else None
        self._on_record = on_record
        public_key = _load_public_key(pki.apns_public_key)
        self._jwts = _JwtVerifier({pki.key_id: public_key}, pki.team_id)
        self._ssl = _server_context(pki)
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: list[PushRecord] = []
        self._scripts: dict[str, deque[CannedAnswer]] = {}
        self._distinct_jwts: set[str] = set()
        self._connections_opened = 0
        self._stream_limit_violations = 0
        self._streams_reset = 0
        self._pings = 0
        self.port = 0

    # -- lifecycle (call from the server's loop) --

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            self._new_connection, self.host, self._requested_port, ssl=self._ssl
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.goaway()
        await self._server.wait_closed()
        self._server = None
        # Let the TLS shutdowns finish, so the loop can close without stray sockets.
        deadline = time.monotonic() + 1.0
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- observation and scripting (any thread) --

    @property
    def pushes(self) -> list[PushRecord]:
        with self._lock:
            return list(self._records)

    @property
    def connections_opened(self) -> int:
        with self._lock:
            return self._connections_opened

    @property
    def distinct_jwts(self) -> set[str]:
        """Every distinct bearer token seen, valid or not."""
        with self._lock:
            return set(self._distinct_jwts)

    @property
    def stream_limit_violations(self) -> int:
        """Streams a client opened beyond a MAX_CONCURRENT_STREAMS it had acknowledged."""
        with self._lock:
            return self._stream_limit_violations

    @property
    def streams_reset(self) -> int:
        """Streams the client reset (RST_STREAM) before their answer."""
        with self._lock:
            return self._streams_reset

    @property
    def pings_received(self) -> int:
        """HTTP/2 PINGs from clients (answered by h2 itself)."""
        with self._lock:
            return self._pings

    def pushes_for(self, token: str) -> list[PushRecord]:
        return [p for p in self.pushes if p.token.lower() == token.lower()]

    def script(
        self,
        token: str,
        status: int,
        reason: str | None = None,
        times: int | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        body: bytes | None = None,
    ) -> None:
        """Queue a canned answer for ``token``: ``times`` answers (None = forever).

        Answers are used in order; a valid request for a token with no canned answer
        left gets 200. Invalid requests still get their real error.
        """
        if times is not None and times < 1:
            raise ValueError("times must be None (forever) or at least 1")
        answer = CannedAnswer(
            status=status,
            reason=reason,
            retry_after=retry_after,
            delay=delay,
            times=times,
            body=body,
        )
        with self._lock:
            self._scripts.setdefault(token.lower(), deque()).append(answer)

    def clear_scripts(self) -> None:
        with self._lock:
            self._scripts.clear()

    def wait_for_pushes(self, count: int, timeout: float = 5.0) -> list[PushRecord]:
        """Block until ``count`` pushes were recorded; never call from the server's loop."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._records) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"fake APNs saw {len(self._records)} pushes, expected {count}: "
                        f"{[(r.token[:8], r.status, r.reason) for r in self._records]}"
                    )
                self._changed.wait(left)
            return list(self._records)

    # -- server internals (server loop only) --

    def _new_connection(self) -> _ServerConnection:
        with self._lock:
            self._connections_opened += 1
            number = self._connections_opened
        return _ServerConnection(self, number)

    def _judge(self, stream: _Stream, conn: _ServerConnection) -> tuple[_Verdict, PushRecord]:
        """Answer one complete request the way APNs would; record it."""
        h = stream.headers
        token = _device_token(h.get(":path", ""))
        bearer = h.get("authorization")
        jwt_token = (bearer.partition(" ")[2] or None) if bearer else None
        verdict, auth = self._check(stream, conn, token or "", jwt_token)
        if verdict.status == 200:
            verdict = self._canned(token or "") or verdict
        if auth == "token":
            conn.unlock_streams()
        record = PushRecord(
            token=token or "",
            topic=h.get("apns-topic"),
            push_type=h.get("apns-push-type"),
            priority=_int_or_none(h.get("apns-priority")),
            expiration=_int_or_none(h.get("apns-expiration")),
            collapse_id=h.get("apns-collapse-id"),
            apns_id=h.get("apns-id") or str(uuid.uuid4()),
            payload=_json_object(bytes(stream.body)),
            status=verdict.status,
            reason=verdict.reason,
            jwt=jwt_token,
            auth=auth,
            connection=conn.number,
            time=time.monotonic(),
            authority=h.get(":authority") or h.get("host"),
        )
        self._record(record)
        return verdict, record

    def _check(
        self, stream: _Stream, conn: _ServerConnection, token: str, jwt_token: str | None
    ) -> tuple[_Verdict, AuthMode | None]:
        h = stream.headers
        if h.get(":method") != "POST":
            return _Verdict(405, "MethodNotAllowed"), None
        if not h.get(":path", "").startswith("/3/device/"):
            return _Verdict(404, "BadPath"), None
        if not token:
            return _Verdict(400, "MissingDeviceToken"), None
        if stream.duplicates:
            return _Verdict(400, "DuplicateHeaders"), None
        if jwt_token:
            with self._lock:
                self._distinct_jwts.add(jwt_token)
        auth: AuthMode = "certificate" if conn.cert_topic else "token"
        if auth == "token":
            problem = self._jwts.check(h.get("authorization"), time.time())
            if problem:
                return _Verdict(403, problem), None
        return self._check_headers(h, bytes(stream.body), token, conn.cert_topic), auth

    def _check_headers(
        self, h: Mapping[str, str], body: bytes, token: str, cert_topic: str | None
    ) -> _Verdict:
        problem = (
            _check_apns_id(h.get("apns-id"))
            or self._check_topic(h, cert_topic)
            or _check_push_type(h)
            or _check_priority(h)
            or _check_options(h)
            or _check_token(token)
            or _check_body(body, h.get("apns-push-type"))
        )
        return problem or _OK

    def _check_topic(self, h: Mapping[str, str], cert_topic: str | None) -> _Verdict | None:
        topic = h.get("apns-topic") or cert_topic
        if topic is None:
            return _Verdict(400, "MissingTopic")
        if not _TOPIC.match(topic):
            return _Verdict(400, "BadTopic")
        bundle = cert_topic or self.bundle
        if topic not in (bundle, f"{bundle}.voip", f"{bundle}.complication"):
            return _Verdict(400, "TopicDisallowed")
        return None

    def _canned(self, token: str) -> _Verdict | None:
        key = token.lower()
        with self._lock:
            queue = self._scripts.get(key)
            if queue:
                answer = queue[0]
                if answer.times is not None:
                    answer.times -= 1
                    if answer.times <= 0:
                        queue.popleft()
                return _Verdict(
                    answer.status, answer.reason, answer.retry_after, answer.delay, answer.body
                )
        sticky = self._control.answer(key) if self._control else None
        return sticky

    def _record(self, record: PushRecord) -> None:
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()
        if self._on_record is not None:
            self._on_record(record)

    def _count_violation(self) -> None:
        with self._lock:
            self._stream_limit_violations += 1

    def _count_reset(self) -> None:
        with self._lock:
            self._streams_reset += 1

    def _count_ping(self) -> None:
        with self._lock:
            self._pings += 1

    def goaway_all(self) -> None:
        """Send GOAWAY on every open connection and close it (a server going away)."""
        for connection in list(self._connections):
            connection.goaway()

    def _forget(self, connection: _ServerConnection) -> None:
        self._connections.discard(connection)


class _ServerConnection(asyncio.Protocol):
    """One client connection: an h2 server state machine plus the transport."""

    def __init__(self, server: FakeApns, number: int) -> None:
        self.server = server
        self.number = number
        self.cert_topic: str | None = None
        self._transport: asyncio.Transport | None = None
        self._h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self._streams: dict[int, _Stream] = {}
        self._pending_limits: deque[int] = deque()
        self._limit: int | None = None  # the peer may ignore our limit until it acknowledged
        self._unlocked = False
        self._idle: asyncio.TimerHandle | None = None
        self._delayed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.server._connections.add(self)
        self.cert_topic = _peer_cert_topic(transport)
        # With a certificate there is no JWT to wait for: open up at once.
        first_limit = STREAMS_AFTER_AUTH if self.cert_topic else STREAMS_BEFORE_AUTH
        self._unlocked = self.cert_topic is not None
        # Advertise ``first_limit`` in the initial SETTINGS, then let h2 enforce a generous
        # cap: see _H2_STREAM_CAP.
        self._h2.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: first_limit}
        )
        self._h2.initiate_connection()
        self._h2.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: _H2_STREAM_CAP}
        )
        self._pending_limits.append(first_limit)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except ProtocolError:
            self._flush()
            self._close()
            return
        for event in events:
            self._dispatch(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.server._forget(self)

    def unlock_streams(self) -> None:
        """A valid JWT arrived: allow the real concurrency (once per connection)."""
        if self._unlocked:
            return
        self._unlocked = True
        self._h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: STREAMS_AFTER_AUTH})
        self._pending_limits.append(STREAMS_AFTER_AUTH)

    def goaway(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        with contextlib.suppress(ProtocolError):
            self._h2.close_connection(error_code=ErrorCodes.NO_ERROR)
        self._flush()
        self._close()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, DataReceived):
            self._on_data(event)
        elif isinstance(event, StreamEnded):
            self._on_stream_ended(event.stream_id)
        elif isinstance(event, StreamReset):
            self._streams.pop(event.stream_id, None)
            self.server._count_reset()
        elif isinstance(event, PingReceived):
            self.server._count_ping()
        elif isinstance(event, SettingsAcknowledged):
            if self._pending_limits:
                self._limit = self._pending_limits.popleft()
        elif isinstance(event, ConnectionTerminated):
            self._close()

    def _on_request(self, event: RequestReceived) -> None:
        headers, duplicates = _decode_headers(event.headers or [])
        self._streams[event.stream_id] = _Stream(headers=headers, duplicates=duplicates)
        if self._limit is not None and self._h2.open_inbound_streams > self._limit:
            self.server._count_violation()

    def _on_data(self, event: DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None and event.data:
            stream.body += event.data
        # Hand the window back at once, or 200 concurrent 5 KB pushes would stall.
        if event.flow_controlled_length:
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _on_stream_ended(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        verdict, record = self.server._judge(stream, self)
        if verdict.delay > 0:
            self._delayed += 1
            loop = asyncio.get_running_loop()
            loop.call_later(verdict.delay, self._respond_later, stream_id, verdict, record)
        else:
            self._respond(stream_id, verdict, record)

    def _respond_later(self, stream_id: int, verdict: _Verdict, record: PushRecord) -> None:
        self._delayed -= 1
        if self._transport is None or self._transport.is_closing():
            return
        with contextlib.suppress(ProtocolError):  # the client may have reset the stream
            self._respond(stream_id, verdict, record)
        self._flush()

    def _respond(self, stream_id: int, verdict: _Verdict, record: PushRecord) -> None:
        headers = [(":status", str(verdict.status)), ("apns-id", record.apns_id)]
        if verdict.body is not None:  # not APNs' own answer: a proxy's, say
            self._h2.send_headers(stream_id, headers, end_stream=not verdict.body)
            if verdict.body:
                self._h2.send_data(stream_id, verdict.body, end_stream=True)
            return
        if verdict.status == 200:
            # No DATA frame, as Apple answers a 200.
            self._h2.send_headers(stream_id, headers, end_stream=True)
            return
        body: dict[str, Any] = {"reason": verdict.reason or "InternalServerError"}
        if verdict.status == 410:
            body["timestamp"] = int(time.time() * 1000)
        headers.append(("content-type", "application/json"))
        if verdict.retry_after is not None:
            headers.append(("retry-after", str(int(verdict.retry_after))))
        self._h2.send_headers(stream_id, headers)
        self._h2.send_data(stream_id, json.dumps(body).encode(), end_stream=True)

    def _flush(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        data = self._h2.data_to_send()
        if data:
            self._transport.write(data)
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self.server.idle_timeout is None:
            return
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.server.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        if self._streams or self._delayed:
            self._arm_idle_timer()
            return
        self.goaway()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _ControlFile:
    """Sticky per-token answers from a JSON file, re-read when its mtime/size change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._answers: dict[str, _Verdict] = {}

    def answer(self, token: str) -> _Verdict | None:
        self._reload()
        return self._answers.get(token)

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._answers = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            raw = json.loads(self.path.read_text())
            answers = {
                str(tok).lower(): _Verdict(
                    int(spec["status"]),
                    spec.get("reason"),
                    spec.get("retry_after"),
                    float(spec.get("delay", 0.0)),
                )
                for tok, spec in raw.items()
            }
        except (ValueError, TypeError, KeyError, AttributeError):
            return  # half-written: keep the old answers, try again on the next push
        self._stamp, self._answers = stamp, answers


class FakeApnsThread:
    """Runs a :class:`FakeApns` on its own event loop in a daemon thread.

    ``with FakeApnsThread(pki) as apns: ... apns.port ... apns.wait_for_pushes(1)``
    """

    def __init__(self, pki: TestPki, **kwargs: Any) -> None:
        self.fake = FakeApns(pki, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-apns", daemon=True)

    def __enter__(self) -> FakeApnsThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self._loop).result(timeout=10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def port(self) -> int:
        return self.fake.port

    @property
    def pushes(self) -> list[PushRecord]:
        return self.fake.pushes

    @property
    def connections_opened(self) -> int:
        return self.fake.connections_opened

    @property
    def distinct_jwts(self) -> set[str]:
        return self.fake.distinct_jwts

    @property
    def stream_limit_violations(self) -> int:
        return self.fake.stream_limit_violations

    @property
    def streams_reset(self) -> int:
        return self.fake.streams_reset

    @property
    def pings_received(self) -> int:
        return self.fake.pings_received

    def pushes_for(self, token: str) -> list[PushRecord]:
        return self.fake.pushes_for(token)

    def goaway_all(self) -> None:
        self._loop.call_soon_threadsafe(self.fake.goaway_all)

    def wait_for_pushes(self, count: int, timeout: float = 5.0) -> list[PushRecord]:
        return self.fake.wait_for_pushes(count, timeout)

    def script(
        self,
        token: str,
        status: int,
        reason: str | None = None,
        times: int | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        body: bytes | None = None,
    ) -> None:
        self.fake.script(token, status, reason, times, retry_after, delay, body)


def client_settings(pki: TestPki, port: int, **overrides: Any) -> ApnsSettings:
    """pushd's ApnsSettings for token auth against this fake on ``port``."""
    from pushd.model import Environment
    from pushd.provider_settings import ApnsSettings

    base = ApnsSettings(
        auth="token",
        key_file=pki.apns_key,
        key_id=pki.key_id,
        team_id=pki.team_id,
        cert_file=None,
        default_environment=Environment.PRODUCTION,
        host="localhost",
        port=port,
        ca_file=pki.ca_cert,
        timeout=5.0,
    )
    return dataclasses.replace(base, **overrides)


# -- helpers --


def _server_context(pki: TestPki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.set_alpn_protocols(["h2"])
    # Optional: token-auth clients send no certificate; one that does must chain to our CA.
    ctx.load_verify_locations(cafile=pki.ca_cert)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _load_public_key(path: Path) -> Any:
    return load_pem_public_key(path.read_bytes())


def _peer_cert_topic(transport: asyncio.BaseTransport) -> str | None:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    uids = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    value = uids[0].value if uids else None
    return value if isinstance(value, str) else None


def _decode_headers(raw: Iterable[tuple[bytes | str, bytes | str]]) -> tuple[dict[str, str], bool]:
    headers: dict[str, str] = {}
    duplicates = False
    for name_raw, value_raw in raw:
        name = _text(name_raw).lower()
        if name in headers and name in _SINGLE_HEADERS:
            duplicates = True
        headers[name] = _text(value_raw)
    return headers, duplicates


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _device_token(path: str) -> str | None:
    prefix = "/3/device/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _check_apns_id(apns_id: str | None) -> _Verdict | None:
    if apns_id is not None and not _UUID.match(apns_id):
        return _Verdict(400, "BadMessageId")
    return None


def _check_push_type(h: Mapping[str, str]) -> _Verdict | None:
    push_type = h.get("apns-push-type")
    topic = h.get("apns-topic") or ""
    if push_type is None:
        return None  # optional for iOS; Apple infers alert/background
    if push_type not in PUSH_TYPES:
        return _Verdict(400, "InvalidPushType")
    if push_type == "voip" and topic and not topic.endswith(".voip"):
        # A PushKit token does not belong to the bare bundle topic.
        return _Verdict(400, "DeviceTokenNotForTopic")
    if push_type != "voip" and topic.endswith(".voip"):
        return _Verdict(400, "InvalidPushType")
    return None


def _check_priority(h: Mapping[str, str]) -> _Verdict | None:
    priority = h.get("apns-priority")
    if priority is None:
        return None
    if priority not in ("10", "5", "1"):
        return _Verdict(400, "BadPriority")
    # Apple: background pushes must use priority 5; 10 is an error.
    if h.get("apns-push-type") == "background" and priority == "10":
        return _Verdict(400, "BadPriority")
    return None


def _check_options(h: Mapping[str, str]) -> _Verdict | None:
    expiration = h.get("apns-expiration")
    if expiration is not None and not expiration.isdigit():
        return _Verdict(400, "BadExpirationDate")
    collapse_id = h.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > 64:
        return _Verdict(400, "BadCollapseId")
    return None


def _check_token(token: str) -> _Verdict | None:
    return None if _HEX_TOKEN.match(token) else _Verdict(400, "BadDeviceToken")


def _check_body(body: bytes, push_type: str | None) -> _Verdict | None:
    if not body:
        return _Verdict(400, "PayloadEmpty")
    limit = MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD
    if len(body) > limit:
        return _Verdict(413, "PayloadTooLarge")
    if _json_object(body) is None:
        return _Verdict(400, "BadPayload")
    return None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


# -- command line --


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m testkit.fake_apns", description=__doc__)
    p.add_argument("--pki-dir", type=Path, required=True, help="test PKI (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    p.add_argument("--port", type=int, default=0, help="0 = any free port")
    p.add_argument("--events", type=Path, help="append one JSON line per push")
    p.add_argument("--control", type=Path, help="JSON file of sticky answers per token")
    p.add_argument("--bundle", default="com.example.app")
    p.add_argument("--team", default="TEAMID1234")
    p.add_argument("--key-id", default="KEYID12345")
    p.add_argument("--idle-timeout", type=float, default=None)
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    pki = make_test_pki(args.pki_dir, key_id=args.key_id, team_id=args.team, bundle=args.bundle)
    events = args.events.open("a", encoding="utf-8") if args.events else None

    def write_event(record: PushRecord) -> None:
        if events is not None:
            events.write(json.dumps(record.to_json()) + "\n")
            events.flush()

    fake = FakeApns(
        pki,
        bundle=args.bundle,
        host=args.host,
        port=args.port,
        idle_timeout=args.idle_timeout,
        control_file=args.control,
        on_record=write_event,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await fake.start()
    print(f"READY {fake.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()
        if events is not None:
            events.close()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_serve(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "MAX_PAYLOAD",
    "MAX_VOIP_PAYLOAD",
    "CannedAnswer",
    "FakeApns",
    "FakeApnsThread",
    "PushRecord",
]
