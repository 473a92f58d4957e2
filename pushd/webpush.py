"""Web Push provider (RFC 8030 delivery, RFC 8292 VAPID) via pywebpush's async API.

RFC 8599 §12 makes a webpush binding's pn-prid the push subscription URI and defines no
message-encryption keys, so the push carries no payload: RFC 8030 allows a push without
one, unencrypted. The browser's service worker wakes on the bare push and re-registers;
the call itself arrives over SIP. ``PushRequest.data`` (call-id, caller) is therefore
not sent.

Each attempt is one POST to the subscription URI with ``TTL`` = seconds left to the
push's deadline (the hold timeout for a call), ``Urgency: high`` for calls and call
notices, and a VAPID ``Authorization`` (ES256 JWT, aud = the subscription's origin).
pywebpush's :class:`~pywebpush.WebPusher` builds the request; its ``send_async`` runs it
on our aiohttp session (one connection pool, our CA bundle, our timeout), so the event
loop never blocks. The dispatcher owns retries.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
import urllib.parse
from pathlib import Path

import aiohttp
from py_vapid import Vapid02
from pywebpush import WebPusher

from pushd.logs import short_token
from pushd.model import ProviderName, PushKind, PushRequest, PushResult, Verdict
from pushd.provider_settings import WebpushSettings
from pushd.retry import parse_retry_after
from pushd.webpush_errors import classify_webpush
from pushd.webpush_keys import load_private_key

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 2_419_200
"""Four weeks: what push services keep at most (a call push is seconds)."""
MIN_TIMEOUT = 1.0
JWT_LIFETIME = 12 * 3600
"""RFC 8292 §2: exp at most 24 h ahead; a token is reused for this long per origin."""
JWT_RENEW_BEFORE = 3600
"""A cached token is replaced this long before it expires."""


# --- pure helpers --------------------------------------------------------------------------


def ttl_seconds(deadline: float, now: float) -> int:
    """RFC 8030 TTL for a push useless after ``deadline``: whole seconds, 0..4 weeks."""
    return max(0, min(MAX_TTL_SECONDS, math.floor(deadline - now)))


def urgency(kind: PushKind) -> str:
    """RFC 8030 §5.3 Urgency: a call (and what ends one) must wake the device now."""
    if kind in (PushKind.CALL, PushKind.CANCEL, PushKind.MESSAGE):
        return "high"
    return "normal"


def audience(endpoint: str) -> str:
    """RFC 8292 §2 ``aud``: the origin of the push resource."""
    parts = urllib.parse.urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def for_log(endpoint: str) -> str:
    """The subscription URI's origin and a shortened path: the path is the capability."""
    path = urllib.parse.urlsplit(endpoint).path
    return f"{audience(endpoint)}{short_token(path, 12)}"


# --- the provider --------------------------------------------------------------------------


class WebpushProvider:
    """Sends empty Web Push messages; ``PushRequest.token`` is the subscription URI."""

    name = ProviderName.WEBPUSH

    def __init__(self, settings: WebpushSettings) -> None:
        self._settings = settings
        key = load_private_key(Path(settings.vapid_private_key_file).read_bytes())
        self._vapid = Vapid02(private_key=key)
        self._tokens: dict[str, tuple[float, dict[str, str]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx = ssl.create_default_context(
                cafile=str(self._settings.ca_file) if self._settings.ca_file else None
            )
            connector = aiohttp.TCPConnector(ssl=ctx, limit=self._settings.max_connections)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def vapid_headers(self, endpoint: str, now: float) -> dict[str, str]:
        """``Authorization: vapid t=<JWT>,k=<key>`` for ``endpoint``'s origin, cached."""
        aud = audience(endpoint)
        cached = self._tokens.get(aud)
        if cached is not None and cached[0] - JWT_RENEW_BEFORE > now:
            return cached[1]
        exp = int(now) + JWT_LIFETIME
        signed = self._vapid.sign({"aud": aud, "exp": exp, "sub": self._settings.subject})
        headers = {str(k): str(v) for k, v in signed.items()}
        self._tokens[aud] = (float(exp), headers)
        return headers

    async def send(self, request: PushRequest) -> PushResult:
        if self._closed:
            return PushResult(verdict=Verdict.GIVE_UP, reason="webpush provider closed")
        now = time.time()
        timeout = max(MIN_TIMEOUT, min(self._settings.timeout, request.deadline - now))
        headers = {**self.vapid_headers(request.token, now), "Urgency": urgency(request.kind)}
        pusher = WebPusher({"endpoint": request.token}, aiohttp_session=self._client())
        try:
            response = await pusher.send_async(
                None,
                headers,
                ttl=ttl_seconds(request.deadline, now),
                timeout=aiohttp.ClientTimeout(total=timeout),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("webpush to %s: no answer: %r", for_log(request.token), exc)
            outcome = classify_webpush(None, None)
            return PushResult(verdict=outcome.verdict, reason=f"no answer: {type(exc).__name__}")
        assert isinstance(response, aiohttp.ClientResponse)  # only curl=True gives a str
        retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        outcome = classify_webpush(response.status, retry_after)
        log.debug(
            "webpush to %s: %s %s",
            for_log(request.token),
            response.status,
            outcome.reason or "",
        )
        return outcome.result(response.status, response.headers.get("Location"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session is not None:
            await self._session.close()
            # Let the connector's transports finish closing before the loop goes away.
            await asyncio.sleep(0)
