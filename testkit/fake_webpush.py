"""A Web Push service stand-in on loopback (HTTPS): what a browser vendor's push service
and the browser together would do with a push.

* :meth:`FakeWebPush.subscribe` plays ``PushManager.subscribe({applicationServerKey})``:
  it makes the user agent's P-256 key pair and auth secret (RFC 8291 §2) and a push
  resource URI on this server, bound to the application server key (RFC 8292 §4).
* ``POST /push/<id>`` is RFC 8030 §5: ``TTL`` is required (400 without), ``Urgency``
  must be one of RFC 8030's four values, the ``Authorization: vapid t=<JWT>,k=<key>``
  of RFC 8292 §3 is verified (ES256 signature with ``k``, ``aud`` = this origin, ``exp``
  in the future and at most 24 h away, ``sub`` a mailto: or https: URI; 401 if not),
  ``k`` must be the key the subscription was made with (403 if not). A body must be
  ``Content-Encoding: aes128gcm`` and is decrypted per RFC 8291 with the subscription's
  private key and auth secret (http_ece), as the browser would. Accepted: 201 Created
  with a ``Location`` for the message.
* Unknown or removed subscriptions answer 404; :meth:`script` makes one answer the next
  pushes with given statuses (410, 429 + Retry-After, 500, 413, ...).

Every push lands in :attr:`records`; ``on_record`` is called for each (from the
server's thread).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_PUSH_PATH = re.compile(r"/push/([A-Za-z0-9_-]{16,64})")
_URGENCIES = ("very-low", "low", "normal", "high")
MAX_JWT_LIFETIME = 24 * 3600
"""RFC 8292 §2: exp "MUST NOT be more than 24 hours from the time of the request"."""
MAX_PAYLOAD = 4096
"""RFC 8030 §7.2: push services must accept at least 4096 octets; this one, no more."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """One push subscription: what the browser's ``PushSubscription.toJSON()`` holds,
    plus the user agent's private key (which stays in the browser in real life)."""

    id: str
    endpoint: str
    application_server_key: str
    """The VAPID public key the subscription is restricted to (base64url)."""
    ua_private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes

    @property
    def p256dh(self) -> str:
        raw = self.ua_private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(raw)

    def to_json(self) -> dict[str, Any]:
        """``PushSubscription.toJSON()``: endpoint and the RFC 8291 keys."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth_secret)},
        }


@dataclass
class WebPushRecord:
    """One push request as the stand-in saw it, and what it answered."""

    subscription_id: str | None
    status: int
    reason: str
    """Why it answered ``status`` ("created", "bad VAPID token: ...")."""
    at: float
    ttl: int | None = None
    urgency: str | None = None
    topic: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    """The verified VAPID JWT's claims (empty when it did not verify)."""
    vapid_key: str | None = None
    payload: bytes | None = None
    """The decrypted payload; None for a push without one (b"" never happens)."""


@dataclass
class _Scripted:
    status: int
    retry_after: str | None = None


