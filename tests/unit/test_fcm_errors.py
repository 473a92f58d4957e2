"""classify_fcm over the error bodies FCM v1 really sends (docs/provider-errors.md, "FCM")."""

from __future__ import annotations

from typing import Any

import pytest

from pushd.fcm_errors import (
    FCM_ERROR_TYPE,
    QUOTA_MIN_RETRY_AFTER,
    classify_fcm,
    error_code,
    token_endpoint_refused,
)
from pushd.model import Verdict
from pushd.retry import MAX_RETRY_AFTER

BAD_TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"


def fcm_body(status: int, google_status: str, code: str | None, message: str) -> dict[str, Any]:
    """An error body shaped like production FCM's (FcmError detail only when ``code``)."""
    error: dict[str, Any] = {"code": status, "message": message, "status": google_status}
    if code is not None:
        error["details"] = [{"@type": FCM_ERROR_TYPE, "errorCode": code}]
    return {"error": error}


def test_success_is_delivered() -> None:
    outcome = classify_fcm(200, {"name": "projects/p/messages/1"}, None)
    assert outcome.verdict is Verdict.DELIVERED
    assert outcome.reason is None


def test_unregistered_deletes_the_token() -> None:
    body = fcm_body(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.")
    outcome = classify_fcm(404, body, None)
    assert (outcome.verdict, outcome.reason) == (Verdict.DELETE_TOKEN, "UNREGISTERED")


def test_invalid_argument_blaming_the_token_deletes_it() -> None:
    body = fcm_body(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", BAD_TOKEN_MESSAGE)
    outcome = classify_fcm(400, body, None)
    assert (outcome.verdict, outcome.reason) == (Verdict.DELETE_TOKEN, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "message",
    [
        "Invalid value at 'message.data[0].value' (TYPE_STRING), 1",
        "Android message is too big",
        "Invalid data payload key: from",
    ],
)
def test_invalid_argument_about_the_payload_gives_up_but_keeps_the_token(message: str) -> None:
    body = fcm_body(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", message)
    outcome = classify_fcm(400, body, None)
    assert (outcome.verdict, outcome.reason) == (Verdict.GIVE_UP, "INVALID_ARGUMENT")


def test_invalid_argument_without_fcm_detail_still_classified_by_status() -> None:
    body = fcm_body(
        400, "INVALID_ARGUMENT", None, 'Invalid JSON payload received. Unknown name "x"'
    )
    assert classify_fcm(400, body, None).verdict is Verdict.GIVE_UP


@pytest.mark.parametrize(
    ("status", "google_status", "code", "hint_word"),
    [
        (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "project"),
        (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "APNs"),
        (401, "UNAUTHENTICATED", "APNS_AUTH_ERROR", "APNs"),  # the code's deprecated name
        (403, "PERMISSION_DENIED", None, "project"),
        (401, "UNAUTHENTICATED", None, "key"),
    ],
)
def test_configuration_errors_carry_a_hint(
    status: int, google_status: str, code: str | None, hint_word: str
) -> None:
    body = fcm_body(status, google_status, code, "x")
    outcome = classify_fcm(status, body, None)
    assert outcome.verdict is Verdict.CONFIG_ERROR
    assert outcome.reason == (code or google_status)
    assert outcome.hint is not None
    assert hint_word in outcome.hint


@pytest.mark.parametrize(("status", "reason"), [(401, "HTTP 401"), (403, "HTTP 403")])
def test_auth_statuses_without_a_body_are_config_errors(status: int, reason: str) -> None:
    outcome = classify_fcm(status, None, None)
    assert (outcome.verdict, outcome.reason) == (Verdict.CONFIG_ERROR, reason)


def test_bare_404_never_deletes_a_token() -> None:
    # A wrong base_url or a proxy's error page must not wipe bindings.
    outcome = classify_fcm(404, {"error": {"code": 404, "message": "Not Found"}}, None)
    assert outcome.verdict is Verdict.CONFIG_ERROR
    assert outcome.hint is not None
    assert "base_url" in outcome.hint


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(None, QUOTA_MIN_RETRY_AFTER), (5.0, QUOTA_MIN_RETRY_AFTER), (300.0, 300.0)],
)
def test_quota_exceeded_waits_at_least_a_minute(retry_after: float | None, expected: float) -> None:
    body = fcm_body(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded")
    outcome = classify_fcm(429, body, retry_after)
    assert (outcome.verdict, outcome.reason) == (Verdict.RETRY, "QUOTA_EXCEEDED")
    assert outcome.retry_after == expected


def test_bare_429_is_treated_as_quota() -> None:
    outcome = classify_fcm(429, None, None)
    assert outcome.verdict is Verdict.RETRY
    assert outcome.retry_after == QUOTA_MIN_RETRY_AFTER


@pytest.mark.parametrize(
    ("status", "google_status", "code"),
    [(503, "UNAVAILABLE", "UNAVAILABLE"), (500, "INTERNAL", "INTERNAL")],
)
@pytest.mark.parametrize("retry_after", [None, 7.0])
def test_server_trouble_retries_honouring_retry_after(
    status: int, google_status: str, code: str, retry_after: float | None
) -> None:
    outcome = classify_fcm(status, fcm_body(status, google_status, code, "x"), retry_after)
    assert (outcome.verdict, outcome.reason) == (Verdict.RETRY, code)
    assert outcome.retry_after == retry_after


@pytest.mark.parametrize("status", [502, 504, 408])
def test_other_transient_statuses_retry(status: int) -> None:
    outcome = classify_fcm(status, None, 3.0)
    assert (outcome.verdict, outcome.reason, outcome.retry_after) == (
        Verdict.RETRY,
        f"HTTP {status}",
        3.0,
    )


def test_no_answer_retries() -> None:
    outcome = classify_fcm(None, None, None)
    assert (outcome.verdict, outcome.reason, outcome.retry_after) == (
        Verdict.RETRY,
        "no answer",
        None,
    )


def test_absurd_retry_after_is_capped() -> None:
    outcome = classify_fcm(503, None, 10.0**9)
    assert outcome.retry_after == MAX_RETRY_AFTER


@pytest.mark.parametrize(
    "body",
    [
        fcm_body(500, "UNKNOWN", "UNSPECIFIED_ERROR", "x"),
        {"error": "not a mapping"},
        {"unexpected": True},
    ],
)
def test_unknown_or_odd_bodies_fall_back_to_the_status(body: dict[str, Any]) -> None:
    assert classify_fcm(500, body, None).verdict is Verdict.RETRY
    assert classify_fcm(400, body, None).verdict is Verdict.GIVE_UP


def test_error_code_prefers_the_fcm_detail_over_the_google_status() -> None:
    body = fcm_body(404, "NOT_FOUND", "UNREGISTERED", "x")
    body["error"]["details"].insert(0, {"@type": "type.googleapis.com/google.rpc.BadRequest"})
    assert error_code(404, body) == "UNREGISTERED"
    assert error_code(404, fcm_body(404, "NOT_FOUND", None, "x")) == "NOT_FOUND"
    assert error_code(418, None) == "HTTP 418"


def test_token_endpoint_refusal_is_a_config_error_with_a_hint() -> None:
    outcome = token_endpoint_refused("token endpoint: invalid_grant")
    assert outcome.verdict is Verdict.CONFIG_ERROR
    assert outcome.reason == "token endpoint: invalid_grant"
    assert outcome.hint is not None and "key file" in outcome.hint
