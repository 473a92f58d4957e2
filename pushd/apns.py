"""APNs provider: one push attempt per call, over aioapns, with one shared JWT.

aioapns provides the client, its connection pool and its protocol class; this module
decides what to send and fixes what aioapns gets wrong for a long-running daemon
(docs/provider-errors.md, "APNs provider token"):

* **One provider token.** aioapns mints a JWT per connection, and connections close after
  10 s idle, so sporadic pushes would mint a JWT almost every time and earn
  ``429 TooManyProviderTokenUpdates``. :class:`ProviderToken` is shared by every
  connection of both environments; it is re-minted every 40 minutes (Apple: between 20
  and 60) and at once when APNs answers ``ExpiredProviderToken``.
* **Host and port** come from a subclass of aioapns' protocol class (``APNS_SERVER`` /
  ``APNS_PORT``), so the fake APNs and Apple's sandbox host need no global patching.
* **One attempt.** ``max_connection_attempts=1`` and no loop here: the dispatcher owns
  retries and backoff. Every failure becomes a :class:`PushResult`, never an exception.
* **HTTP/2.** That subclass (:class:`_ApnsProtocol`) speaks HTTP/2 through
  :mod:`pushd.apns_h2` instead of h2: h2 alone cost more CPU per push than pushd's whole
  budget. It also keeps Retry-After, gives received data back as flow-control window,
  resets the streams of abandoned requests, and fails only the requests a GOAWAY or
  RST_STREAM concerns, all of which aioapns' own protocol class got wrong.
* **Warm connections.** Apple asks for connections kept open across pushes; aioapns
  closed them after 10 s idle. They stay open for ``idle_timeout`` (1 h) and are PINGed
  after ``keepalive`` (60 s) of silence, so one that died quietly is replaced before a
  call's push finds it dead.
* **Stream slots.** aioapns 4.0 loses the slots of a ``MAX_CONCURRENT_STREAMS`` raise that
  arrives while a request is in flight (APNs: 1 until a valid JWT, then 1000), leaving
  each connection 1-2 usable streams for good; :class:`_StreamSlots` counts them right.

Logging: device tokens only through :func:`pushd.logs.short_token`, never JWTs or key material.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import itertools
import json
import logging
import ssl
import time
import uuid
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
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from h2.exceptions import NoAvailableStreamIDError

from pushd.apns_errors import classify_apns
from pushd.apns_h2 import (
    Answer,
    ErrorCode,
    GoAway,
    H2Client,
    MaxStreamsChanged,
    ProtocolError,
    StreamIdsExhausted,
    StreamReset,
    error_name,
)
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
FLUSH_EVERY = 8
"""Requests coalesced into one write at most (see :meth:`_ApnsProtocol.send_notification`)."""
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
    """Seconds to wait for an answer (capped by the push deadline), and for a PING's."""
    idle_timeout: float = 3600.0
    """Close a connection that has carried no push for this long. Apple asks for
    connections kept open across pushes, not one per push."""
    keepalive: float = 60.0
    """PING a connection after this many seconds without a byte from APNs (0 = never), so
    a connection that died silently (NAT, firewall) is replaced before a call needs it."""

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
        if self.idle_timeout <= 0:
            raise ValueError("apns idle_timeout must be positive")
        if self.keepalive < 0:
            raise ValueError("apns keepalive must be 0 (off) or positive")


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


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Compact UTF-8 JSON: Apple counts every byte against the payload limit."""


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

    @functools.cached_property
    def body(self) -> bytes:
        """The payload as sent (the encoding aioapns uses)."""
        return _JSON.encode(self.payload).encode()

    def encoded_size(self) -> int:
        return len(self.body)

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


class ApnsAnswer(NotificationResult):
    """aioapns' result, plus the Retry-After header that aioapns never passes on."""

    __slots__ = ("retry_after",)

    def __init__(
        self,
        notification_id: str,
        status: str,
        description: str | None = None,
        timestamp: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(notification_id, status, description, timestamp)
        self.retry_after = retry_after


class ApnsNoAnswer(Exception):
    """APNs will not answer this request (stream reset, connection going away, broken
    HTTP/2); the message says why. Worth a retry on another connection."""


class _Notification(NotificationRequest):
    """aioapns' request, plus what our protocol class needs: the JSON body already encoded
    (for the size check) and how long to wait for the answer."""

    __slots__ = ("body", "timeout")

    def __init__(self, message: ApnsMessage, token: str, apns_id: str, timeout: float) -> None:
        # NotificationRequest's fields, set here: its __init__ would draw a uuid4 per push.
        self.device_token = token
        self.message = message.payload
        self.notification_id = apns_id
        self.time_to_live = message.time_to_live
        self.priority = message.priority
        self.collapse_key = message.collapse_id
        self.push_type = _PUSH_TYPES[message.push_type]
        self.apns_topic = message.topic
        self.body = message.body
        self.timeout = timeout


_PUSH_TYPES = {kind: PushType(kind.value) for kind in ApnsPushType}


class _ApnsIds:
    """``apns-id`` values: canonical UUIDs (version 4 layout), random per process, then
    counted. APNs needs them unique; ``str(uuid4())`` per push cost 5 µs."""

    def __init__(self) -> None:
        r = uuid.uuid4().hex
        variant = "89ab"[int(r[16], 16) & 3]
        self._prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{variant}{r[17:20]}-"
        self._counter = itertools.count(int(r[20:], 16))

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFF_FFFF_FFFF:012x}"


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

    async def acquire(self) -> int:  # type: ignore[override]  # aioapns returns a stream id
        """Wait for a free slot. The stream id is the HTTP/2 layer's; 0 is returned."""
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
        return 0

    def release(self) -> None:
        """A stream ended."""
        self._open = max(self._open - 1, 0)
        self._wake()

    def destroy(self, exc: Exception) -> None:
        """The connection is gone: fail every waiter."""
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


