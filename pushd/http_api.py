"""pushd's HTTP API: push requests from other SIP servers and tools, health, metrics.

The contract is ``docs/pushd-api.openapi.yaml``; the server is aiohttp.web. The parts:

* :func:`push_message` turns a ``POST /v1/push`` body into the channel's ``push``
  message (``pushgate.wire``) that the :class:`~pushd.dispatch.Dispatcher` takes from
  Kamailio, or an :class:`HttpError` naming the field (pure);
* :class:`ApiHandler` decides the answers: authorisation, limits, push, health, metrics;
* :class:`HttpApi` runs them on aiohttp (listen, stop gracefully).

Errors::

    HttpError (status, error, field?, detail?)  -> a JSON error response, never a traceback

Requests aiohttp cannot parse as HTTP (a bad request line, two Content-Length headers)
are answered by aiohttp itself: 400 with a plain-text body.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web

from pushd.config import Secret
from pushd.dispatch import BadPush, RequestDefaults, ResultSink, build_request
from pushd.metrics import CONTENT_TYPE
from pushd.model import ProviderName
from pushgate import pn_params, wire

log = logging.getLogger("pushd.api")

MAX_BODY = 16 * 1024
"""Bytes; a push is a few hundred, so anything near this is a mistake or an attack."""
MAX_HEAD = 8 * 1024
"""Bytes of the request line, and of each header line."""
MAX_TTL = 600.0
"""Seconds a push may live; the HTTP request is held open until its verdict."""
MAX_CONNECTIONS = 256
"""Requests at once; more are answered 503 at once (pushes are bounded separately)."""
READ_TIMEOUT = 10.0
"""Seconds to receive the request head, and then the body: a slow client must not hold a
connection for long."""
LINGER = 1.0
"""Seconds to swallow a body refused unread (413), so the client reads the answer
instead of a reset connection."""
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

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.error}
        if self.field is not None:
            body["field"] = self.field
        if self.detail is not None:
            body["detail"] = self.detail
        return json_response(body, status=self.status, headers=self.headers)


def json_response(
    value: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


# -- pure parts -----------------------------------------------------------------------------


def push_message(body: bytes, now: float) -> dict[str, Any]:
    """Validate a ``POST /v1/push`` body into the channel's ``push`` message.

    The API's own rules are checked here (envelope, id, ttl vs deadline), the message's
    shape by ``wire.parse_push``; what the RFC 8599 fields mean is left to
    ``build_request``, so the API and Kamailio's pushes agree.
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
    fields: dict[str, Any] = {k: v for k, v in value.items() if k != "ttl"}
    fields["id"] = _push_id(value.get("id"))
    fields["deadline"] = _deadline(value, now)
    try:
        push = wire.parse_push(fields)
    except wire.WireError as exc:
        raise HttpError(400, exc.reason, field=exc.field) from exc
    message = push.message()
    # What the caller did not give stays out (the dispatcher reads absent as empty).
    return {k: v for k, v in message.items() if k in value or k in ("type", "id", "deadline")}


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
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiHandler:
    """Decides every answer; the routes and limits around them are :meth:`app`'s."""

    def __init__(
        self,
        *,
        token: Secret,
        submit: Submit,
        providers: Callable[[], Collection[ProviderName]],
        defaults: RequestDefaults,
        kamailio_connected: Callable[[], bool],
        metrics: Callable[[], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token = token
        self._submit = submit
        self._providers = providers
        self._defaults = defaults
        self._kamailio_connected = kamailio_connected
        self._metrics = metrics
        self._clock = clock
        self._requests = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.router.add_post("/v1/push", self._push)
        app.router.add_get("/v1/health", self._health, allow_head=False)
        app.router.add_get("/metrics", self._serve_metrics, allow_head=False)
        return app

    # -- what every request goes through, in this order --

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        self._requests += 1
        try:
            if self._requests > MAX_CONNECTIONS:
                raise HttpError(503, "too many connections")
            self.check(request)
            response = await handler(request)
        except HttpError as exc:
            response = exc.response()
        finally:
            self._requests -= 1
        response.headers["Cache-Control"] = "no-store"
        response.force_close()  # one request per connection, as the contract says
        level = logging.INFO if response.status == 401 else logging.DEBUG
        if log.isEnabledFor(level):
            ms = (time.monotonic() - started) * 1000
            what = f"{request.method} {request.path[:200]}"
            log.log(level, "api %s %s -> %d %.1fms", request.remote, what, response.status, ms)
        return response

    def check(self, request: web.Request) -> None:
        """Route, authorise and size-check before any body is read."""
        refused = request.match_info.http_exception
        if isinstance(refused, web.HTTPMethodNotAllowed):
            allow = ", ".join(sorted(refused.allowed_methods))
            raise HttpError(405, "method not allowed", detail=allow, headers={"Allow": allow})
        if refused is not None:
            raise HttpError(404, "not found", detail=request.path[:200])
        if request.path not in PUBLIC_PATHS and not self.authorised(
            request.headers.get("Authorization", "")
        ):
            raise HttpError(
                401, "unauthorized", field="Authorization", headers={"WWW-Authenticate": "Bearer"}
            )
        if "Transfer-Encoding" in request.headers:
            # Chunked bodies: every client can send a length, and a length is checked
            # against MAX_BODY before a byte of the body is read.
            raise HttpError(
                411, "send Content-Length, not Transfer-Encoding", field="Content-Length"
            )
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise HttpError(413, f"body over {MAX_BODY} bytes", field="Content-Length")
        if request.method == "POST" and length is None:
            raise HttpError(411, "Content-Length required", field="Content-Length")

    def authorised(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(given.strip().encode(), self._token.reveal().encode())

    # -- the routes --

    async def _push(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                body = await request.read()
        except TimeoutError as exc:
            raise HttpError(408, "request not received in time") from exc
        return json_response(await self.push(body))

    async def _health(self, request: web.Request) -> web.Response:
        return json_response(self.health())

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._metrics())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

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


# -- the network edge ----------------------------------------------------------------------


class HttpApi:
    """The API on ``host:port`` (aiohttp's runner and TCP site)."""

    def __init__(self, handler: ApiHandler, host: str, port: int, *, grace: float = 1.0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._runner = web.AppRunner(
            handler.app(),
            access_log=None,  # the guard logs each request (401s at INFO)
            shutdown_timeout=grace,
            lingering_time=LINGER,
            # Also the time a new connection has to send its request head: a silent or
            # slow client is disconnected, so it cannot hold a connection for long.
            keepalive_timeout=READ_TIMEOUT,
            max_line_size=MAX_HEAD,
            max_field_size=MAX_HEAD,
        )
        self._site: web.TCPSite | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await self._site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        # Port 0 (tests) means "any free port": report the one we got.
        self.port = self._runner.addresses[0][1]
        log.info("HTTP API listening on %s", self.address)

    async def stop_listening(self) -> None:
        """No new connections; requests already in progress carry on."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def stop(self) -> None:
        """Stop listening, give running requests the grace to answer, cancel the rest."""
        await self.stop_listening()
        await self._runner.cleanup()