class FakeWebPush:
    """The stand-in; all public methods are thread-safe."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        host: str = "127.0.0.1",
        on_record: Callable[[WebPushRecord], None] | None = None,
    ) -> None:
        self._cert, self._key = cert, key
        self._host = host
        self.on_record = on_record
        self._lock = threading.Lock()
        self._subscriptions: dict[str, Subscription] = {}
        self._scripts: dict[str, list[_Scripted]] = {}
        self.records: list[WebPushRecord] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ----- lifecycle -----
    def start(self) -> FakeWebPush:
        server = ThreadingHTTPServer((self._host, 0), _Handler)
        server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self._cert), str(self._key))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        server.fake = self  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-webpush",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeWebPush:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"https://{self._host}:{self.port}"

    # ----- subscriptions and scripts -----
    def subscribe(self, application_server_key: str) -> Subscription:
        """A new subscription restricted to ``application_server_key`` (base64url)."""
        sub_id = secrets.token_urlsafe(24)
        sub = Subscription(
            id=sub_id,
            endpoint=f"{self.origin}/push/{sub_id}",
            application_server_key=application_server_key,
            ua_private_key=ec.generate_private_key(ec.SECP256R1()),
            auth_secret=secrets.token_bytes(16),
        )
        with self._lock:
            self._subscriptions[sub_id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The user revoked it: pushes to it get 410 Gone from now on."""
        self.script(sub, [410] * 1000)

    def script(
        self, sub: Subscription, statuses: list[int], retry_after: str | None = None
    ) -> None:
        """Answer the next pushes to ``sub`` with these statuses, in order, then normally."""
        with self._lock:
            self._scripts[sub.id] = [_Scripted(s, retry_after) for s in statuses]

    def pushes_for(self, sub: Subscription) -> list[WebPushRecord]:
        with self._lock:
            return [r for r in self.records if r.subscription_id == sub.id]

    # ----- the push service (server thread) -----
    def _receive(
        self, sub_id: str, headers: dict[str, str], body: bytes
    ) -> tuple[WebPushRecord, dict[str, str]]:
        rec = WebPushRecord(subscription_id=sub_id, status=201, reason="created", at=time.time())
        with self._lock:
            sub = self._subscriptions.get(sub_id)
            script = self._scripts.get(sub_id)
            scripted = script.pop(0) if script else None
        if sub is None:
            return self._done(rec, 404, "no such subscription"), {}
        rec.urgency = headers.get("urgency")
        rec.topic = headers.get("topic")
        ttl = headers.get("ttl", "")
        if not ttl.isascii() or not ttl.isdigit():
            return self._done(rec, 400, f"TTL missing or not a number: {ttl!r}"), {}
        rec.ttl = int(ttl)
        if rec.urgency is not None and rec.urgency not in _URGENCIES:
            return self._done(rec, 400, f"bad Urgency {rec.urgency!r}"), {}
        problem = self._check_vapid(sub, headers.get("authorization", ""), rec)
        if problem is not None:
            return self._done(rec, *problem), {}
        if scripted is not None:
            extra = {"Retry-After": scripted.retry_after} if scripted.retry_after else {}
            return self._done(rec, scripted.status, "scripted"), extra
        if body:
            if len(body) > MAX_PAYLOAD:
                return self._done(rec, 413, f"payload of {len(body)} bytes"), {}
            if headers.get("content-encoding", "").lower() != "aes128gcm":
                return self._done(rec, 400, "payload without Content-Encoding: aes128gcm"), {}
            try:
                rec.payload = http_ece.decrypt(
                    body,
                    private_key=sub.ua_private_key,
                    auth_secret=sub.auth_secret,
                    version="aes128gcm",
                )
            except Exception as exc:  # http_ece raises its own ECEException and others
                return self._done(rec, 400, f"cannot decrypt: {exc}"), {}
        location = f"{self.origin}/message/{secrets.token_urlsafe(12)}"
        return self._done(rec, 201, "created"), {"Location": location}

    def _check_vapid(
        self, sub: Subscription, auth: str, rec: WebPushRecord
    ) -> tuple[int, str] | None:
        scheme, _, rest = auth.partition(" ")
        if scheme.lower() != "vapid":
            return 401, "no vapid Authorization"
        params = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        token, key = params.get("t", ""), params.get("k", "")
        rec.vapid_key = key
        try:
            point = b64url_decode(key)
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            claims = jwt.decode(
                token,
                key=public,
                algorithms=["ES256"],
                audience=self.origin,
                options={"require": ["aud", "exp", "sub"]},
            )
        except (ValueError, jwt.PyJWTError) as exc:
            return 401, f"bad VAPID token: {exc}"
        if claims["exp"] > time.time() + MAX_JWT_LIFETIME + 60:
            return 401, "VAPID exp more than 24 hours ahead"
        sub_claim = str(claims["sub"])
        if not (sub_claim.startswith("mailto:") or sub_claim.startswith("https:")):
            return 401, f"VAPID sub is not a mailto: or https: URI: {sub_claim!r}"
        rec.claims = claims
        if key != sub.application_server_key:
            return 403, "VAPID key is not the subscription's applicationServerKey"
        return None

    def _done(self, rec: WebPushRecord, status: int, reason: str) -> WebPushRecord:
        rec.status, rec.reason = status, reason
        with self._lock:
            self.records.append(rec)
        if self.on_record is not None:
            self.on_record(rec)
        return rec


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(self.path).path
        match = _PUSH_PATH.fullmatch(path)
        fake: FakeWebPush = self.server.fake
        if match is None:
            self._answer(404, {"error": f"not found: {path}"}, {})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        rec, extra = fake._receive(match.group(1), headers, body)
        self._answer(rec.status, {"reason": rec.reason}, extra)

    def _answer(self, status: int, body: dict[str, str], headers: dict[str, str]) -> None:
        data = json.dumps(body).encode() if status >= 300 else b""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if data:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        if data:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the records are the log


def wait_for_push(
    fake: FakeWebPush, sub: Subscription, count: int = 1, timeout: float = 10.0
) -> list[WebPushRecord]:
    """Poll until ``sub`` has seen ``count`` pushes (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = fake.pushes_for(sub)
        if len(seen) >= count:
            return seen
        time.sleep(0.01)
    raise TimeoutError(f"{count} push(es) to {sub.endpoint} not seen in {timeout} s")
