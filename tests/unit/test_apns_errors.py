"""classify_apns over every status/reason in Apple's table (docs/provider-errors.md, "APNs")."""

from __future__ import annotations

import pytest

from pushd.apns_errors import classify_apns, is_environment_mixup_candidate
from pushd.model import Verdict

D, R, X, C, G = (
    Verdict.DELIVERED,
    Verdict.RETRY,
    Verdict.DELETE_TOKEN,
    Verdict.CONFIG_ERROR,
    Verdict.GIVE_UP,
)

APPLE_TABLE = [
    (400, "BadCollapseId", G),
    (400, "BadDeviceToken", X),
    (400, "BadExpirationDate", G),
    (400, "BadMessageId", G),
    (400, "BadPriority", G),
    (400, "BadTopic", C),
    (400, "DeviceTokenNotForTopic", C),
    (400, "DuplicateHeaders", G),
    (400, "IdleTimeout", R),
    (400, "InvalidPushType", C),
    (400, "MissingDeviceToken", G),
    (400, "MissingTopic", C),
    (400, "PayloadEmpty", G),
    (400, "TopicDisallowed", C),
    (403, "BadCertificate", C),
    (403, "BadCertificateEnvironment", C),
    (403, "ExpiredProviderToken", R),
    (403, "Forbidden", C),
    (403, "InvalidProviderToken", C),
    (403, "MissingProviderToken", C),
    (403, "UnrelatedKeyIdInToken", C),
    (403, "BadEnvironmentKeyIdInToken", C),
    (404, "BadPath", C),
    (405, "MethodNotAllowed", C),
    (410, "ExpiredToken", X),
    (410, "Unregistered", X),
    (413, "PayloadTooLarge", G),
    (429, "TooManyProviderTokenUpdates", R),
    (429, "TooManyRequests", R),
    (500, "InternalServerError", R),
    (503, "ServiceUnavailable", R),
    (503, "Shutdown", R),
]


@pytest.mark.parametrize(("status", "reason", "verdict"), APPLE_TABLE)
def test_every_apple_reason(status: int, reason: str, verdict: Verdict) -> None:
    result = classify_apns(status, reason)

    assert result.verdict is verdict
    assert result.reason == reason
    assert result.hint  # every non-success answer tells the operator something


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (400, G),
        (403, C),
        (404, C),
        (405, C),
        (410, X),
        (413, G),
        (429, R),
        (500, R),
        (502, R),
        (503, R),
        (418, G),
        (302, G),
    ],
)
def test_unknown_reason_falls_back_on_status(status: int, verdict: Verdict) -> None:
    result = classify_apns(status, "SomethingAppleAddsLater")

    assert result.verdict is verdict


def test_success_ignores_everything_else() -> None:
    result = classify_apns(200, None, 5.0)

    assert result.verdict is D
    assert result.reason is None and result.retry_after is None and result.hint is None


def test_no_answer_is_retried_with_the_local_reason() -> None:
    result = classify_apns(None, "cannot connect: refused")

    assert result.verdict is R
    assert result.reason == "cannot connect: refused"
    assert classify_apns(None, None).reason == "no answer"


def test_missing_reason_names_the_status() -> None:
    assert classify_apns(503, None).reason == "HTTP 503"


def test_retry_after_is_kept_for_retries_only() -> None:
    assert classify_apns(429, "TooManyRequests", 7.0).retry_after == 7.0
    assert classify_apns(503, "Shutdown", 2.0).retry_after == 2.0
    assert classify_apns(410, "Unregistered", 7.0).retry_after is None
    assert classify_apns(400, "BadPriority", 7.0).retry_after is None


def test_only_expired_provider_token_asks_for_a_new_jwt() -> None:
    flagged = [reason for status, reason, _ in APPLE_TABLE if classify_apns(status, reason).new_jwt]

    assert flagged == ["ExpiredProviderToken"]


def test_topic_hint_names_the_topic_and_the_voip_suffix() -> None:
    result = classify_apns(400, "DeviceTokenNotForTopic", topic="com.example.app")

    assert result.hint is not None
    assert "'com.example.app'" in result.hint
    assert ".voip" in result.hint
    assert "{topic}" not in (classify_apns(400, "TopicDisallowed").hint or "")


def test_environment_mixup_candidate() -> None:
    assert is_environment_mixup_candidate(400, "BadDeviceToken")
    assert not is_environment_mixup_candidate(410, "Unregistered")
    assert not is_environment_mixup_candidate(400, "DeviceTokenNotForTopic")
    assert not is_environment_mixup_candidate(None, None)
