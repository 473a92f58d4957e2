"""FCM HTTP v1 provider: one high-priority data message per attempt, via google-auth.

google-auth and requests are synchronous, so every send runs in a small bounded thread
pool; the event loop never waits on a socket. The dispatcher owns retries and backoff:
``send`` makes exactly one attempt (plus one replay after an access-token refresh, which
is part of authenticating, not a retry).

Threads share one Credentials and one requests Session. The Session's urllib3 pool is
thread-safe; the credentials' refresh is not coordinated by google-auth, so we do it
under a lock: without it N cold workers fetch N access tokens at once.

Each send does what ``AuthorizedSession.request`` does, in two documented steps:
google-auth's ``credentials.before_request`` adds the bearer token to a request prepared
once per URL, and the session's ``send`` sends it (see :meth:`FcmProvider._post`).
AuthorizedSession's own 401 handling is therefore not in the path (and is off,
``refresh_status_codes=()``): FCM uses 401 both for a stale access token (plain
UNAUTHENTICATED, worth one refresh, done here) and for THIRD_PARTY_AUTH_ERROR (bad APNs
credentials in Firebase, where refreshing twice per push would only hammer the token
endpoint).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

from pushd.fcm_errors import classify_fcm, error_code, token_endpoint_refused
from pushd.logs import short_token
from pushd.model import ProviderName, PushRequest, PushResult, Verdict
from pushd.provider_settings import FcmSettings
from pushd.retry import parse_retry_after

log = logging.getLogger(__name__)

SCOPE_FCM = "https://www.googleapis.com/auth/firebase.messaging"
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
MAX_TTL_SECONDS = 2_419_200  # FCM's ceiling (4 weeks)
MIN_TIMEOUT = 1.0
"""Floor for the HTTP timeout: a push whose deadline is (nearly) past still goes out with
ttl 0s (deliver now or drop), and needs a realistic chance to reach Google."""


# --- pure helpers --------------------------------------------------------------------------


def ttl_seconds(deadline: float, now: float) -> int:
    """FCM ttl for a push useless after ``deadline``: rounded down, within 0..4 weeks."""
    return max(0, min(MAX_TTL_SECONDS, math.floor(deadline - now)))


def build_message(request: PushRequest, now: float) -> dict[str, Any]:
    """The ``messages:send`` body: a data-only message, so the app's own code wakes up."""
    data = {key: str(value) for key, value in request.data.items()}
    data["kind"] = request.kind.value
    android: dict[str, str] = {
        "priority": "HIGH",  # NORMAL messages may wait for Doze maintenance windows
        "ttl": f"{ttl_seconds(request.deadline, now)}s",
    }
    if request.collapse_id:
        android["collapse_key"] = request.collapse_id
    return {"message": {"token": request.token, "data": data, "android": android}}


def send_url(base_url: str, project_id: str) -> str:
    project = urllib.parse.quote(project_id, safe="")
    return f"{base_url.rstrip('/')}/v1/projects/{project}/messages:send"


def load_credentials(info: dict[str, Any], token_uri: str | None) -> Any:
    """Service-account credentials that only ever talk to ``token_uri``."""
    if token_uri:
        info = {**info, "token_uri": token_uri}
    # google-auth is only partly annotated: the no-untyped-call ignores below are for it.
    creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        info, scopes=[SCOPE_FCM]
    )
    # Recent google-auth (seen in 2.62) starts a background "regional access boundary" lookup to
    # iamcredentials.googleapis.com after each refresh; we need nothing from it, and
    # offline (or behind an egress allow-list) it only produces retries and warnings.
    if hasattr(creds, "_is_regional_access_boundary_lookup_required"):
        creds._is_regional_access_boundary_lookup_required = lambda: False
    return creds


# --- the provider --------------------------------------------------------------------------


