"""A fake Google OAuth token endpoint and FCM HTTP v1 endpoint on one loopback HTTP server.

It is strict where FCM is strict (RS256 assertion signed by a trusted service account,
bearer tokens, message fields, payload size, project) and answers with Google's real
error body shapes, so pushd's classification is tested against what production sends.

In-process use::

    with FakeFcm() as fake:
        account = fake.make_service_account(tmp_path)   # token_uri -> this fake, trusted
        fake.script("tok-1", 404, "UNREGISTERED")
        ...
        [record] = fake.wait_for_messages(1, timeout=5)

As a process (for end-to-end tests)::

    python -m testkit.fake_fcm --port 0 --events ev.jsonl --control ctl.json \\
        [--service-account sa.json]

prints ``READY <port>`` once listening and appends one JSON line per message to the
events file. ``--service-account`` is trusted if it exists, else created with its
``token_uri`` pointing here (default: ``fcm-service-account.json`` beside the events
file). The control file, ``{"<token>" | "*": {"status": 404, "error_code":
"UNREGISTERED", "times": 1, "retry_after": 5}}``, is re-read whenever its mtime changes;
replace it atomically (write + rename). SIGTERM or SIGINT exits cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, cast

import jwt

from testkit.service_account import (
    SCOPE_FCM,
    FakeServiceAccount,
    load_service_account,
    write_service_account,
)

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
MAX_TTL_SECONDS = 2_419_200
MAX_PAYLOAD_BYTES = 4096

# FCM v1 ErrorCode values: only these travel in an FcmError detail.
FCM_ERROR_CODES = frozenset(
    {
        "UNSPECIFIED_ERROR",
        "INVALID_ARGUMENT",
        "UNREGISTERED",
        "SENDER_ID_MISMATCH",
        "QUOTA_EXCEEDED",
        "UNAVAILABLE",
        "INTERNAL",
        "THIRD_PARTY_AUTH_ERROR",
    }
)

# error code -> (Google status, message) as production FCM words them.
ERROR_TEXT: dict[str, tuple[str, str]] = {
    "UNREGISTERED": ("NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "SENDER_ID_MISMATCH": ("PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'.",
    ),
    "UNAVAILABLE": ("UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": ("INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": ("UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "UNSPECIFIED_ERROR": ("UNKNOWN", "Unknown error."),
    "UNAUTHENTICATED": (
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
    ),
    "PERMISSION_DENIED": ("PERMISSION_DENIED", "The caller does not have permission"),
}

_MESSAGE_FIELDS = frozenset(
    {
        "name",
        "token",
        "topic",
        "condition",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
    }
)
_ANDROID_FIELDS = frozenset(
    {
        "collapse_key",
        "priority",
        "ttl",
        "restricted_package_name",
        "data",
        "notification",
        "fcm_options",
        "direct_boot_ok",
    }
)
_RESERVED_DATA_KEYS = frozenset({"from", "message_type", "notification"})
_DURATION = re.compile(r"^(\d+)(\.\d{1,9})?s$")
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")


@dataclass(frozen=True, kw_only=True)
class FcmRecord:
    """One ``messages:send`` request as the fake saw and answered it."""

    time: float
    project: str
    token: str | None
    data: dict[str, Any] | None
    priority: str | None
    ttl: str | None
    collapse_key: str | None
    validate_only: bool
    status: int
    error_code: str | None
    """FCM errorCode (or Google status for plain errors); None on success."""
    bearer: str | None
    message_id: str | None = None


@dataclass
class _Script:
    status: int
    error_code: str
    remaining: int | None
    retry_after: float | None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Problem:
    """Why a message is rejected before delivery."""

    code: str
    message: str
    field: str | None = None


@dataclass
class _Parsed:
    """Best-effort fields of a send request, for the record even when it is rejected."""

    token: str | None = None
    data: dict[str, Any] | None = None
    priority: str | None = None
    ttl: str | None = None
    collapse_key: str | None = None
    validate_only: bool = False


def google_error(
    status: int, code: str, message: str | None = None, field_name: str | None = None
) -> dict[str, Any]:
    """A Google API error body; FCM codes get an FcmError detail, field errors a BadRequest."""
    google_status, default_message = ERROR_TEXT.get(code, (code, code))
    text = message or default_message
    details: list[dict[str, Any]] = []
    if code in FCM_ERROR_CODES:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": code})
    if field_name is not None:
        violation = {"field": field_name, "description": text}
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": [violation]})
    error: dict[str, Any] = {"code": status, "message": text, "status": google_status}
    if details:
        error["details"] = details
    return {"error": error}


def oauth_error(error: str, description: str) -> _Reply:
    return _Reply(400, {"error": error, "error_description": description})


# --- message validation (pure) ---------------------------------------------------------


def _parse_message(payload: Any) -> tuple[_Parsed, _Problem | None]:
    parsed = _Parsed()
    if not isinstance(payload, dict) or not isinstance(payload.get("message"), dict):
        return parsed, _Problem("INVALID_ARGUMENT", "Invalid JSON payload received.", "message")
    unknown = set(payload) - {"message", "validate_only"}
    if unknown:
        name = sorted(unknown)[0]
        return parsed, _unknown_field(name, "")
    parsed.validate_only = payload.get("validate_only") is True
    message = payload["message"]
    parsed.token = message.get("token") if isinstance(message.get("token"), str) else None
    data = message.get("data")
    parsed.data = data if isinstance(data, dict) else None
    android = message.get("android")
    if isinstance(android, dict):
        parsed.priority = android.get("priority")
        parsed.ttl = android.get("ttl")
        parsed.collapse_key = android.get("collapse_key")
    return parsed, _validate_message(message)


def _unknown_field(name: str, where: str) -> _Problem:
    text = (
        f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field."
    )
    return _Problem("INVALID_ARGUMENT", text, where or None)


def _validate_message(message: dict[str, Any]) -> _Problem | None:
    unknown = set(message) - _MESSAGE_FIELDS
    if unknown:
        return _unknown_field(sorted(unknown)[0], "message")
    if not any(message.get(k) for k in ("token", "topic", "condition")):
        return _Problem("INVALID_ARGUMENT", "Recipient of the message is not set.", "message")
    if "token" in message and not isinstance(message["token"], str):
        return _invalid_value("message.token", "TYPE_STRING", message["token"])
    return _validate_data(message.get("data")) or _validate_android(message.get("android"))


def _invalid_value(where: str, kind: str, value: Any) -> _Problem:
    return _Problem(
        "INVALID_ARGUMENT", f"Invalid value at '{where}' ({kind}), {json.dumps(value)}", where
    )


def _validate_data(data: Any) -> _Problem | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        return _invalid_value("message.data", "type.googleapis.com/google.protobuf.Map", data)
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            return _invalid_value(f"message.data[{index}].value", "TYPE_STRING", value)
        if key in _RESERVED_DATA_KEYS or key.startswith(("google.", "gcm.")):
            return _Problem("INVALID_ARGUMENT", f"Invalid data payload key: {key}", "message.data")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > MAX_PAYLOAD_BYTES:
        return _Problem("INVALID_ARGUMENT", "Android message is too big", "message")
    return None


def _validate_android(android: Any) -> _Problem | None:
    if android is None:
        return None
    if not isinstance(android, dict):
        return _invalid_value("message.android", "TYPE_MESSAGE", android)
    unknown = set(android) - _ANDROID_FIELDS
    if unknown:
        return _unknown_field(sorted(unknown)[0], "message.android")
    priority = android.get("priority")
    if priority is not None and priority not in ("NORMAL", "HIGH"):
        kind = "type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority"
        return _invalid_value("message.android.priority", kind, priority)
    ttl = android.get("ttl")
    if ttl is not None and not _valid_ttl(ttl):
        kind = "type.googleapis.com/google.protobuf.Duration"
        return _invalid_value("message.android.ttl", kind, ttl)
    return None


def _valid_ttl(ttl: Any) -> bool:
    match = _DURATION.match(ttl) if isinstance(ttl, str) else None
    return match is not None and float(ttl[:-1]) <= MAX_TTL_SECONDS


# --- the server --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeFcm

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); stay off the resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients keep connections alive, as they do with Google.
    protocol_version = "HTTP/1.1"
    server_version = "ESF"
    sys_version = ""
    timeout = 30  # idle keep-alive connections must not pin threads forever

    @property
    def fake(self) -> FakeFcm:
        return cast(_Server, self.server).fake

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; with Nagle on, the body waits for the
        # client's delayed ACK (~40 ms per request on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake._connection_opened(self.connection)

    def finish(self) -> None:
        self.fake._connection_closed(self.connection)
        super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = urllib.parse.urlsplit(self.path).path
        send = _SEND_PATH.match(path)
        if path == "/token":
            reply = self.fake._token_reply(raw.decode("utf-8", "replace"))
        elif send:
            project = urllib.parse.unquote(send.group(1))
            reply = self.fake._send_reply(project, self.headers.get("Authorization"), raw)
        else:
            reply = _Reply(404, google_error(404, "NOT_FOUND", f"Not found: {path}"))
        self._answer(reply)

    def _answer(self, reply: _Reply) -> None:
        body = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the records are the log; stderr noise hides test failures


class FakeFcm:
    """Fake OAuth + FCM v1 server on loopback; all public methods are thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        events_path: Path | None = None,
        control_path: Path | None = None,
        token_lifetime: int = 3600,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._token_lifetime = token_lifetime
        self._events_path = events_path
        self._control_path = control_path
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._accounts: dict[str, FakeServiceAccount] = {}
        self._tokens: dict[str, tuple[FakeServiceAccount, float]] = {}
        self._issued: list[str] = []
        self._records: list[FcmRecord] = []
        self._scripts: dict[str, _Script] = {}
        self._control_scripts: dict[str, _Script] = {}
        self._control_mtime: int | None = None
        self._force_401 = 0
        self._latency = 0.0
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._events: IO[str] | None = None

    # lifecycle

    def start(self) -> FakeFcm:
        server = _Server((self._host, self._requested_port), _Handler)
        server.fake = self
        if self._events_path is not None:
            self._events = self._events_path.open("a", encoding="utf-8")
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections, so clients see a dead server."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        if self._events is not None:
            self._events.close()
            self._events = None

    def __enter__(self) -> FakeFcm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeFcm is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for FcmSettings.base_url."""
        return f"http://{self._host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    # accounts and tokens

    def trust(self, account: FakeServiceAccount) -> None:
        """Accept token requests signed by ``account``."""
        with self._lock:
            self._accounts[account.client_email] = account

    def make_service_account(
        self,
        directory: Path,
        *,
        project_id: str = "pushgate-test",
        filename: str = "service-account.json",
    ) -> FakeServiceAccount:
        """Write a service-account file whose token_uri is this fake, and trust it."""
        account = write_service_account(
            directory, self.token_uri, project_id=project_id, filename=filename
        )
        self.trust(account)
        return account

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return len(self._issued)

    @property
    def issued_tokens(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def revoke_tokens(self) -> None:
        """Invalidate every access token issued so far (next send gets a plain 401)."""
        with self._lock:
            self._tokens.clear()

    # scripting

    def script(
        self,
        token: str,
        status: int,
        error_code: str,
        times: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer sends to ``token`` with this error ``times`` times (None: until unscripted)."""
        with self._lock:
            self._scripts[token] = _Script(status, error_code, times, retry_after)

    def unscript(self, token: str) -> None:
        with self._lock:
            self._scripts.pop(token, None)

    def force_unauthenticated(self, times: int = 1) -> None:
        """Answer the next ``times`` sends with a plain 401 and revoke the token they carried."""
        with self._lock:
            self._force_401 += times

    def set_latency(self, seconds: float) -> None:
        """Delay every send answer (to test timeouts and that callers do not block)."""
        with self._lock:
            self._latency = seconds

    # records

    @property
    def messages(self) -> list[FcmRecord]:
        with self._lock:
            return list(self._records)

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[FcmRecord]:
        """Block until at least ``n`` sends were recorded; return all of them."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._records) >= n, timeout):
                raise TimeoutError(f"saw {len(self._records)} FCM messages, wanted {n}")
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    # request handling (called from handler threads)

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _token_reply(self, form_text: str) -> _Reply:
        form = urllib.parse.parse_qs(form_text)
        grant = form.get("grant_type", [""])[0]
        if grant != JWT_BEARER_GRANT:
            return oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant}")
        assertion = form.get("assertion", [""])[0]
        if not assertion:
            return oauth_error("invalid_request", "Missing required parameter: assertion")
        with self._lock:
            accounts = dict(self._accounts)
        account_or_reply = _verify_assertion(assertion, accounts)
        if isinstance(account_or_reply, _Reply):
            return account_or_reply
        access_token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            expiry = time.time() + self._token_lifetime
            self._tokens[access_token] = (account_or_reply, expiry)
            self._issued.append(access_token)
        body = {
            "access_token": access_token,
            "expires_in": self._token_lifetime,
            "token_type": "Bearer",
        }
        return _Reply(200, body)

    def _send_reply(self, project: str, authorization: str | None, raw: bytes) -> _Reply:
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        parsed, problem = _parse_message(payload)
        with self._lock:
            latency = self._latency
        if latency:
            time.sleep(latency)
        bearer = (
            authorization[7:] if authorization and authorization[:7].lower() == "bearer " else None
        )
        self._maybe_reload_control()
        with self._lock:
            reply, code = self._decide(project, bearer, parsed, problem)
            message_id = reply.body.get("name") if reply.status == 200 else None
            record = FcmRecord(
                time=time.time(),
                project=project,
                token=parsed.token,
                data=parsed.data,
                priority=parsed.priority,
                ttl=parsed.ttl,
                collapse_key=parsed.collapse_key,
                validate_only=parsed.validate_only,
                status=reply.status,
                error_code=code,
                bearer=bearer,
                message_id=message_id,
            )
            self._records.append(record)
            self._write_event(record)
            self._changed.notify_all()
        return reply

    def _decide(
        self, project: str, bearer: str | None, parsed: _Parsed, problem: _Problem | None
    ) -> tuple[_Reply, str | None]:
        """The answer to one send, in FCM's order: auth, project, payload, token. Lock held."""
        auth = self._check_bearer(bearer)
        if auth is not None:
            return auth, "UNAUTHENTICATED"
        account = self._tokens[cast(str, bearer)][0]
        if project != account.project_id:
            return _Reply(403, google_error(403, "SENDER_ID_MISMATCH")), "SENDER_ID_MISMATCH"
        if problem is not None:
            body = google_error(400, problem.code, problem.message, problem.field)
            return _Reply(400, body), problem.code
        script = self._take_script(parsed.token)
        if script is not None:
            headers = {}
            if script.retry_after is not None:
                headers["Retry-After"] = str(math.ceil(script.retry_after))
            body = google_error(script.status, script.error_code)
            return _Reply(script.status, body, headers), script.error_code
        name = f"projects/{project}/messages/0:{secrets.randbelow(10**16)}%{secrets.token_hex(8)}"
        return _Reply(200, {"name": name}), None

    def _check_bearer(self, bearer: str | None) -> _Reply | None:
        """A 401 reply when the bearer token is missing, unknown, expired or forced bad."""
        headers = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}
        unauthenticated = _Reply(401, google_error(401, "UNAUTHENTICATED"), headers)
        if bearer is None:
            return unauthenticated
        if self._force_401 > 0:
            self._force_401 -= 1
            self._tokens.pop(bearer, None)  # a replay with the same token must fail too
            return unauthenticated
        issued = self._tokens.get(bearer)
        if issued is None or issued[1] < time.time():
            return unauthenticated
        return None

    def _take_script(self, token: str | None) -> _Script | None:
        if token is None:
            return None
        for table, key in (
            (self._scripts, token),
            (self._control_scripts, token),
            (self._control_scripts, "*"),
        ):
            script = table.get(key)
            if script is None:
                continue
            if script.remaining is not None:
                script.remaining -= 1
                if script.remaining <= 0:
                    del table[key]
            return script
        return None

    def _write_event(self, record: FcmRecord) -> None:
        if self._events is not None:
            self._events.write(json.dumps(asdict(record)) + "\n")
            self._events.flush()

    def _maybe_reload_control(self) -> None:
        if self._control_path is None:
            return
        try:
            mtime: int | None = self._control_path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._control_mtime:
            return
        scripts = _load_control(self._control_path) if mtime is not None else {}
        with self._lock:
            self._control_mtime = mtime
            if scripts is not None:
                self._control_scripts = scripts


