"""The Kamailio <-> pushd channel: every message, its builder and its parser, in one place.

Both ends import this module (Kamailio's embedded Python loads it, so: standard library
only). Each message is a frozen dataclass; ``.message()`` gives the JSON object that
crosses the channel, ``parse_<type>()`` reads one back, checking every field and naming
the one that is wrong. The protocol is docs/kamailio-pushd-protocol.md::

    pushd -> Kamailio    Hello (first on every connection), Ack (a push read), Result
                         (one per push)
    Kamailio -> pushd    Welcome (answers a good Hello), Push

    WireError (field, reason)   a message or one of its fields is malformed
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VERSION = 3
"""3: pushd acks each push it reads (:class:`Ack`); 2: pushes without a held call have the
id ``none:<n>`` (1 used the fake ``0:0:<n>``)."""
ACKS_SINCE = 3
"""The first version whose pushd acks pushes: Kamailio waits for acks from those only."""
MAX_MESSAGE = 60_000
"""Bytes of a push message, under pushd's 64 KiB netstring frame (pushd.netstring)."""
MAX_TEXT = 256
"""Characters of a push's ``instance`` and of each ``data`` value: they come from the
phone's REGISTER and the caller's INVITE (a display name of 25,000 "é" is 150 kB of
JSON, past pushd's 64 KiB frame: pushd dropped the connection, Kamailio resent the push
on the next one, and no push went out for anyone). APNs takes 5 KB of payload anyway."""


class MessageType(enum.StrEnum):
    HELLO = "hello"
    WELCOME = "welcome"
    PUSH = "push"
    ACK = "ack"
    RESULT = "result"


class PushKind(enum.StrEnum):
    """Why Kamailio (or pushd) pushes; decides the APNs push type / FCM priority."""

    CALL = "call"  # incoming call: APNs VoIP (PushKit), FCM high-priority data
    MESSAGE = "message"  # SIP MESSAGE stored: APNs alert, FCM high-priority data
    CANCEL = "cancel"  # call cancelled / answered elsewhere notice
    MISSED = "missed"  # missed-call notice: APNs alert
    REFRESH = "refresh"  # binding refresh (pushd's own): ask the app to re-REGISTER


class Verdict(enum.StrEnum):
    """What a provider's answer means. Every one but RETRY is final and goes on the wire:
    pushd retries until the push's deadline, then reports GIVE_UP."""

    DELIVERED = "delivered"  # accepted by the provider
    RETRY = "retry"  # transient: try again after PushResult.retry_after (or backoff)
    DELETE_TOKEN = "delete_token"  # token is dead for good: remove the binding
    CONFIG_ERROR = "config_error"  # our credentials/topic/project are wrong: operator must fix
    GIVE_UP = "give_up"  # permanent for this push, token may still be fine


FINAL_VERDICTS = frozenset(v for v in Verdict if v is not Verdict.RETRY)


class WireError(ValueError):
    """A message on the channel is malformed; ``field`` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# -- push ids ---------------------------------------------------------------------------------

NO_HOLD = "none"
"""The first part of the id of a push no transaction waits for (a stored-message notice,
a binding refresh)."""
# Canonical unsigned decimals only: " 1", "+1", "01", "1_0" and "\u0663" are ints to int()
# but not the id Kamailio wrote (results are matched by the id's text, too).
_N = r"(0|[1-9][0-9]{0,19})"
_PUSH_ID = re.compile(rf"(?:{_N}:{_N}|{NO_HOLD}):{_N}", re.ASCII)


@dataclass(frozen=True)
class Tx:
    """A held INVITE transaction, as tm names it."""

    index: int
    label: int

    @property
    def key(self) -> str:
        return f"{self.index}:{self.label}"


@dataclass(frozen=True, kw_only=True)
class PushId:
    """Kamailio's id of one push: ``<index>:<label>:<n>`` for the n-th push of the held
    transaction ``tx``, ``none:<n>`` for a push no transaction waits for."""

    tx: Tx | None
    n: int = 0

    def __str__(self) -> str:
        return f"{self.tx.key if self.tx else NO_HOLD}:{self.n}"

    @classmethod
    def parse(cls, text: object) -> PushId:
        """Also reads ``0:0:<n>``, version 1's id of a push with no held call."""
        match = _PUSH_ID.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise WireError(
                "id", f"expected '<index>:<label>:<n>' or 'none:<n>', got {_short(text)}"
            )
        index, label, n = match.groups()
        if index is None or index == label == "0":
            return cls(tx=None, n=int(n))
        return cls(tx=Tx(int(index), int(label)), n=int(n))


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Hello:
    """pushd's first message on a connection: Kamailio checks the secret."""

    secret: str
    agent: str
    version: int = VERSION

    def message(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "secret": self.secret,
            "version": self.version,
            "agent": self.agent,
        }