class FcmProvider:
    """Sends FCM v1 data messages; ``PushRequest.topic`` is the Firebase project ID."""

    name = ProviderName.FCM

    def __init__(self, settings: FcmSettings) -> None:
        self._settings = settings
        info = json.loads(Path(settings.service_account_file).read_text())
        self._credentials = load_credentials(info, settings.token_uri)
        self._token_session = requests.Session()
        self._auth_request = google.auth.transport.requests.Request(self._token_session)
        self._session = google.auth.transport.requests.AuthorizedSession(  # type: ignore[no-untyped-call]
            self._credentials, refresh_status_codes=(), auth_request=self._auth_request
        )
        # One pooled connection per worker, and no silent urllib3 retries: one attempt.
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=settings.max_workers, max_retries=0
        )
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        _read_environment_once(self._session, settings.base_url)
        self._refresh_lock = threading.Lock()
        self._templates: dict[str, requests.PreparedRequest] = {}
        self._executor = ThreadPoolExecutor(settings.max_workers, thread_name_prefix="pushd-fcm")
        self._closed = False

    async def send(self, request: PushRequest) -> PushResult:
        if self._closed:
            return PushResult(verdict=Verdict.GIVE_UP, reason="FCM provider closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._send_blocking, request)
        except RuntimeError:  # executor shut down by a concurrent close()
            return PushResult(verdict=Verdict.GIVE_UP, reason="FCM provider closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Waiting for in-flight sends is bounded by their HTTP timeout; do it off-loop.
        shutdown = functools.partial(self._executor.shutdown, wait=True, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, shutdown)
        self._session.close()  # type: ignore[no-untyped-call]
        self._token_session.close()

    # worker-thread side

    def _send_blocking(self, request: PushRequest) -> PushResult:
        now = time.time()
        timeout = max(MIN_TIMEOUT, min(self._settings.timeout, request.deadline - now))
        url = send_url(self._settings.base_url, request.topic)
        body = _JSON.encode(build_message(request, now)).encode()
        try:
            self._ensure_token(timeout)
            response = self._post(url, body, timeout)
            if _is_stale_token(response):
                # Revoked or expired early: refresh once and replay (google-auth's rule).
                self._refresh_after_401(_sent_bearer(response), timeout)
                response = self._post(url, body, timeout)
        except google.auth.exceptions.RefreshError as exc:
            return self._token_refused(exc)
        except (requests.RequestException, google.auth.exceptions.TransportError) as exc:
            log.debug("FCM send to %s: no answer: %r", short_token(request.token), exc)
            return PushResult(verdict=Verdict.RETRY, reason=f"no answer: {type(exc).__name__}")
        except TimeoutError:
            return PushResult(verdict=Verdict.RETRY, reason="token refresh busy")
        return self._result(request, response)

    def _post(self, url: str, body: bytes, timeout: float) -> requests.Response:
        """What ``AuthorizedSession.post`` does (google-auth's ``before_request`` puts the
        bearer token in, then requests sends), minus re-merging the session's settings
        into every request: the request is prepared once per URL and copied. That merging
        was ~20 % of a worker's CPU per push."""
        template = self._templates.get(url)
        if template is None:
            template = self._session.prepare_request(
                requests.Request("POST", url, headers={"Content-Type": "application/json"})
            )
            self._templates[url] = template  # a race only builds an equal one twice
        prepared = template.copy()
        prepared.prepare_body(body, None)
        self._credentials.before_request(self._auth_request, "POST", url, prepared.headers)
        # send() applies the session's proxies, verify and cert as Session.request would.
        return self._session.send(prepared, timeout=timeout)

    def _ensure_token(self, timeout: float) -> None:
        """Fetch an access token if needed, one thread at a time."""
        if self._credentials.valid:
            return
        with self._locked(timeout):
            if not self._credentials.valid:  # another worker may have just refreshed
                self._refresh(timeout)

    def _refresh_after_401(self, rejected: str | None, timeout: float) -> None:
        with self._locked(timeout):
            # Skip if another worker replaced the rejected token while we waited.
            if self._credentials.token == rejected or not self._credentials.valid:
                self._refresh(timeout)

    def _refresh(self, timeout: float) -> None:
        self._credentials.refresh(functools.partial(self._auth_request, timeout=timeout))
        log.debug("FCM access token refreshed: %s", short_token(self._credentials.token or ""))

    def _locked(self, timeout: float) -> _TimedLock:
        return _TimedLock(self._refresh_lock, timeout)

    def _result(self, request: PushRequest, response: requests.Response) -> PushResult:
        body = _json_body(response)
        retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        outcome = classify_fcm(response.status_code, body, retry_after)
        name = body.get("name") if body else None
        log.debug(
            "FCM send to %s: %s %s",
            short_token(request.token),
            response.status_code,
            outcome.reason or "",
        )
        return outcome.result(response.status_code, name if isinstance(name, str) else None)

    def _token_refused(self, exc: google.auth.exceptions.RefreshError) -> PushResult:
        # google-auth marks 5xx/429 from the token endpoint retryable (after its own retries).
        if getattr(exc, "retryable", False):
            return PushResult(verdict=Verdict.RETRY, reason=f"token endpoint: {exc}"[:300])
        # The dispatcher logs the hint once per (provider, reason), at ERROR.
        outcome = token_endpoint_refused(f"token endpoint: {exc}"[:300])
        return PushResult(verdict=outcome.verdict, reason=outcome.reason, hint=outcome.hint)


def _read_environment_once(session: requests.Session, url: str) -> None:
    """Give ``session`` what requests would read from the environment, read once, now.

    With ``trust_env`` on, requests walks ``os.environ`` for proxy variables twice and
    looks for ``~/.netrc`` on *every* request: about 30 % of a busy FCM worker's CPU. Off,
    the proxy for ``url`` (``HTTPS_PROXY``/``ALL_PROXY``, minus ``NO_PROXY``) and a CA
    bundle from ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` are taken here, at start, so an
    operator's egress proxy still works; changing them needs a restart. ``~/.netrc`` is
    no longer read, which is right: its Basic auth would replace our bearer token.
    """
    session.trust_env = False
    session.proxies = dict(requests.utils.get_environ_proxies(url))
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca_bundle:
        session.verify = ca_bundle


class _TimedLock:
    """``with lock`` that gives up after ``timeout`` (a hung token fetch must not pile up)."""

    def __init__(self, lock: threading.Lock, timeout: float) -> None:
        self._lock = lock
        self._timeout = timeout

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=self._timeout):
            raise TimeoutError("FCM token refresh lock")

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _json_body(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _is_stale_token(response: requests.Response) -> bool:
    """A plain 401 (no FCM errorCode), i.e. the access token itself was refused."""
    return response.status_code == 401 and error_code(401, _json_body(response)) in (
        "UNAUTHENTICATED",
        "HTTP 401",
    )


def _sent_bearer(response: requests.Response) -> str | None:
    header = response.request.headers.get("Authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else None