def _verify_assertion(
    assertion: str, accounts: Mapping[str, FakeServiceAccount]
) -> FakeServiceAccount | _Reply:
    """The account that signed a google-auth JWT grant, or Google's error reply."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return oauth_error("invalid_grant", "Invalid JWT: Malformed assertion.")
    account = accounts.get(str(claims.get("iss")))
    if account is None:
        return oauth_error("invalid_grant", "Invalid grant: account not found")
    if header.get("kid") != account.private_key_id:
        return oauth_error("invalid_grant", "Invalid JWT Signature.")
    try:
        # google-auth always sends aud=https://oauth2.googleapis.com/token, whatever the
        # token_uri, so aud is not checked.
        claims = jwt.decode(
            assertion,
            account.public_key,
            algorithms=["RS256"],
            options={"verify_aud": False, "require": ["iat", "exp", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
            "timeframe. Check your iat and exp values in the JWT claim.",
        )
    except jwt.PyJWTError:
        return oauth_error("invalid_grant", "Invalid JWT Signature.")
    if SCOPE_FCM not in str(claims.get("scope", "")).split():
        return oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
    return account


def _load_control(path: Path) -> dict[str, _Script] | None:
    """Scripts from a control file; None (keep the old ones) if it is unreadable or invalid."""
    try:
        raw = json.loads(path.read_text())
        return {token: _control_entry(entry) for token, entry in raw.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        print(f"fake_fcm: ignoring control file {path}: {exc!r}", file=sys.stderr, flush=True)
        return None


def _control_entry(entry: Mapping[str, Any]) -> _Script:
    times, retry_after = entry.get("times"), entry.get("retry_after")
    return _Script(
        int(entry["status"]),
        str(entry["error_code"]),
        None if times is None else int(times),
        None if retry_after is None else float(retry_after),
    )


# --- command line --------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m testkit.fake_fcm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--events", type=Path, help="append one JSON line per message")
    parser.add_argument("--control", type=Path, help="JSON scripts per token, re-read on change")
    parser.add_argument(
        "--service-account",
        type=Path,
        help="trusted if it exists, else written with token_uri pointing here",
    )
    return parser.parse_args(argv)


def _account_for(fake: FakeFcm, path: Path | None, events: Path | None) -> None:
    if path is None:
        path = (events.parent if events else Path.cwd()) / "fcm-service-account.json"
    if path.exists():
        fake.trust(load_service_account(path))
    else:
        fake.make_service_account(path.parent, filename=path.name)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    fake = FakeFcm(args.host, args.port, events_path=args.events, control_path=args.control)
    with _stop_on_signals() as stop, fake:
        _account_for(fake, args.service_account, args.events)
        print(f"READY {fake.port}", flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
