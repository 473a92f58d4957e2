"""pushd's HTTP API: push requests from other SIP servers and tools, health, metrics.

The contract is ``docs/pushd-api.openapi.yaml``. The parts, in the sans-IO spirit:

* :func:`parse_head` turns the bytes of a request head into a :class:`RequestHead`;
* :func:`push_message` turns a ``POST /v1/push`` body into the message the
  :class:`~pushd.dispatch.Dispatcher` takes from Kamailio, or an :class:`HttpError`
  naming the field;
* :class:`ApiHandler` decides the answer for a parsed request (routing, auth, body);
* :class:`HttpApi` only moves bytes between sockets and the handler (asyncio streams,
  HTTP/1.1, one request per connection).

Errors::

    HttpError (status, error, field?, detail?)  -> a JSON error response, never a traceback
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from pushd.config import Secret
from pushd.dispatch import BadPush, RequestDefaults, ResultSink, build_request
from pushd.model import ProviderName
from pushgate import pn_params

log = logging.getLogger("pushd.api")

MAX_BODY = 16 * 1024
"""Bytes; a push is a few hundred, so anything near this is a mistake or an attack."""
MAX_HEAD = 8 * 1024
"""Bytes of request line plus headers."""
MAX_TTL = 600.0
"""Seconds a push may live; the HTTP request is held open until its verdict."""
MAX_CONNECTIONS = 256
"""Concurrent connections; more are answered 503 at once (pushes are bounded separately)."""
READ_TIMEOUT = 10.0
"""Seconds to receive the head and the body: a slow client must not hold a slot forever."""
MAX_ID = 200

PUSH_FIELDS = frozenset(
    {"id", "kind", "provider", "prid", "param", "deadline", "ttl", "data", "aor", "ruid"}
)
"""What ``POST /v1/push`` accepts: the evapi ``push`` message minus ``type``, plus ``ttl``."""

ROUTES: dict[str, frozenset[str]] = {
    "/v1/push": frozenset({"POST"}),
    "/v1/health": frozenset({"GET"}),
    "/metrics": frozenset({"GET"}),
}
"""Path -> methods; the OpenAPI test checks this against the document both ways."""

_SINGLE_HEADERS = frozenset({"content-length", "transfer-encoding", "authorization"})

PUBLIC_PATHS = frozenset({"/v1/health"})
"""Paths answered without a token: load balancers and systemd probes hold no secret."""


class HttpError(Exception):
    """Answer the request with ``status`` and a JSON error body."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        field: str | None = None,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error}" + (f" ({field})" if field else ""))
        self.status = status
        self.error = error
        self.field = field
        self.detail = detail
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.error}
        if self.field is not None:
            body["field"] = self.field
        if self.detail is not None:
            body["detail"] = self.detail
        return Response.json(self.status, body, headers=self.headers)


@dataclass(frozen=True, kw_only=True)
class RequestHead:
    method: str
    path: str
    """Target without the query string."""
    headers: dict[str, str]
    """Lower-cased names; a repeated header keeps its last value (none we read repeats)."""

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        if raw is None:
            return None
        # isascii too: latin-1 heads can hold "²", a digit to isdigit() but not to int().
        if not (raw.isascii() and raw.isdigit()):
            raise HttpError(400, "bad Content-Length", field="Content-Length")
        return int(raw)