@dataclass(frozen=True, kw_only=True)
class Welcome:
    """Kamailio's answer to a good Hello."""

    version: int = VERSION

    def message(self) -> dict[str, Any]:
        return {"type": "welcome", "version": self.version}


@dataclass(frozen=True, kw_only=True)
class Push:
    """One push to one device. ``id`` is opaque to pushd and echoed in the result (from
    Kamailio a :class:`PushId`; from pushd's HTTP API the caller's own; empty: no result
    is wanted)."""

    id: str
    kind: PushKind
    provider: str
    """Raw RFC 8599 ``pn-provider`` (``apns``, ``apns.dev``, ``fcm``); pushd derives the
    token, topic and environment with ``pushgate.pn_params``."""
    prid: str
    param: str
    deadline: float
    """Epoch seconds: APNs expiration, FCM ttl and the retry cap derive from it."""
    aor: str = ""
    ruid: str = ""
    instance: str = ""
    data: Mapping[str, str] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        return {
            "type": "push",
            "id": self.id,
            "kind": self.kind,  # a StrEnum is a str: JSON writes its value
            "provider": self.provider,
            "prid": self.prid,
            "param": self.param,
            "aor": self.aor,
            "ruid": self.ruid,
            "instance": self.instance,
            "deadline": self.deadline,
            "data": dict(self.data),
        }


@dataclass(frozen=True, kw_only=True)
class Ack:
    """pushd read a push (before it contacts any provider): a pushd that reads nothing
    is hung, and Kamailio gives its pushes to another (docs/kamailio-pushd-protocol.md)."""

    id: str

    def message(self) -> dict[str, Any]:
        return {"type": "ack", "id": self.id}


@dataclass(frozen=True, kw_only=True)
class Result:
    """pushd's final word on one push; ``aor``/``ruid`` echoed from it."""

    id: str
    verdict: Verdict
    status: int | None = None
    """The provider's HTTP status; None when none answered."""
    reason: str | None = None
    aor: str = ""
    ruid: str = ""
    attempts: int = 0
    ms: float = 0.0

    def message(self) -> dict[str, Any]:
        return {
            "type": "result",
            "id": self.id,
            "verdict": self.verdict,  # a StrEnum is a str: JSON writes its value
            "status": self.status,
            "reason": self.reason,
            "aor": self.aor,
            "ruid": self.ruid,
            "attempts": self.attempts,
            "ms": self.ms,
        }


# -- text -------------------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> str:
    """A message as the JSON text both ends write: compact, ASCII (characters are bytes,
    and a lone surrogate echoed from a push stays the escape it arrived as)."""
    return json.dumps(message, separators=(",", ":"))


