"""What an FCM HTTP v1 answer means for us: a pure function, no I/O.

FCM puts the precise code in ``error.details[].errorCode`` (an ``FcmError``) and the
generic Google code in ``error.status``; the HTTP status is the last resort. See
docs/provider-errors.md ("FCM") and firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode.

Two choices are deliberately conservative:

* A token is only deleted on an explicit ``UNREGISTERED`` or on ``INVALID_ARGUMENT`` whose
  message blames the registration token. A bare 404 (wrong ``base_url``, a proxy page)
  must never wipe bindings.
* A plain 401 reaching this function means the refresh-and-replay already failed, so the
  key itself is bad: an operator problem, not something a retry fixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pushd.model import Classified, Verdict

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

QUOTA_MIN_RETRY_AFTER = 60.0
"""FCM: "exponential backoff with a minimum initial delay of 1 minute" for QUOTA_EXCEEDED."""

_BAD_TOKEN_PHRASES = (
    "registration token is not a valid",
    "not a valid fcm registration token",
)

_HINTS = {
    "SENDER_ID_MISMATCH": (
        "the registration token belongs to another Firebase project: the app's "
        "google-services.json and pushd's service account must come from the same project "
        "(pn-param / project id)"
    ),
    "THIRD_PARTY_AUTH_ERROR": (
        "FCM could not reach APNs or web push: upload a valid APNs auth key / web push "
        "credentials in the Firebase console (Project settings > Cloud Messaging)"
    ),
    "PERMISSION_DENIED": (
        "the service account may not send for this project: check the project id, that the "
        "Firebase Cloud Messaging API is enabled, and the account's role"
    ),
    "UNAUTHENTICATED": (
        "FCM rejected a freshly minted access token: the service-account key may be revoked "
        "or deleted, or the clock is wrong"
    ),
    "NOT_FOUND": "FCM answered 404 without UNREGISTERED: check base_url and the project id",
    "TOKEN_ENDPOINT": (
        "the OAuth token endpoint refused the service account: check the key file, that the "
        "key is not deleted, and the clock"
    ),
}


def error_code(status: int, body: Mapping[str, Any] | None) -> str:
    """The most precise error code in an FCM error body (FcmError, then status, then HTTP)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        details = error.get("details")
        for detail in details if isinstance(details, list) else ():
            if isinstance(detail, Mapping) and detail.get("@type") == FCM_ERROR_TYPE:
                code = detail.get("errorCode")
                if isinstance(code, str) and code:
                    return code
        google_status = error.get("status")
        if isinstance(google_status, str) and google_status:
            return google_status
    return f"HTTP {status}"


def _error_message(body: Mapping[str, Any] | None) -> str:
    error = body.get("error") if isinstance(body, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    return message if isinstance(message, str) else ""


def _config_error(reason: str, hint_key: str) -> Classified:
    return Classified(verdict=Verdict.CONFIG_ERROR, reason=reason, hint=_HINTS[hint_key])


def token_endpoint_refused(reason: str) -> Classified:
    """The OAuth token endpoint refused the service account for good (not retryable)."""
    return _config_error(reason, "TOKEN_ENDPOINT")


def _by_code(code: str, message: str, retry_after: float | None) -> Classified | None:
    """Classification by FCM/Google error code; None when the code says nothing decisive."""
    if code == "UNREGISTERED":
        return Classified(verdict=Verdict.DELETE_TOKEN, reason=code)
    if code == "INVALID_ARGUMENT":
        lowered = message.lower()
        if any(phrase in lowered for phrase in _BAD_TOKEN_PHRASES):
            return Classified(verdict=Verdict.DELETE_TOKEN, reason=code)
        return Classified(verdict=Verdict.GIVE_UP, reason=code)
    if code == "SENDER_ID_MISMATCH":
        return _config_error(code, code)
    # APNS_AUTH_ERROR is the deprecated name of THIRD_PARTY_AUTH_ERROR.
    if code in ("THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR"):
        return _config_error(code, "THIRD_PARTY_AUTH_ERROR")
    if code == "PERMISSION_DENIED":
        return _config_error(code, "PERMISSION_DENIED")
    if code == "UNAUTHENTICATED":
        return _config_error(code, "UNAUTHENTICATED")
    # RESOURCE_EXHAUSTED is the Google status that accompanies QUOTA_EXCEEDED.
    if code in ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"):
        return Classified.retry(code, retry_after, QUOTA_MIN_RETRY_AFTER)
    if code in ("UNAVAILABLE", "INTERNAL"):
        return Classified.retry(code, retry_after)
    return None


def _by_status(code: str, status: int, retry_after: float | None) -> Classified:
    """Fallback on the HTTP status alone (no or unknown error code)."""
    if status == 401:
        return _config_error(code, "UNAUTHENTICATED")
    if status == 403:
        return _config_error(code, "PERMISSION_DENIED")
    if status == 404:
        return _config_error(code, "NOT_FOUND")
    if status == 429:
        return Classified.retry(code, retry_after, QUOTA_MIN_RETRY_AFTER)
    if status == 408 or status >= 500:
        return Classified.retry(code, retry_after)
    # Other 4xx, UNSPECIFIED_ERROR, odd 1xx/3xx: this push cannot succeed as sent.
    return Classified(verdict=Verdict.GIVE_UP, reason=code)


def classify_fcm(
    status: int | None, body: Mapping[str, Any] | None, retry_after: float | None
) -> Classified:
    """Classify one FCM v1 ``messages:send`` answer.

    ``status`` is None when no HTTP answer came (connection error, timeout): retry.
    ``retry_after`` is the parsed Retry-After header in seconds, if any.
    """
    if status is None:
        return Classified.retry("no answer", retry_after)
    if 200 <= status < 300:
        return Classified(verdict=Verdict.DELIVERED)
    code = error_code(status, body)
    by_code = _by_code(code, _error_message(body), retry_after)
    return by_code if by_code is not None else _by_status(code, status, retry_after)
