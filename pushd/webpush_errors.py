"""What a Web Push service's answer means for us: a pure function, no I/O.

RFC 8030 §5 answers a push with 201 Created; §7.3 says an expired subscription gets 404;
push services also use 410 Gone for a subscription the user revoked. RFC 8292 §4.2:
a missing or invalid VAPID token is 401 or 403, and a token whose key is not the one the
subscription was created with is 403. RFC 8030 §5.4 / §8.4: 413 for a payload too large,
429 to slow down; 400 for a request the service cannot parse (TTL, Urgency, Topic).
See docs/provider-errors.md ("Web Push").
"""

from __future__ import annotations

from pushd.model import Classified, Verdict

_HINTS = {
    400: (
        "the push service refused the request as malformed: check pushd's webpush "
        "section (subject) and the TTL/Urgency/Topic it sends"
    ),
    401: (
        "the push service refused our VAPID token: check webpush.vapid_private_key_file "
        "and webpush.subject, and the clock"
    ),
    403: (
        "the push service refused our VAPID key for this subscription: the browser "
        "subscribed with another applicationServerKey; give the page the key of "
        "`pushd webpush-keys` (PUSHGATE_VAPID_PUBLIC_KEY) and let it subscribe again"
    ),
    413: (
        "the push service refused the message size: pushd sends no payload, so something "
        "between pushd and the push service adds one"
    ),
}


def classify_webpush(status: int | None, retry_after: float | None) -> Classified:
    """Classify one RFC 8030 push request's answer.

    ``status`` is None when no HTTP answer came (connection error, timeout): retry.
    ``retry_after`` is the parsed Retry-After header in seconds, if any.
    """
    if status is None:
        return Classified.retry("no answer", retry_after)
    reason = f"HTTP {status}"
    if 200 <= status < 300:
        return Classified(verdict=Verdict.DELIVERED)
    if status in (404, 410):
        # The subscription is gone (expired, unsubscribed): the binding is useless.
        return Classified(verdict=Verdict.DELETE_TOKEN, reason=reason)
    if status == 429 or status == 408 or status >= 500:
        return Classified.retry(reason, retry_after)
    if status in _HINTS:
        return Classified(verdict=Verdict.CONFIG_ERROR, reason=reason, hint=_HINTS[status])
    # Other 4xx, odd 1xx/3xx: this push cannot succeed as sent; the binding may be fine.
    return Classified(verdict=Verdict.GIVE_UP, reason=reason)
