"""APNs provider: one push attempt per call, over aioapns, with one shared JWT.

aioapns does the HTTP/2 work; this module decides what to send and fixes what aioapns
gets wrong for a long-running daemon (PROTOCOLS.md section 5):

* **One provider token.** aioapns mints a JWT per connection, and connections close after
  10 s idle, so sporadic pushes would mint a JWT almost every time and earn
  ``429 TooManyProviderTokenUpdates``. :class:`ProviderToken` is shared by every
  connection of both environments; it is re-minted every 40 minutes (Apple: between 20
  and 60) and at once when APNs answers ``ExpiredProviderToken``.
* **Host and port** come from a subclass of aioapns' protocol class (``APNS_SERVER`` /
  ``APNS_PORT``), so the fake APNs and Apple's sandbox host need no global patching.
* **One attempt.** ``max_connection_attempts=1`` and no loop here: the dispatcher owns
  retries and backoff. Every failure becomes a :class:`PushResult`, never an exception.
* **Retry-After** is read from the response headers, which aioapns drops.
* Requests abandoned by a timeout are forgotten, so a late answer does not blow up the
  connection (aioapns would ``set_result`` on a cancelled future).
* **Stream slots.** aioapns 4.0 loses the slots of a ``MAX_CONCURRENT_STREAMS`` raise that
  arrives while a request is in flight (APNs: 1 until a valid JWT, then 1000), leaving
  each connection 1-2 usable streams for good; :class:`_StreamSlots` counts them right.
* **Cheaper HPACK.** No Huffman coding and no per-header validation of what we send, and
  the JWT is indexed in the connection's HPACK table (see :func:`_h2_connection`).

Logging: device tokens only through :func:`pushd.logs.short_token`, never JWTs or key material.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn, cast

import jwt
from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
    ChannelPool,
)
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from aioapns.exceptions import MaxAttemptsExceeded
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import H2Error, NoAvailableStreamIDError

from pushd.apns_errors import classify_apns
from pushd.logs import short_token
from pushd.model import (
    Environment,
    ProviderName,
    PushKind,
    PushRequest,
    PushResult,
    Verdict,
)
from pushd.retry import parse_retry_after

log = logging.getLogger("pushd.apns")

APPLE_HOSTS = {
    Environment.PRODUCTION: "api.push.apple.com",
    Environment.SANDBOX: "api.sandbox.push.apple.com",
}
JWT_REFRESH_AFTER = 40 * 60
"""Seconds a provider token is reused. Apple: refresh no more than once per 20 minutes and
no less than once per 60; 40 keeps clear of both with some clock skew."""
JWT_FORCED_MIN_INTERVAL = 60.0
"""At most one early re-mint (after ExpiredProviderToken) per this many seconds: with a
wrong clock every token is "expired", and minting per push would add
TooManyProviderTokenUpdates to the trouble."""
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
CLOSE_GRACE = 1.0
"""Seconds close() waits for connections to finish their TLS shutdown."""


@dataclass(frozen=True)
class ApnsSettings:
    """How to reach APNs. Built by the config loader; validated here."""

    auth: str
    """``token`` (.p8 key, JWT) or ``certificate`` (client certificate)."""
    key_file: Path | None
    """Token auth: Apple's ``AuthKey_<KEYID>.p8``."""
    key_id: str | None
    team_id: str | None
    cert_file: Path | None
    """Certificate auth: one PEM holding the certificate and its unencrypted key."""
    default_environment: Environment
    """For bindings that do not say (plain ``pn-provider=apns``); ``apns.dev`` always means
    sandbox. The dispatcher applies it when it builds a PushRequest; the provider sends to
    ``request.environment`` as given."""
    host: str | None
    """Send both environments to this host instead of Apple's (the fake APNs in tests)."""
    port: int = 443
    ca_file: Path | None = None
    """CA bundle to verify the server with; None = the system store."""
    max_connections: int = 10
    """HTTP/2 connections per environment."""
    timeout: float = 10.0
    """Seconds to wait for an answer (capped by the push deadline)."""

    def __post_init__(self) -> None:
        if self.auth == "token":
            missing = [
                name
                for name, value in (
                    ("key_file", self.key_file),
                    ("key_id", self.key_id),
                    ("team_id", self.team_id),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"apns token auth needs {', '.join(missing)}")
        elif self.auth == "certificate":
            if self.cert_file is None:
                raise ValueError("apns certificate auth needs cert_file")
        else:
            raise ValueError(f"apns auth must be 'token' or 'certificate', not {self.auth!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"apns port out of range: {self.port}")
        if self.max_connections < 1:
            raise ValueError("apns max_connections must be at least 1")
        if self.timeout <= 0:
            raise ValueError("apns timeout must be positive")


# -- what to send (pure) --


class ApnsPushType(enum.StrEnum):
    VOIP = "voip"
    ALERT = "alert"
    BACKGROUND = "background"


PRIORITY_IMMEDIATE = 10
PRIORITY_POWER_SAVING = 5

_ALERT_FIELDS = ("title", "subtitle", "body")
_DEFAULT_BODY = {
    PushKind.MESSAGE: "New message",
    PushKind.MISSED: "Missed call",
    PushKind.CANCEL: "Call ended",
}


@dataclass(frozen=True, kw_only=True)
class ApnsMessage:
    """Everything that goes into one APNs request besides the token."""

    topic: str
    push_type: ApnsPushType
    priority: int
    time_to_live: int
    """Seconds from now; aioapns turns it into ``apns-expiration`` = now + ttl."""
    payload: dict[str, Any]
    collapse_id: str | None

    def encoded_size(self) -> int:
        # Same encoding as aioapns uses on the wire.
        return len(json.dumps(self.payload, ensure_ascii=False).encode())

    def size_limit(self) -> int:
        return MAX_VOIP_PAYLOAD if self.push_type is ApnsPushType.VOIP else MAX_PAYLOAD


def build_message(request: PushRequest, now: float) -> ApnsMessage:
    """Map a push to an APNs request.

    * CALL: VoIP (PushKit), priority 10, topic ``<bundle>.voip``, flat payload.
    * MESSAGE / MISSED / CANCEL: alert, priority 10 (the user should see it now),
      topic ``<bundle>``; ``title``/``subtitle``/``body``/``sound`` in ``data`` fill
      ``aps``, other keys ride along at the top level.
    * REFRESH: background (``content-available``), priority 5: Apple rejects 10 for
      background pushes, and a re-REGISTER can wait for the OS's next opportunity.

    The topic's ``.voip`` suffix is made to fit the push type, since the push type is
    decided here and APNs rejects any mismatch.
    """
    bare_topic = request.topic.removesuffix(".voip")
    common: dict[str, Any] = {
        "time_to_live": time_to_live(request.deadline, now),
        "collapse_id": request.collapse_id,
    }
    if request.kind is PushKind.CALL:
        return ApnsMessage(
            topic=f"{bare_topic}.voip",
            push_type=ApnsPushType.VOIP,
            priority=PRIORITY_IMMEDIATE,
            payload={"aps": {}, **_custom(request.data, ())},
            **common,
        )
    if request.kind is PushKind.REFRESH:
        return ApnsMessage(
            topic=bare_topic,
            push_type=ApnsPushType.BACKGROUND,
            priority=PRIORITY_POWER_SAVING,
            payload={"aps": {"content-available": 1}, **_custom(request.data, ())},
            **common,
        )
    return ApnsMessage(
        topic=bare_topic,
        push_type=ApnsPushType.ALERT,
        priority=PRIORITY_IMMEDIATE,
        payload=_alert_payload(request.kind, request.data),
        **common,
    )


def time_to_live(deadline: float, now: float) -> int:
    """Relative TTL so that aioapns' ``int(now) + ttl`` lands on ``int(deadline)``.

    At least 1: a TTL of 0 would become "deliver now or never" (apns-expiration = now),
    which drops a call push whenever the phone is briefly out of coverage.
    """
    return max(1, int(deadline) - int(now))


def _alert_payload(kind: PushKind, data: dict[str, str]) -> dict[str, Any]:
    alert = {k: data[k] for k in _ALERT_FIELDS if data.get(k)}
    if not alert:
        alert = {"body": _DEFAULT_BODY.get(kind, "")}
    aps: dict[str, Any] = {"alert": alert}
    # A cancel notice must not ring; the others use the default sound unless told otherwise.
    sound = data.get("sound", "" if kind is PushKind.CANCEL else "default")
    if sound:
        aps["sound"] = sound
    return {"aps": aps, **_custom(data, (*_ALERT_FIELDS, "sound"))}


def _custom(data: dict[str, str], taken: tuple[str, ...]) -> dict[str, str]:
    # "aps" belongs to Apple; a string there would make the whole payload invalid.
    return {k: v for k, v in data.items() if k != "aps" and k not in taken}


# -- the shared JWT --


class ProviderToken(AuthorizationHeaderProvider):
    """One ES256 provider token per (key_id, team_id), shared by all connections."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        key_id: str,
        team_id: str,
        *,
        clock: Callable[[], float] = time.time,
        refresh_after: float = JWT_REFRESH_AFTER,
        forced_min_interval: float = JWT_FORCED_MIN_INTERVAL,
    ) -> None:
        self._key = key
        self.key_id = key_id
        self.team_id = team_id
        self._clock = clock
        self._refresh_after = refresh_after
        self._forced_min_interval = forced_min_interval
        self._header: str | None = None
        self._issued_at = 0.0
        self._last_forced: float | None = None
        self.generation = 0
        """How many tokens were minted so far; identifies the current one."""

    def get_header(self) -> str:
        """``bearer <JWT>``, minting a token if there is none or it is due."""
        now = self._clock()
        if self._header is None or now - self._issued_at >= self._refresh_after:
            self._mint(now)
        assert self._header is not None
        return self._header

    def current_generation(self) -> int:
        """Make sure a token exists, and say which one the next request will carry."""
        self.get_header()
        return self.generation

    def expired(self, generation: int) -> bool:
        """APNs said ExpiredProviderToken to a request sent with token ``generation``.

        Re-mint now, unless another answer already did (concurrent requests carried the
        same token) or an early re-mint happened less than a minute ago. True if minted.
        """
        if generation != self.generation:
            return False
        now = self._clock()
        if self._last_forced is not None and now - self._last_forced < self._forced_min_interval:
            return False
        self._last_forced = now
        self._mint(now)
        return True

    def _mint(self, now: float) -> None:
        issued_at = int(now)
        token = jwt.encode(
            {"iss": self.team_id, "iat": issued_at},
            self._key,
            algorithm="ES256",
            headers={"kid": self.key_id},
        )
        self._header = f"bearer {token}"
        self._issued_at = float(issued_at)
        self.generation += 1
        log.info("minted APNs provider token #%d (kid %s)", self.generation, self.key_id)


def load_apns_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read and check a ``.p8`` key: it must be an unencrypted P-256 private key."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path}: APNs keys are P-256 (ES256) keys")
    return key


# -- aioapns glue --


class _AnswerHeaders:
    """Retry-After values by apns-id, handed from the protocol to the provider."""

    LIMIT = 1024  # entries of abandoned requests must not pile up

    def __init__(self) -> None:
        self._retry_after: dict[str, str] = {}

    def put(self, apns_id: str, retry_after: str) -> None:
        if len(self._retry_after) >= self.LIMIT:
            self._retry_after.pop(next(iter(self._retry_after)))
        self._retry_after[apns_id] = retry_after

    def pop(self, apns_id: str) -> str | None:
        return self._retry_after.pop(apns_id, None)


class _StreamSlots(ChannelPool):
    """aioapns' per-connection stream pool, with a bound that can change while streams run.

    aioapns 4.0's ``DynamicBoundedSemaphore`` raises its bound with ``release()`` calls that
    are clamped to the *old* bound. APNs advertises ``MAX_CONCURRENT_STREAMS`` 1 until a
    request with a valid JWT, then 1000; that raise arrives while the first request is
    still open, so the connection is left with 1-2 free slots and every further push
    waits in the pool's 10 ms polling loop. Here the slots are simply ``bound - open``:
    open streams are counted, the bound is whatever the server last said, and a free slot
    goes to the longest waiter first (it is handed over, so a newcomer cannot take it).
    """

    def __init__(self, bound: int) -> None:
        super().__init__(bound)
        self._open = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def bound(self) -> int:
        return self._bound_value

    @bound.setter
    def bound(self, new_bound: int) -> None:
        self._bound_value = max(new_bound, 0)
        self._wake()

    @property
    def open_streams(self) -> int:
        return self._open

    @property
    def is_busy(self) -> bool:
        return self._open >= self._bound_value

    def locked(self) -> bool:
        return self.is_busy or bool(self._queue)

    async def acquire(self) -> int:  # type: ignore[override]  # aioapns returns the stream id
        if self._queue or self._open >= self._bound_value:
            waiter = asyncio.get_running_loop().create_future()
            self._queue.append(waiter)
            try:
                await waiter  # on success, _wake has counted the slot as ours
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self.release()  # handed a slot, then cancelled before using it
                elif waiter in self._queue:
                    self._queue.remove(waiter)
                raise
        else:
            self._open += 1
        self._value = self._bound_value - self._open
        self._stream_id += 2
        if self._stream_id > H2Connection.HIGHEST_ALLOWED_STREAM_ID:
            raise NoAvailableStreamIDError()
        return self._stream_id

    def release(self) -> None:
        """A stream ended (aioapns calls this from ``on_stream_ended``)."""
        self._open = max(self._open - 1, 0)
        self._wake()

    def destroy(self, exc: Exception) -> None:
        """The connection is gone: fail every waiter (aioapns, from ``connection_lost``)."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    def _wake(self) -> None:
        while self._queue and self._open < self._bound_value:
            waiter = self._queue.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
        self._value = self._bound_value - self._open


_INDEXED_HEADERS = frozenset(
    {b"host", b"apns-topic", b"apns-push-type", b"apns-priority", b"authorization"}
)
"""Request headers worth a place in the HPACK table: the same on most requests of a
connection (names as the encoder gets them: h2 has turned them into bytes). The others
(``:path`` with the device token, ``apns-id``, ``apns-expiration``, ``apns-collapse-id``)
differ per push and would only push the JWT out of the 4 KB table."""


def _h2_connection() -> H2Connection:
    """An h2 client connection tuned for aioapns' requests.

    * No normalisation or validation of outbound headers: aioapns sends a fixed set of
      lower-case ``str`` headers, and h2 checks each of them in Python on every request.
    * No Huffman coding (pure Python in hpack, the hottest function of a busy pushd): a
      few more bytes on a local-CPU-bound, not bandwidth-bound, connection.
    * The JWT is *indexed*: h2 would mark ``authorization`` never-indexed and re-send the
      ~200-byte token with every request; indexed, it goes out once per connection and
      then as a 1-byte reference. Security trade-off, made on purpose: the token then sits
      in this connection's HPACK table, which is what CRIME-style compression attacks
      probe. Such an attack needs someone who observes our TLS stream's record sizes *and*
      can make us send a guessed ``authorization`` value on this same connection; HPACK
      only matches whole name/value pairs, the header names are fixed here, and what a SIP
      client controls (device token, topic) lands in other headers. On a server-to-server
      connection to Apple that is not a realistic position. Per-push values are sent
      never-indexed (:data:`_INDEXED_HEADERS`), so they do not evict the JWT.
    """
    conn = H2Connection(
        H2Configuration(
            client_side=True,
            normalize_outbound_headers=False,
            validate_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )
    encode = conn.encoder.encode

    def encode_headers(headers: Any, huffman: bool = False) -> bytes:
        return encode(
            [(name, value, name not in _INDEXED_HEADERS) for name, value in headers],
            huffman=False,
        )

    conn.encoder.encode = encode_headers  # type: ignore[method-assign]
    return conn


class _Abandoned:
    """Counts requests whose caller gave up waiting (timeout, cancellation).

    Shared by the connections of one provider: a connection sweeps its finished futures
    only when this count moved since its last sweep, not on every read.
    """

    def __init__(self) -> None:
        self.count = 0


class _ApnsProtocol(APNsTLSClientProtocol):
    """aioapns' connection, pointed at our host, with our JWT and a few leaks plugged.

    Subclassed once per environment by :meth:`ApnsProvider._protocol_class`, which sets
    the class attributes below.
    """

    provider_token: ClassVar[ProviderToken | None] = None
    answers: ClassVar[_AnswerHeaders]
    abandoned: ClassVar[_Abandoned]

    def __init__(
        self,
        apns_topic: str,
        loop: asyncio.AbstractEventLoop | None = None,
        on_connection_lost: Callable[[APNsBaseClientProtocol], NoReturn] | None = None,
        auth_provider: AuthorizationHeaderProvider | None = None,
    ) -> None:
        # The key pool passes a fresh per-connection JWT provider; ours replaces it.
        shared = self.provider_token
        super().__init__(
            apns_topic, loop, on_connection_lost, shared if shared is not None else auth_provider
        )
        self.conn = _h2_connection()
        self.free_channels = _StreamSlots(1000)  # the server's SETTINGS set the real bound
        self._swept = self.abandoned.count

    def data_received(self, data: bytes) -> None:
        if self.abandoned.count != self._swept:
            self._forget_abandoned()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget_abandoned()
        super().connection_lost(exc)

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        retry_after = headers.get(b"retry-after")
        if retry_after is not None:
            apns_id = headers.get(b"apns-id", b"").decode("latin-1")
            self.answers.put(apns_id, retry_after.decode("latin-1"))
        super().on_response_received(headers)

    def on_stream_ended(self, stream_id: int) -> None:
        # aioapns only clears stream -> request entries on error answers; a connection that
        # never idles would otherwise grow this dict by one entry per successful push.
        self.request_streams.pop(stream_id, None)
        super().on_stream_ended(stream_id)

    def _forget_abandoned(self) -> None:
        # A request whose caller timed out has a cancelled future; aioapns would call
        # set_result/set_exception on it and raise InvalidStateError inside the protocol.
        # O(requests in flight): run only after an abandonment (and when the line drops).
        self._swept = self.abandoned.count
        for apns_id in [i for i, future in self.requests.items() if future.done()]:
            del self.requests[apns_id]


_LOG_LEVELS = {
    Verdict.DELIVERED: logging.DEBUG,
    Verdict.RETRY: logging.INFO,
    Verdict.DELETE_TOKEN: logging.INFO,
    Verdict.CONFIG_ERROR: logging.DEBUG,  # the dispatcher's once-only ERROR line has the hint
    Verdict.GIVE_UP: logging.WARNING,
}


async def _quiet(request: NotificationRequest, result: NotificationResult) -> None:
    """err_func for aioapns: we classify and log answers ourselves."""


class ApnsProvider:
    """The APNs :class:`~pushd.model.Provider`."""

    name = ProviderName.APNS

    def __init__(self, settings: ApnsSettings, *, clock: Callable[[], float] = time.time) -> None:
        """Check credentials now (fail at start, not at the first call); connect later."""
        self.settings = settings
        self._clock = clock
        self._clients: dict[Environment, APNs] = {}
        self._answers = _AnswerHeaders()
        self._abandoned = _Abandoned()
        self._last_connect_error: str | None = None
        self._token: ProviderToken | None = None
        self._cert_topic: str | None = None
        if settings.auth == "token":
            assert settings.key_file and settings.key_id and settings.team_id
            key = load_apns_key(settings.key_file)
            self._token = ProviderToken(key, settings.key_id, settings.team_id, clock=clock)
        else:
            assert settings.cert_file is not None
            self._cert_topic = certificate_topic(settings.cert_file)
        self._ssl_context()  # raises now if the CA or client certificate is unusable

    async def send(self, request: PushRequest) -> PushResult:
        now = self._clock()
        remaining = request.deadline - now
        if remaining <= 0:
            return self._finish(
                request, None, PushResult(verdict=Verdict.GIVE_UP, reason="deadline passed")
            )
        if not request.topic:
            return self._finish(
                request,
                None,
                PushResult(
                    verdict=Verdict.CONFIG_ERROR,
                    reason="MissingTopic (not sent)",
                    hint=classify_apns(400, "MissingTopic").hint,
                ),
            )
        message = build_message(request, now)
        if message.encoded_size() > message.size_limit():
            return self._finish(
                request,
                message,
                PushResult(verdict=Verdict.GIVE_UP, reason="PayloadTooLarge (not sent)"),
            )
        return await self._attempt(request, message, min(self.settings.timeout, remaining))

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.pool.close()
        # TLS shutdown takes a few loop turns; wait (briefly) until every connection is
        # gone, so a loop closed right after us leaves no half-open sockets behind.
        deadline = time.monotonic() + CLOSE_GRACE
        while any(c.pool.connections for c in clients.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- one attempt --

    async def _attempt(
        self, request: PushRequest, message: ApnsMessage, timeout: float
    ) -> PushResult:
        notification = NotificationRequest(
            device_token=request.token,
            message=message.payload,
            time_to_live=message.time_to_live,
            priority=message.priority,
            collapse_key=message.collapse_id,
            push_type=PushType(message.push_type.value),
            apns_topic=message.topic,
        )
        client = self._client(request.environment, message.topic)
        generation = self._token.current_generation() if self._token else 0
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the send in one more Task.
            async with asyncio.timeout(timeout):
                answer = await client.send_notification(notification)
        except TimeoutError:
            self._abandoned.count += 1
            return self._no_answer(request, message, f"no answer within {timeout:.1f} s")
        except asyncio.CancelledError:  # e.g. the dispatcher's own deadline
            self._abandoned.count += 1
            raise
        except MaxAttemptsExceeded:
            return self._no_answer(request, message, self._connection_trouble())
        except (ApnsConnectionError, OSError, H2Error) as exc:
            return self._no_answer(request, message, f"{type(exc).__name__}: {exc}")
        return self._answered(request, message, notification.notification_id, answer, generation)

    def _answered(
        self,
        request: PushRequest,
        message: ApnsMessage,
        apns_id: str,
        answer: NotificationResult,
        generation: int,
    ) -> PushResult:
        status = int(answer.status) if str(answer.status).isdigit() else None
        retry_after = parse_retry_after(self._answers.pop(apns_id), self._clock())
        verdict = classify_apns(status, answer.description, retry_after, topic=message.topic)
        if verdict.new_jwt and self._token is not None:
            self._token.expired(generation)
        result = PushResult(
            verdict=verdict.verdict,
            status=status,
            reason=verdict.reason,
            retry_after=verdict.retry_after,
            provider_id=apns_id if verdict.verdict is Verdict.DELIVERED else None,
            hint=verdict.hint,
        )
        return self._finish(request, message, result)

    def _no_answer(self, request: PushRequest, message: ApnsMessage, why: str) -> PushResult:
        verdict = classify_apns(None, why)
        # No hint: "no answer" says it all, and a RETRY is never a config error.
        result = PushResult(verdict=verdict.verdict, reason=verdict.reason)
        return self._finish(request, message, result)

    def _connection_trouble(self) -> str:
        # aioapns only says MaxAttemptsExceeded; the cause was caught in create_connection.
        cause = self._last_connect_error
        return f"cannot connect: {cause}" if cause else "connection closed before the answer"

    def _finish(
        self, request: PushRequest, message: ApnsMessage | None, result: PushResult
    ) -> PushResult:
        """Log the outcome of one attempt (one line, with the classifier's hint).

        Config errors only at DEBUG: the dispatcher logs each (provider, reason) once at
        ERROR with ``result.hint``, and every push's outcome at WARNING.
        """
        level = _LOG_LEVELS.get(result.verdict, logging.INFO)
        log.log(
            level,
            "APNs %s %s token=%s topic=%s env=%s: %s status=%s reason=%s%s",
            request.kind,
            message.push_type if message else "-",
            short_token(request.token),
            message.topic if message else request.topic,
            request.environment,
            result.verdict,
            result.status,
            result.reason,
            f" ({result.hint})" if result.hint else "",
        )
        return result

    # -- clients, one per environment, built inside the running loop --

    def _client(self, environment: Environment, topic: str) -> APNs:
        client = self._clients.get(environment)
        if client is None:
            client = self._clients[environment] = self._new_client(environment, topic)
        return client

    def _new_client(self, environment: Environment, topic: str) -> APNs:
        s = self.settings
        common: dict[str, Any] = {
            "max_connections": s.max_connections,
            "max_connection_attempts": 1,  # one attempt per send; the dispatcher retries
            "use_sandbox": environment is Environment.SANDBOX,
            "ssl_context": self._ssl_context(),
            "err_func": _quiet,
        }
        if self._token is not None:
            # aioapns wants the key to build its own per-connection JWT provider, which
            # _ApnsProtocol discards; ``topic`` is only a fallback, every request sets one.
            key_pem = "unused: the shared ProviderToken signs"
            client = APNs(
                key=key_pem,
                key_id=self._token.key_id,
                team_id=self._token.team_id,
                topic=topic,
                **common,
            )
        else:
            client = APNs(client_cert=str(s.cert_file), topic=self._cert_topic or topic, **common)
        client.pool.protocol_class = self._protocol_class(environment)
        self._watch_connects(client.pool)
        return client

    def _protocol_class(self, environment: Environment) -> type[_ApnsProtocol]:
        attrs = {
            "APNS_SERVER": self.settings.host or APPLE_HOSTS[environment],
            "APNS_PORT": self.settings.port,
            "provider_token": self._token,
            "answers": self._answers,
            "abandoned": self._abandoned,
        }
        return cast(
            "type[_ApnsProtocol]", type(f"ApnsProtocol_{environment}", (_ApnsProtocol,), attrs)
        )

    def _watch_connects(self, pool: APNsBaseConnectionPool) -> None:
        """Remember why a connection failed: aioapns turns it into a bare ConnectionError."""
        create = pool.create_connection

        async def create_connection() -> APNsBaseClientProtocol:
            try:
                connection = await create()
            except Exception as exc:
                self._last_connect_error = f"{type(exc).__name__}: {exc}"
                raise
            self._last_connect_error = None
            return connection

        pool.create_connection = create_connection  # type: ignore[method-assign]

    def _ssl_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["h2"])  # APNs speaks only HTTP/2; say so in the handshake
        if s.cert_file is not None and s.auth == "certificate":
            ctx.load_cert_chain(s.cert_file)
        return ctx


def certificate_topic(cert_file: Path) -> str | None:
    """The bundle an APNs client certificate is for (its subject ``UID``), if any."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{cert_file}: no PEM certificate ({exc})") from None
    uids = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    value = uids[0].value if uids else None
    return value if isinstance(value, str) else None
