"""What one APNs request carries, per push kind: payload, topic, push type, priority,
expiration. Pure: no I/O, no clock (the caller passes ``now``).

Apple's rules ("Sending notification requests to APNs"): the topic of a VoIP push is
``<bundle>.voip``, of the others the bare bundle; background pushes must not use
priority 10; ``apns-expiration`` is an absolute epoch second (0 = deliver now or never);
payloads are at most 4 KiB (5 KiB for VoIP), counted on the bytes sent.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from hpack import NeverIndexedHeaderTuple

from pushd.model import PushKind, PushRequest

MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
PRIORITY_IMMEDIATE = 10
PRIORITY_POWER_SAVING = 5


class ApnsPushType(enum.StrEnum):
    VOIP = "voip"
    ALERT = "alert"
    BACKGROUND = "background"


_ALERT_FIELDS = ("title", "subtitle", "body")
_DEFAULT_BODY = {
    PushKind.MESSAGE: "New message",
    PushKind.MISSED: "Missed call",
    PushKind.CANCEL: "Call ended",
}
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Compact UTF-8 JSON: Apple counts every byte against the payload limit."""

Header = tuple[bytes, bytes]


@dataclass(frozen=True, kw_only=True)
class ApnsMessage:
    """Everything that goes into one APNs request besides the device token."""

    topic: str
    push_type: ApnsPushType
    priority: int
    expiration: int
    """``apns-expiration``: epoch seconds, the push's deadline (never 0, see time_to_live)."""
    payload: dict[str, Any]
    collapse_id: str | None
    body: bytes = field(init=False, repr=False)
    """The payload as sent."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", _JSON.encode(self.payload).encode())

    def encoded_size(self) -> int:
        return len(self.body)

    def size_limit(self) -> int:
        return MAX_VOIP_PAYLOAD if self.push_type is ApnsPushType.VOIP else MAX_PAYLOAD

    def headers(self) -> list[Header]:
        """The ``apns-*`` request headers (lower-case names, bytes).

        No ``apns-id``: APNs makes one and returns it in every answer, which saves encoding
        a unique 36-byte value into every request. Values that repeat across pushes (topic,
        push type, priority, the expiration second) may enter the HPACK table; the
        collapse id is per call, so it is sent as a never-indexed literal.
        """
        headers: list[Header] = [
            (b"apns-topic", self.topic.encode()),
            (b"apns-push-type", _PUSH_TYPE_BYTES[self.push_type]),
            (b"apns-priority", b"%d" % self.priority),
            (b"apns-expiration", b"%d" % self.expiration),
        ]
        if self.collapse_id is not None:
            headers.append(NeverIndexedHeaderTuple(b"apns-collapse-id", self.collapse_id.encode()))
        return headers


_PUSH_TYPE_BYTES = {kind: kind.value.encode() for kind in ApnsPushType}


def build_message(request: PushRequest, now: float) -> ApnsMessage:
    """Map a push to an APNs request.

    * CALL: VoIP (PushKit), priority 10, topic ``<bundle>.voip``, flat payload.
    * MESSAGE / MISSED / CANCEL: alert, priority 10 (the user should see it now),
      topic ``<bundle>``; ``title``/``subtitle``/``body``/``sound`` in ``data`` fill
      ``aps``, other keys ride along at the top level.
    * REFRESH: background (``content-available``), priority 5: Apple rejects 10 for
      background pushes, and a re-REGISTER can wait for the OS's next opportunity.

    The topic's ``.voip`` suffix is made to fit the push type, since the push type is
    decided here and APNs rejects any mismatch.
    """
    bare_topic = request.topic.removesuffix(".voip")
    common: dict[str, Any] = {
        "expiration": int(now) + time_to_live(request.deadline, now),
        "collapse_id": request.collapse_id,
    }
    if request.kind is PushKind.CALL:
        return ApnsMessage(
            topic=f"{bare_topic}.voip",
            push_type=ApnsPushType.VOIP,
            priority=PRIORITY_IMMEDIATE,
            payload={"aps": {}, **_custom(request.data, ())},
            **common,
        )
    if request.kind is PushKind.REFRESH:
        return ApnsMessage(
            topic=bare_topic,
            push_type=ApnsPushType.BACKGROUND,
            priority=PRIORITY_POWER_SAVING,
            payload={"aps": {"content-available": 1}, **_custom(request.data, ())},
            **common,
        )
    return ApnsMessage(
        topic=bare_topic,
        push_type=ApnsPushType.ALERT,
        priority=PRIORITY_IMMEDIATE,
        payload=_alert_payload(request.kind, request.data),
        **common,
    )


def time_to_live(deadline: float, now: float) -> int:
    """Seconds from ``int(now)`` to the expiration, so that it lands on ``int(deadline)``.

    At least 1: an expiration of now would become "deliver now or never", which drops a
    call push whenever the phone is briefly out of coverage.
    """
    return max(1, int(deadline) - int(now))


def _alert_payload(kind: PushKind, data: dict[str, str]) -> dict[str, Any]:
    alert = {k: data[k] for k in _ALERT_FIELDS if data.get(k)}
    if not alert:
        alert = {"body": _DEFAULT_BODY.get(kind, "")}
    aps: dict[str, Any] = {"alert": alert}
    # A cancel notice must not ring; the others use the default sound unless told otherwise.
    sound = data.get("sound", "" if kind is PushKind.CANCEL else "default")
    if sound:
        aps["sound"] = sound
    return {"aps": aps, **_custom(data, (*_ALERT_FIELDS, "sound"))}


def _custom(data: dict[str, str], taken: tuple[str, ...]) -> dict[str, str]:
    # "aps" belongs to Apple; a string there would make the whole payload invalid.
    return {k: v for k, v in data.items() if k != "aps" and k not in taken}