@dataclass(frozen=True, kw_only=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls, status: int, value: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> Response:
        body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
        return cls(
            status=status, body=body, content_type="application/json", headers=dict(headers or {})
        )

    def encode(self) -> bytes:
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [
            f"HTTP/1.1 {self.status} {phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


# -- pure parts -----------------------------------------------------------------------------


def parse_head(data: bytes) -> RequestHead:
    """Parse a request line and headers (``data`` ends with the blank line, or not)."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise HttpError(400, "bad request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad request line")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        # Whitespace before the colon is a request-smuggling vector (RFC 9112 5.1).
        if not sep or not name or name != name.strip():
            raise HttpError(400, "bad header line")
        key = name.lower()
        if key in headers and key in _SINGLE_HEADERS:
            # Two lengths or two credentials: which one a proxy used is anyone's guess.
            raise HttpError(400, f"{name} given twice", field=name)
        headers[key] = value.strip()
    return RequestHead(method=method, path=target.split("?", 1)[0], headers=headers)


def push_message(body: bytes, now: float) -> dict[str, Any]:
    """Validate a ``POST /v1/push`` body into a dispatcher ``push`` message.

    Only what ``build_request`` does not check is checked here (envelope, id, ttl vs
    deadline, aor/ruid); the RFC 8599 fields are left to it so both paths agree.
    """
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except ValueError as exc:
        raise HttpError(400, "invalid JSON", detail=str(exc)) from exc
    except RecursionError as exc:  # a body of "[[[[..." nests deeper than the parser recurses
        raise HttpError(400, "invalid JSON", detail="nested too deeply") from exc
    if not isinstance(value, dict):
        raise HttpError(400, "body must be a JSON object")
    for name in value:
        if name not in PUSH_FIELDS:
            raise HttpError(400, "unknown field", field=str(name))
    msg: dict[str, Any] = {k: v for k, v in value.items() if k != "ttl"}
    msg["type"] = "push"
    msg["id"] = _push_id(value.get("id"))
    msg["deadline"] = _deadline(value, now)
    for name in ("aor", "ruid"):
        if name in value and not isinstance(value[name], str):
            raise HttpError(400, "must be a string", field=name)
    return msg


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _push_id(value: object) -> str:
    if value is None:
        return f"api-{uuid.uuid4().hex}"
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise HttpError(
            400, f"must be a non-empty string of at most {MAX_ID} characters", field="id"
        )
    return value


def _deadline(value: Mapping[str, Any], now: float) -> float:
    has_deadline, has_ttl = value.get("deadline") is not None, value.get("ttl") is not None
    if has_deadline and has_ttl:
        raise HttpError(400, "give either deadline or ttl, not both", field="ttl")
    if not has_deadline and not has_ttl:
        raise HttpError(400, "required (or ttl)", field="deadline")
    name = "deadline" if has_deadline else "ttl"
    raw = value[name]
    # NaN, the infinities and integers too big for a float (10**400) are no time either.
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not -1e12 < raw < 1e12:
        raise HttpError(400, "must be a number of seconds", field=name)
    deadline = float(raw) if has_deadline else now + float(raw)
    if deadline <= now:
        raise HttpError(400, "must lie in the future", field=name)
    if deadline > now + MAX_TTL:
        raise HttpError(400, f"at most {MAX_TTL:g} s from now", field=name)
    return deadline


# -- the handler ----------------------------------------------------------------------------


Submit = Callable[[Mapping[str, Any], ResultSink], None]
"""``Dispatcher.submit``: start a push, the result goes to the sink."""


class ApiHandler:
    """Decides every answer; knows nothing about sockets."""

    def __init__(
        self,
        *,
        token: Secret,
        submit: Submit,
        providers: Callable[[], Collection[ProviderName]],
        defaults: RequestDefaults,
        kamailio_connected: Callable[[], bool],
        metrics: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token = token
        self._submit = submit
        self._providers = providers
        self._defaults = defaults
        self._kamailio_connected = kamailio_connected
        self._metrics = metrics
        self._clock = clock

    def check_head(self, head: RequestHead) -> int:
        """Route, authorise and size-check before any body is read; returns its length."""
        methods = ROUTES.get(head.path)
        if methods is None:
            raise HttpError(404, "not found", detail=head.path[:200])
        if head.method not in methods:
            allow = ", ".join(sorted(methods))
            raise HttpError(405, "method not allowed", detail=allow, headers={"Allow": allow})
        if head.path not in PUBLIC_PATHS and not self._authorised(head):
            raise HttpError(
                401, "unauthorized", field="Authorization", headers={"WWW-Authenticate": "Bearer"}
            )
        if "transfer-encoding" in head.headers:
            # Chunked bodies would need a second parser; every client can send a length.
            raise HttpError(
                411, "send Content-Length, not Transfer-Encoding", field="Content-Length"
            )
        length = head.content_length or 0
        if length > MAX_BODY:
            raise HttpError(413, f"body over {MAX_BODY} bytes", field="Content-Length")
        if head.method == "POST" and head.content_length is None:
            raise HttpError(411, "Content-Length required", field="Content-Length")
        return length

    async def respond(self, head: RequestHead, body: bytes) -> Response:
        """The answer to a request that passed :meth:`check_head`."""
        if head.path == "/v1/health":
            return Response.json(200, self.health())
        if head.path == "/metrics":
            text = self._metrics().encode()
            return Response(status=200, body=text, content_type="text/plain; version=0.0.4")
        return Response.json(200, await self.push(body))

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "providers": [p.value for p in self._providers()],
            "kamailio_connected": self._kamailio_connected(),
        }

    async def push(self, body: bytes) -> dict[str, Any]:
        msg = push_message(body, self._clock())
        # Before the token, as the dispatcher does: an unconfigured provider says just that.
        self._check_provider(msg.get("provider"))
        try:
            build_request(msg, self._defaults)
        except BadPush as exc:
            raise HttpError(400, exc.reason, field=exc.field) from exc
        result = await self._run(msg)
        return {k: result.get(k) for k in ("id", "verdict", "status", "reason", "attempts", "ms")}

    async def _run(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def sink(result: dict[str, Any]) -> None:
            if not done.done():
                done.set_result(result)

        self._submit(msg, sink)
        # shield: a client that hangs up must not cancel the push (the dispatcher owns it).
        return await asyncio.shield(done)

    def _check_provider(self, raw: object) -> None:
        if not isinstance(raw, str):
            return  # build_request names the problem
        try:
            name, _sandbox = pn_params.normalise_provider(raw)
        except pn_params.PnError:
            return
        if ProviderName(name) not in self._providers():
            raise HttpError(422, f"provider {name} not configured", field="provider")

    def _authorised(self, head: RequestHead) -> bool:
        scheme, _, given = head.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(given.strip().encode(), self._token.reveal().encode())


# -- the network edge ----------------------------------------------------------------------


class HttpApi:
    """Listens on ``host:port`` and answers one request per connection."""

    def __init__(self, handler: ApiHandler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=MAX_HEAD
        )
        # Port 0 (tests) means "any free port": report the one we got.
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("HTTP API listening on %s", self.address)

    def stop_listening(self) -> None:
        """No new connections; requests already in progress carry on."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace: float = 1.0) -> None:
        """Stop listening, give running requests ``grace`` s to answer, cancel the rest."""
        self.stop_listening()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            await _send(writer, HttpError(503, "too many connections").response())
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        head: RequestHead | None = None
        unread = True  # the client may still be sending: see _discard_rest
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    head = parse_head(await reader.readuntil(b"\r\n\r\n"))
                    length = self.handler.check_head(head)
                    body = await _read_body(reader, writer, head, length)
            except TimeoutError as exc:
                raise HttpError(408, "request not received in time") from exc
            except asyncio.LimitOverrunError as exc:
                raise HttpError(431, f"request head over {MAX_HEAD} bytes") from exc
            unread = False
            response = await self.handler.respond(head, body)
        except HttpError as exc:
            response = exc.response()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()  # the client went away; nobody to answer
            return
        await _send(writer, response, linger=reader if unread else None)
        level = logging.INFO if response.status == 401 else logging.DEBUG
        what = f"{head.method} {head.path[:200]}" if head else "-"
        ms = (time.monotonic() - started) * 1000
        peer = writer.get_extra_info("peername")
        log.log(level, "api %s %s -> %d %.1fms", peer, what, response.status, ms)


async def _read_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead, length: int
) -> bytes:
    if not length:
        return b""
    if head.headers.get("expect", "").lower() == "100-continue":
        # curl waits (1 s) for this before sending bodies over 1 KiB.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return await reader.readexactly(length)


async def _send(
    writer: asyncio.StreamWriter, response: Response, linger: asyncio.StreamReader | None = None
) -> None:
    with contextlib.suppress(ConnectionError, TimeoutError):
        writer.write(response.encode())
        async with asyncio.timeout(READ_TIMEOUT):
            await writer.drain()
        if linger is not None:
            await _discard_rest(writer, linger)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _discard_rest(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
    """After an early error: half-close, then swallow what the client still sends.

    Closing with unread bytes in the socket makes the kernel send RST, and the client may
    then lose the error response (the 413 for a body we refused to read) before reading it.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(1.0):
            budget = 1024 * 1024
            while budget > 0 and (chunk := await reader.read(65536)):
                budget -= len(chunk)