@dataclass(slots=True)
class _Waiting:
    """A request in flight on a connection."""

    apns_id: str
    future: asyncio.Future[ApnsAnswer]
    timer: asyncio.TimerHandle
    """Gives up when no answer came in time."""


class _ApnsProtocol(APNsTLSClientProtocol):
    """One APNs connection: aioapns' protocol class, with :mod:`pushd.apns_h2` as its
    HTTP/2 layer instead of h2 (see that module for why), our host and our JWT.

    aioapns' pool and client drive it as they drive their own protocol (``send_notification``,
    ``is_busy``, ``close``, ``on_connection_lost``). Besides speed, this fixes what
    aioapns' own protocol got wrong for a long-running daemon: received DATA is given back
    as flow-control window, an answer without a JSON body still resolves its request, a
    request abandoned by a timeout is reset (RST_STREAM) and frees its slot, Retry-After
    is kept, and GOAWAY, RST_STREAM and protocol errors fail only the requests they concern,
    with the reason.

    Subclassed once per environment by :meth:`ApnsProvider._protocol_class`, which sets
    the class attributes below.
    """

    provider_token: ClassVar[ProviderToken | None] = None
    AUTHORITY: ClassVar[str] = APPLE_HOSTS[Environment.PRODUCTION]
    """Apple's host for this environment, named in every request (``:authority``) even
    when ``APNS_SERVER`` is an override, as curl's ``--connect-to`` would."""
    KEEPALIVE: ClassVar[float] = 60.0
    PING_TIMEOUT: ClassVar[float] = 10.0

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
        self.wire = H2Client(self.AUTHORITY)
        self.free_channels = _StreamSlots(1000)  # the server's SETTINGS set the real bound
        self.waiting: dict[int, _Waiting] = {}
        """Requests in flight, by stream id."""
        self._going_away = False
        self._flush_scheduled = False
        self._unflushed = 0
        self._last_request = self._last_heard = self.loop.time()
        self._ping_sent: float | None = None
        """When our unanswered PING went out; None when none is outstanding."""

    @property
    def is_busy(self) -> bool:
        return self._going_away or self.free_channels.is_busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.wire.preface()
        self._write()
        self._arm_timer(self.loop.time())

    async def send_notification(self, request: NotificationRequest) -> ApnsAnswer:
        if not isinstance(request, _Notification):
            raise TypeError("send through ApnsProvider")
        await self.free_channels.acquire()
        try:
            if self._going_away:
                raise ApnsNoAnswer("connection closing (GOAWAY) before the request went out")
            self._last_request = self.loop.time()
            stream_id = self.wire.send_request(
                f"/3/device/{request.device_token}",
                self._headers(request),
                self.auth_provider.get_header() if self.auth_provider else None,
                request.body,
            )
        except StreamIdsExhausted:
            self.free_channels.release()
            raise NoAvailableStreamIDError from None  # aioapns' pool closes the connection
        except BaseException:
            self.free_channels.release()
            raise
        future: asyncio.Future[ApnsAnswer] = self.loop.create_future()
        # A timer per stream, not asyncio.timeout around the send: a third of the cost.
        timer = self.loop.call_later(request.timeout, self._expire, stream_id, request.timeout)
        self.waiting[stream_id] = _Waiting(request.notification_id, future, timer)
        # Requests made in the same loop turn (typically: the tasks woken by one read's
        # answers) leave in few TLS writes, not one write and syscall each. Every
        # FLUSH_EVERY requests go at once, so the server starts on them while we build
        # the rest (one write per turn would make the two sides take turns).
        self._unflushed += 1
        if self._unflushed >= FLUSH_EVERY:
            self._write()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(stream_id)
            raise

    def _expire(self, stream_id: int, timeout: float) -> None:
        waiting = self._abandon(stream_id)
        if waiting is not None and not waiting.future.done():
            waiting.future.set_exception(ApnsNoAnswer(f"no answer within {timeout:.1f} s"))

    def _abandon(self, stream_id: int) -> _Waiting | None:
        """Give up on a request: tell the server (RST_STREAM) and free its slot now."""
        waiting = self._take(stream_id)
        if waiting is not None:
            self.wire.reset_stream(stream_id)
            self._write()
        return waiting

    def _take(self, stream_id: int) -> _Waiting | None:
        """The request on ``stream_id`` is over (answered, failed or abandoned): forget it,
        stop its timer and free its stream slot. None if it was already over."""
        waiting = self.waiting.pop(stream_id, None)
        if waiting is not None:
            waiting.timer.cancel()
            self.free_channels.release()
        return waiting

    def _headers(self, request: NotificationRequest) -> list[tuple[str, str]]:
        # aioapns' header set and order; apns-expiration is absolute, from its relative TTL.
        headers = [
            ("apns-id", request.notification_id),
            ("apns-topic", request.apns_topic or self.apns_topic),
        ]
        if request.time_to_live is not None:
            headers.append(("apns-expiration", str(int(time.time()) + request.time_to_live)))
        if request.priority is not None:
            headers.append(("apns-priority", str(request.priority)))
        if request.collapse_key is not None:
            headers.append(("apns-collapse-id", request.collapse_key))
        if request.push_type is not None:
            headers.append(("apns-push-type", request.push_type.value))
        return headers

    def data_received(self, data: bytes) -> None:
        self._last_heard = self.loop.time()
        if self._ping_sent is not None:  # any byte proves the connection alive
            self._ping_sent = None
            if self.inactivity_timer:
                self.inactivity_timer.cancel()
            self._arm_timer(self._last_heard)  # the next PING is due a keepalive from now
        try:
            events = self.wire.receive(data)
        except ProtocolError as exc:
            log.warning("APNs connection to %s: %s; closing it", self.APNS_SERVER, exc)
            self.wire.close(exc.code, str(exc))
            self._fail_streams(lambda _: True, f"HTTP/2 error from APNs ({exc})")
            self.close()
            return
        for event in events:
            if type(event) is Answer:
                self._answered(event)
            elif type(event) is MaxStreamsChanged:
                self.free_channels.bound = event.value
            elif type(event) is StreamReset:
                self._fail_streams(
                    event.stream_id.__eq__,
                    f"stream reset by APNs ({error_name(event.error_code)})",
                )
            elif type(event) is GoAway:
                self._on_goaway(event)
        self._write()
        if self._going_away and not self.waiting:
            self.close()

    def _answered(self, answer: Answer) -> None:
        waiting = self._take(answer.stream_id)
        if waiting is None:
            return
        reason, timestamp = _error_body(answer) if answer.status != 200 else (None, None)
        if not waiting.future.done():
            waiting.future.set_result(
                ApnsAnswer(
                    waiting.apns_id, str(answer.status), reason, timestamp, answer.retry_after
                )
            )

    def _on_goaway(self, event: GoAway) -> None:
        self._going_away = True
        why = error_name(event.error_code)
        debug = event.debug.decode("utf-8", "replace")[:200]
        level = logging.INFO if event.error_code == ErrorCode.NO_ERROR else logging.WARNING
        log.log(
            level, "APNs is closing a connection (GOAWAY %s%s)", why, f": {debug}" if debug else ""
        )
        self._fail_streams(
            lambda stream_id: stream_id > event.last_stream_id,
            f"APNs closed the connection before handling the request (GOAWAY {why})",
        )

    def _fail_streams(self, which: Callable[[int], bool], why: str) -> None:
        for stream_id in [s for s in self.waiting if which(s)]:
            waiting = self._take(stream_id)
            if waiting is not None and not waiting.future.done():
                waiting.future.set_exception(ApnsNoAnswer(why))

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write()

    def _write(self) -> None:
        self._unflushed = 0
        out = self.wire.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def _check_idle(self) -> None:
        """One timer per connection (aioapns re-armed one on every write): a silent peer
        is PINGed, one that does not answer is dropped, an unused connection closed."""
        now = self.loop.time()
        if self._ping_sent is not None and now - self._ping_sent >= self.PING_TIMEOUT:
            log.warning(
                "APNs connection to %s: no answer to a PING within %g s; dropping it",
                self.APNS_SERVER,
                self.PING_TIMEOUT,
            )
            if self.transport is not None:
                self.transport.abort()  # a TLS goodbye would only wait on the dead peer
            return
        if not self.waiting and now - self._last_request >= self.INACTIVITY_TIME:
            log.debug("APNs connection to %s idle; closing it", self.APNS_SERVER)
            self.close()
            return
        if self.KEEPALIVE and self._ping_sent is None and now - self._last_heard >= self.KEEPALIVE:
            self.wire.ping()
            self._ping_sent = now
            self._write()
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        due = [self._last_request + self.INACTIVITY_TIME]
        if self._ping_sent is not None:
            due.append(self._ping_sent + self.PING_TIMEOUT)
        elif self.KEEPALIVE:
            due.append(self._last_heard + self.KEEPALIVE)
        delay = max(min(due) - now, 0.05)
        self.inactivity_timer = self.loop.call_later(delay, self._check_idle)

    def close(self) -> None:
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.wire.close()
            self._write()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        if self.on_connection_lost:
            self.on_connection_lost(self)  # the pool forgets this connection
        closed = ConnectionClosed(str(exc))
        for waiting in self.waiting.values():
            waiting.timer.cancel()
            if not waiting.future.done():
                waiting.future.set_exception(closed)
        self.waiting.clear()
        self.free_channels.destroy(closed)