def decode(text: str | bytes) -> dict[str, Any]:
    """A message's JSON object, with a string ``type``; anything else is a :class:`WireError`."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError("not JSON", exc.msg) from None
    except UnicodeDecodeError:
        raise WireError("not JSON", "not UTF-8") from None
    except ValueError:
        # A number of over 4300 digits: int() refuses it (CVE-2020-10735's limit).
        raise WireError("not JSON", "a number too long to read") from None
    except RecursionError:
        # "[[[[..." nests deeper than the parser recurses; from anyone who reaches evapi.
        raise WireError("not JSON", "nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise WireError("type", "missing")
    return msg


def push_message(
    *,
    push_id: PushId,
    kind: PushKind | str,
    provider: str,
    prid: str,
    param: str,
    aor: str,
    ruid: str,
    instance: str,
    deadline: float,
    data: Mapping[str, str],
) -> str:
    """Kamailio's ``push`` as text: ``instance`` and ``data`` values cut to
    :data:`MAX_TEXT` characters (prid, param and aor were bounded when the phone
    registered). A message pushd would refuse as a whole is a :class:`WireError` here,
    never sent."""
    text = encode(
        Push(
            id=str(push_id),
            kind=PushKind(kind),
            provider=provider,
            prid=prid,
            param=param,
            aor=aor,
            ruid=ruid,
            instance=_bounded(instance),
            deadline=round(deadline, 3),
            data={k: _bounded(v) for k, v in data.items()},
        ).message()
    )
    if len(text) > MAX_MESSAGE:
        raise WireError("push", f"{len(text)} bytes, over {MAX_MESSAGE}")
    return text


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT]


# -- parsers ------------------------------------------------------------------------------------
# Fields that decide what the reader does must have their documented types; nothing is
# coerced from another type (True is no number, "200" no status).


def parse_hello(msg: Mapping[str, Any]) -> Hello:
    return Hello(
        secret=_str(msg, "secret", required=True),
        agent=_str(msg, "agent")[:80] or "?",
        version=_int(msg, "version", 0, 2**31),
    )


def parse_welcome(msg: Mapping[str, Any]) -> Welcome:
    return Welcome(version=_int(msg, "version", 0, 2**31))


def parse_push(msg: Mapping[str, Any]) -> Push:
    """A ``push`` (its ``type`` is the caller's to check). pn-* values are only checked to
    be strings here: what they mean is ``pushgate.pn_params``'s business."""
    push_id = _str(msg, "id")  # absent: nobody waits for the result, none is sent
    kind = msg.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        allowed = ", ".join(k.value for k in PushKind)
        raise WireError("kind", f"must be one of {allowed} (got {_short(kind)})")
    deadline = msg.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise WireError("deadline", "missing or not a number (epoch seconds)")
    # json.loads takes Infinity/NaN (retries would never stop, or never start) and
    # integers of any size (float() of 10**400 raises OverflowError).
    if not -1e12 < deadline < 1e12:
        raise WireError("deadline", "must be a finite number of epoch seconds")
    data = _data(msg.get("data"))
    return Push(
        id=push_id,
        kind=PushKind(kind),
        provider=_str(msg, "provider"),
        prid=_str(msg, "prid"),
        param=_str(msg, "param"),
        deadline=float(deadline),
        aor=_str(msg, "aor"),
        ruid=_str(msg, "ruid"),
        instance=_str(msg, "instance"),
        data=data,
    )


def parse_ack(msg: Mapping[str, Any]) -> Ack:
    """An ``ack`` as Kamailio reads it: its ``id`` must be a :class:`PushId`."""
    push_id = msg.get("id")
    PushId.parse(push_id)
    assert isinstance(push_id, str)
    return Ack(id=push_id)


def parse_result(msg: Mapping[str, Any]) -> Result:
    """A ``result`` as Kamailio reads it: its ``id`` must be a :class:`PushId`."""
    verdict = msg.get("verdict")
    if not isinstance(verdict, str) or verdict not in _FINAL:  # [..] is unhashable
        allowed = sorted(v.value for v in FINAL_VERDICTS)
        raise WireError("verdict", f"expected one of {allowed}, got {_short(verdict)}")
    push_id = msg.get("id")
    PushId.parse(push_id)  # one Kamailio wrote; kept as text (an old peer's 0:0:<n> too)
    assert isinstance(push_id, str)
    status = msg.get("status")
    if status is not None and (type(status) is not int or not 100 <= status <= 599):
        raise WireError("status", f"expected an HTTP status or null, got {_short(status)}")
    reason = msg.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise WireError("reason", f"expected a string or null, got {_short(reason)}")
    ms = msg.get("ms", 0.0)
    if type(ms) not in (int, float) or not 0 <= ms < 1e12:  # also NaN, inf, 10**400
        raise WireError("ms", f"expected a number, got {_short(ms)}")
    return Result(
        id=push_id,
        verdict=Verdict(verdict),
        status=status,
        reason=reason,
        aor=_str(msg, "aor"),
        ruid=_str(msg, "ruid"),
        attempts=_int(msg, "attempts", 0, 2**31, default=0),
        ms=float(ms),
    )


_KINDS = frozenset(k.value for k in PushKind)
_FINAL = frozenset(v.value for v in FINAL_VERDICTS)


def _str(msg: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    """A string field; absent or null reads as "" unless ``required``."""
    value = msg.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise WireError(name, f"must be a string (got {_short(value)})")
    return value


def _int(msg: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    value = msg.get(name, default)
    if type(value) is not int or not low <= value < high:
        raise WireError(name, f"expected a whole number, got {_short(value)}")
    return value


def _data(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WireError("data", "must be an object")
    out: dict[str, str] = {}
    for k, v in value.items():
        # FCM rejects non-string data values; catching it here names the culprit.
        if not isinstance(k, str) or not isinstance(v, str):
            name = k if isinstance(k, str) else _short(k)
            raise WireError(f"data.{name[:40]}", "values must be strings")
        out[k] = v
    return out


def _short(value: object) -> str:
    """A value for an error message: repr, at most 80 characters (the log line's share)."""
    if isinstance(value, int) and abs(value) >= 10**20:
        return "a huge number"  # repr() of one over 4300 digits raises ValueError
    try:
        text = repr(value)
    except RecursionError:
        return "a deeply nested value"
    return text if len(text) <= 80 else text[:77] + "..."
