"""What the operator should fix when a provider answers CONFIG_ERROR (pure lookup).

The provider modules classify answers; this table only turns a (provider, reason) into
the one sentence that goes into pushd's loud, once-only log line.
"""

from __future__ import annotations

from pushd.model import ProviderName

_HINTS: dict[tuple[ProviderName, str], str] = {
    (ProviderName.APNS, "DeviceTokenNotForTopic"): (
        "the token was issued for another app or push type: pn-param must be "
        "<TeamID>.<bundle>.voip for calls and the key/cert must belong to that team"
    ),
    (ProviderName.APNS, "TopicDisallowed"): (
        "this key/certificate may not push to the topic: check the bundle id in pn-param"
    ),
    (ProviderName.APNS, "BadTopic"): "pn-param does not name a valid bundle id",
    (ProviderName.APNS, "InvalidProviderToken"): (
        "apns.key_id / apns.team_id do not match the .p8 key in apns.key_file"
    ),
    (ProviderName.APNS, "MissingProviderToken"): (
        "APNs got no JWT: apns.auth token needs key_file, key_id and team_id"
    ),
    (ProviderName.APNS, "UnrelatedKeyIdInToken"): (
        "apns.key_id belongs to another team than apns.team_id"
    ),
    (ProviderName.APNS, "BadEnvironmentKeyIdInToken"): (
        "the key is not enabled for this APNs environment (sandbox vs production)"
    ),
    (ProviderName.APNS, "BadCertificate"): "apns.cert_file is not an APNs client certificate",
    (ProviderName.APNS, "BadCertificateEnvironment"): (
        "apns.cert_file is for the other environment (sandbox vs production)"
    ),
    (ProviderName.APNS, "Forbidden"): "APNs refused the credentials: check apns.* settings",
    (ProviderName.FCM, "SENDER_ID_MISMATCH"): (
        "the token belongs to another Firebase project than the service account / pn-param"
    ),
    (ProviderName.FCM, "THIRD_PARTY_AUTH_ERROR"): (
        "upload valid APNs credentials in the Firebase console (Cloud Messaging settings)"
    ),
    (ProviderName.FCM, "PERMISSION_DENIED"): (
        "the service account may not send for this project (project id, FCM API enabled, role)"
    ),
    (ProviderName.FCM, "UNAUTHENTICATED"): (
        "the service-account key was rejected: revoked key or wrong clock"
    ),
}


def hint(provider: ProviderName, reason: str | None) -> str:
    """One sentence for the operator; a generic pointer at the config section if unknown."""
    found = _HINTS.get((provider, reason or ""))
    return found or f"check the {provider.value} section of the pushd config and its credentials"