def _error_body(answer: Answer) -> tuple[str | None, int | None]:
    """``reason`` and ``timestamp`` from an APNs error body (JSON); (None, None) when the
    body is missing or is not APNs' JSON (a proxy's HTML page, say)."""
    try:
        data = json.loads(answer.body)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    reason = data.get("reason")
    timestamp = data.get("timestamp")
    return (
        reason if isinstance(reason, str) and reason else None,
        timestamp if isinstance(timestamp, int) else None,
    )


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
        self._last_connect_error: str | None = None
        self._apns_ids = _ApnsIds()
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
        notification = _Notification(message, request.token, self._apns_ids.next(), timeout)
        client = self._client(request.environment, message.topic)
        generation = self._token.current_generation() if self._token else 0
        try:
            # The wait for the answer is bounded by the protocol's per-stream timer, the
            # wait for a connection by _watch_connects; a free stream slot is the rule.
            answer = await client.send_notification(notification)
        except MaxAttemptsExceeded:
            return self._no_answer(request, message, self._connection_trouble())
        except ApnsNoAnswer as exc:
            return self._no_answer(request, message, str(exc))
        except (ApnsConnectionError, OSError) as exc:
            return self._no_answer(request, message, f"{type(exc).__name__}: {exc}")
        if not isinstance(answer, ApnsAnswer):  # our protocol class always answers so
            raise TypeError(f"unexpected APNs answer {answer!r}")
        return self._answered(request, message, notification.notification_id, answer, generation)

    def _answered(
        self,
        request: PushRequest,
        message: ApnsMessage,
        apns_id: str,
        answer: ApnsAnswer,
        generation: int,
    ) -> PushResult:
        status = int(answer.status) if str(answer.status).isdigit() else None
        retry_after = parse_retry_after(answer.retry_after, self._clock())
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
        if not log.isEnabledFor(level):  # the common case: delivered, at DEBUG
            return result
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
            "AUTHORITY": APPLE_HOSTS[environment],
            "APNS_PORT": self.settings.port,
            "provider_token": self._token,
            "INACTIVITY_TIME": self.settings.idle_timeout,
            "KEEPALIVE": self.settings.keepalive,
            "PING_TIMEOUT": self.settings.timeout,
        }
        return cast(
            "type[_ApnsProtocol]", type(f"ApnsProtocol_{environment}", (_ApnsProtocol,), attrs)
        )

    def _watch_connects(self, pool: APNsBaseConnectionPool) -> None:
        """Remember why a connection failed: aioapns turns it into a bare ConnectionError."""
        create = pool.create_connection

        async def create_connection() -> APNsBaseClientProtocol:
            try:
                async with asyncio.timeout(self.settings.timeout):
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
