"""What an APNs answer means for us: pure functions, no I/O.

Apple's table of statuses and reasons ("Handling notification responses from APNs") is
summed up in docs/provider-errors.md, section "APNs". The decisions:

* ``DELETE_TOKEN`` only when Apple says the token is dead: 410 (Unregistered,
  ExpiredToken) and 400 BadDeviceToken. BadDeviceToken is also what a sandbox token sent
  to production (or the reverse) gets, so the caller should first rule that out: see
  :func:`is_environment_mixup_candidate`.
* ``CONFIG_ERROR`` when our side is wrong in a way no retry fixes: credentials, key,
  certificate, topic, push type, path. The hint tells the operator what to look at.
* ``RETRY`` for throttling, server trouble, no answer, and ExpiredProviderToken (the
  provider mints a new JWT first; ``new_jwt`` says so).
* ``GIVE_UP`` when this one push is malformed (size, priority, expiration, collapse id):
  the token may still be fine, and sending the same bytes again would fail again.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushd.model import Classified, Verdict

SUCCESS = 200


@dataclass(frozen=True, kw_only=True)
class ApnsVerdict(Classified):
    """An APNs answer classified (``reason``: Apple's, else ``HTTP <status>``)."""

    new_jwt: bool = False
    """The provider token must be re-minted before the retry (ExpiredProviderToken)."""


@dataclass(frozen=True)
class _Rule:
    verdict: Verdict
    hint: str


_TOPIC_HINT = "check the bundle in pn-param and the .voip suffix"

# reason -> (verdict, hint). "{topic}" is filled in when the caller knows the topic.
_RULES: dict[str, _Rule] = {
    # 400
    "BadCollapseId": _Rule(Verdict.GIVE_UP, "apns-collapse-id is longer than 64 bytes"),
    "BadDeviceToken": _Rule(
        Verdict.DELETE_TOKEN,
        "APNs rejects the device token; if the app was built for the other environment "
        "(sandbox vs production, pn-provider apns.dev), the token is fine there",
    ),
    "BadExpirationDate": _Rule(Verdict.GIVE_UP, "apns-expiration is not a valid epoch time"),
    "BadMessageId": _Rule(Verdict.GIVE_UP, "apns-id is not a UUID"),
    "BadPriority": _Rule(Verdict.GIVE_UP, "apns-priority must be 10, 5 or 1"),
    "BadTopic": _Rule(Verdict.CONFIG_ERROR, "apns-topic {topic} is invalid: " + _TOPIC_HINT),
    "DeviceTokenNotForTopic": _Rule(
        Verdict.CONFIG_ERROR,
        "the device token does not belong to topic {topic}: "
        + _TOPIC_HINT
        + " (VoIP pushes need <bundle>.voip and the PushKit token)",
    ),
    "DuplicateHeaders": _Rule(Verdict.GIVE_UP, "a header was repeated (pushd bug)"),
    "IdleTimeout": _Rule(Verdict.RETRY, "APNs closed the idle connection; reconnect"),
    "InvalidPushType": _Rule(
        Verdict.CONFIG_ERROR,
        "apns-push-type does not fit topic {topic}: voip needs <bundle>.voip, alert and "
        "background need the plain bundle",
    ),
    "MissingDeviceToken": _Rule(Verdict.GIVE_UP, "no device token in the request path"),
    "MissingTopic": _Rule(
        Verdict.CONFIG_ERROR,
        "apns-topic is required with token auth and multi-topic certificates: " + _TOPIC_HINT,
    ),
    "PayloadEmpty": _Rule(Verdict.GIVE_UP, "the payload is empty"),
    "TopicDisallowed": _Rule(
        Verdict.CONFIG_ERROR,
        "pushing to topic {topic} is not allowed with these credentials: check the key's "
        "team / the certificate's bundle against pn-param",
    ),
    # 403
    "BadCertificate": _Rule(Verdict.CONFIG_ERROR, "the client certificate is invalid"),
    "BadCertificateEnvironment": _Rule(
        Verdict.CONFIG_ERROR,
        "the client certificate is for the other environment (sandbox vs production)",
    ),
    "ExpiredProviderToken": _Rule(
        Verdict.RETRY,
        "the JWT is more than an hour old (or the clock is wrong): minting a new one",
    ),
    "Forbidden": _Rule(Verdict.CONFIG_ERROR, "APNs refuses this sender: check key / certificate"),
    "InvalidProviderToken": _Rule(
        Verdict.CONFIG_ERROR,
        "the JWT does not verify: check key_id, team_id and the .p8 key file belong together",
    ),
    "MissingProviderToken": _Rule(
        Verdict.CONFIG_ERROR, "no JWT and no client certificate: check apns auth settings"
    ),
    "UnrelatedKeyIdInToken": _Rule(
        Verdict.CONFIG_ERROR, "the key_id does not belong to team_id: check both against Apple"
    ),
    "BadEnvironmentKeyIdInToken": _Rule(
        Verdict.CONFIG_ERROR,
        "the key is not enabled for this environment (sandbox vs production): check the key "
        "in the Apple developer portal",
    ),
    # 404 / 405
    "BadPath": _Rule(Verdict.CONFIG_ERROR, "wrong request path: check the APNs host/port"),
    "MethodNotAllowed": _Rule(
        Verdict.CONFIG_ERROR, "APNs only accepts POST: check the APNs host/port or proxy"
    ),
    # 410
    "ExpiredToken": _Rule(Verdict.DELETE_TOKEN, "the device token expired"),
    "Unregistered": _Rule(Verdict.DELETE_TOKEN, "the app was removed or the token revoked"),
    # 413
    "PayloadTooLarge": _Rule(
        Verdict.GIVE_UP, "payload over 4096 bytes (5120 for VoIP): trim the push data"
    ),
    # 429
    "TooManyProviderTokenUpdates": _Rule(
        Verdict.RETRY,
        "the JWT was re-minted too often (more than once per 20 min): several pushd "
        "instances sharing one key?",
    ),
    "TooManyRequests": _Rule(Verdict.RETRY, "too many pushes to this device token"),
    # 500 / 503
    "InternalServerError": _Rule(Verdict.RETRY, "APNs internal error"),
    "ServiceUnavailable": _Rule(Verdict.RETRY, "APNs is unavailable"),
    "Shutdown": _Rule(Verdict.RETRY, "the APNs server is shutting down: reconnect"),
}

# Fallback by status, for reasons Apple adds later.
_STATUS_RULES: dict[int, _Rule] = {
    400: _Rule(Verdict.GIVE_UP, "APNs rejected this push"),
    403: _Rule(Verdict.CONFIG_ERROR, "APNs refuses our credentials"),
    404: _Rule(Verdict.CONFIG_ERROR, "wrong request path: check the APNs host/port"),
    405: _Rule(Verdict.CONFIG_ERROR, "APNs only accepts POST: check the APNs host/port"),
    410: _Rule(Verdict.DELETE_TOKEN, "the device token is no longer valid"),
    413: _Rule(Verdict.GIVE_UP, "payload too large"),
    429: _Rule(Verdict.RETRY, "throttled by APNs"),
}


def classify_apns(
    status: int | None,
    reason: str | None,
    retry_after: float | None = None,
    *,
    topic: str | None = None,
) -> ApnsVerdict:
    """Classify one APNs answer. ``status`` None means no answer came at all.

    ``retry_after`` (seconds, from a Retry-After header) is kept for RETRY verdicts only.
    ``topic`` only makes the hints more precise.
    """
    if status == SUCCESS:
        return ApnsVerdict(verdict=Verdict.DELIVERED)
    if status is None:
        return ApnsVerdict(
            verdict=Verdict.RETRY,
            reason=reason or "no answer",
            retry_after=retry_after,
            hint="no answer from APNs (connection failed, closed or timed out)",
        )
    rule = _rule(status, reason)
    return ApnsVerdict(
        verdict=rule.verdict,
        reason=reason or f"HTTP {status}",
        retry_after=retry_after if rule.verdict is Verdict.RETRY else None,
        hint=rule.hint.replace("{topic}", repr(topic) if topic else "(this topic)"),
        new_jwt=reason == "ExpiredProviderToken",
    )


def _rule(status: int, reason: str | None) -> _Rule:
    if reason in _RULES:
        return _RULES[reason]
    if status in _STATUS_RULES:
        return _STATUS_RULES[status]
    if status >= 500:
        return _Rule(Verdict.RETRY, f"APNs server error {status}")
    return _Rule(Verdict.GIVE_UP, f"unexpected APNs answer {status}")


def is_environment_mixup_candidate(status: int | None, reason: str | None) -> bool:
    """Could this answer come from sending a token to the wrong environment?

    APNs answers BadDeviceToken both for garbage and for a sandbox token sent to
    production (or the reverse). Before deleting the binding, the caller may try the other
    environment once, or check the binding's ``pn-provider`` (``apns.dev`` = sandbox).
    """
    return status == 400 and reason == "BadDeviceToken"
