"""APNs provider: one push attempt per call, classified into a :class:`PushResult`.

The layers below, each with one concern:

* :mod:`pushd.apns_message`: what to send for a push kind (payload, topic, push type,
  priority, expiration);
* :mod:`pushd.apns_auth`: the shared provider token (JWT), keys, certificates, TLS;
* :mod:`pushd.apns_pool` and :mod:`pushd.apns_connection`: HTTP/2 connections over h2
  (stream slots, flow control, GOAWAY, RST_STREAM, keepalive PING, idle close);
* :mod:`pushd.apns_errors`: what an answer means (verdicts and operator hints).

Here: settings, one attempt (the dispatcher owns retries, backoff and the environment
mix-up check), and one log line per outcome. Every failure becomes a result, never an
exception. Device tokens are logged only through :func:`pushd.logs.short_token`; JWTs and
key material never.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from pushd.apns_auth import ProviderToken, certificate_topic, load_apns_key, tls_context
from pushd.apns_connection import Answer, ApnsNoAnswer
from pushd.apns_errors import classify_apns
from pushd.apns_message import ApnsMessage, build_message
from pushd.apns_pool import ApnsPool
from pushd.logs import short_token
from pushd.model import Environment, ProviderName, PushRequest, PushResult, Verdict
from pushd.provider_settings import ApnsSettings
from pushd.retry import parse_retry_after

log = logging.getLogger("pushd.apns")

APPLE_HOSTS = {
    Environment.PRODUCTION: "api.push.apple.com",
    Environment.SANDBOX: "api.sandbox.push.apple.com",
}
CLOSE_GRACE = 1.0
"""Seconds close() waits for connections to finish their TLS shutdown."""


_LOG_LEVELS = {
    Verdict.DELIVERED: logging.DEBUG,
    Verdict.RETRY: logging.INFO,
    Verdict.DELETE_TOKEN: logging.INFO,
    Verdict.CONFIG_ERROR: logging.DEBUG,  # the dispatcher's once-only ERROR line has the hint
    Verdict.GIVE_UP: logging.WARNING,
}


class ApnsProvider:
    """The APNs :class:`~pushd.model.Provider`."""

    name = ProviderName.APNS

    def __init__(self, settings: ApnsSettings, *, clock: Callable[[], float] = time.time) -> None:
        """Check credentials now (fail at start, not at the first call); connect later."""
        self.settings = settings
        self._clock = clock
        self._pools: dict[Environment, ApnsPool] = {}
        self._token: ProviderToken | None = None
        if settings.auth == "token":
            assert settings.key_file and settings.key_id and settings.team_id
            key = load_apns_key(settings.key_file)
            self._token = ProviderToken(key, settings.key_id, settings.team_id, clock=clock)
        else:
            assert settings.cert_file is not None
            certificate_topic(settings.cert_file)  # raises now if it is no certificate
        # Raises now if the CA or the client certificate is unusable.
        self._tls = tls_context(
            settings.ca_file, settings.cert_file if settings.auth == "certificate" else None
        )

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
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
        # TLS shutdown takes a few loop turns; wait (briefly) until every connection is
        # gone, so a loop closed right after us leaves no half-open sockets behind.
        deadline = time.monotonic() + CLOSE_GRACE
        while any(p.connections for p in pools.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _attempt(
        self, request: PushRequest, message: ApnsMessage, timeout: float
    ) -> PushResult:
        headers = message.headers()
        generation = 0
        if self._token is not None:
            headers.append((b"authorization", self._token.header_bytes()))
            generation = self._token.generation
        path = b"/3/device/" + request.token.encode()
        pool = self._pool(request.environment)
        try:
            # The wait for a connection is bounded by its connect timeout, the wait for the
            # answer by the connection's per-stream timer.
            connection = await pool.connection()
            answer = await connection.request(path, headers, message.body, timeout)
        except ApnsNoAnswer as exc:
            return self._no_answer(request, message, str(exc))
        except OSError as exc:
            return self._no_answer(request, message, f"{type(exc).__name__}: {exc}")
        return self._answered(request, message, answer, generation)

    def _answered(
        self, request: PushRequest, message: ApnsMessage, answer: Answer, generation: int
    ) -> PushResult:
        reason = _error_reason(answer.body) if answer.status != 200 else None
        retry_after = parse_retry_after(answer.retry_after, self._clock())
        verdict = classify_apns(answer.status, reason, retry_after, topic=message.topic)
        if verdict.new_jwt and self._token is not None:
            self._token.expired(generation)
        delivered = verdict.verdict is Verdict.DELIVERED
        result = verdict.result(answer.status, answer.apns_id if delivered else None)
        return self._finish(request, message, result)

    def _no_answer(self, request: PushRequest, message: ApnsMessage, why: str) -> PushResult:
        verdict = classify_apns(None, why)
        # No hint: "no answer" says it all, and a RETRY is never a config error.
        result = PushResult(verdict=verdict.verdict, reason=verdict.reason)
        return self._finish(request, message, result)

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

    def _pool(self, environment: Environment) -> ApnsPool:
        pool = self._pools.get(environment)
        if pool is None:
            s = self.settings
            pool = self._pools[environment] = ApnsPool(
                host=s.host or APPLE_HOSTS[environment],
                port=s.port,
                authority=APPLE_HOSTS[environment],
                tls=self._tls,
                max_connections=s.max_connections,
                connect_timeout=s.timeout,
                keepalive=s.keepalive,
                idle_timeout=s.idle_timeout,
            )
        return pool


def _error_reason(body: bytes) -> str | None:
    """``reason`` from an APNs error body (JSON); None when the body is missing or is not
    APNs' JSON (a proxy's HTML page, say)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) and reason else None
